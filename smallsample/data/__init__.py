"""Data, read from the files as their publishers ship them, into class-indexed arrays
(``[num_classes, per_class, ...]``) that episodes are sampled from on the device.

- :mod:`~smallsample.data.omniglot` and :mod:`~smallsample.data.lake`: Omniglot's zips, its
  standard splits, Lake's one-shot runs;
- :mod:`~smallsample.data.benchmarks`: mini-ImageNet, tieredImageNet, CIFAR-FS, FC100 and
  CUB-200-2011 from the user's files; :mod:`~smallsample.data.images`: a folder of class folders;
- :mod:`~smallsample.data.tfds`: a prepared TensorFlow Datasets set (the ``[tfds]`` extra);
- :mod:`~smallsample.data.text` and :mod:`~smallsample.data.tables`: CLINC150, Banking77, and a
  user's CSV / TSV / JSONL of texts with string labels;
- :mod:`~smallsample.data.cache` and :mod:`~smallsample.data.files`: decode-once caches, atomic
  writes, checked downloads, :class:`DataError`.

:mod:`~smallsample.data.tfds` is not imported here (it needs the optional tensorflow-datasets).
"""

from smallsample.data.benchmarks import LOADERS, load_benchmark
from smallsample.data.files import DataError, data_root
from smallsample.data.images import ImageSet, folder_split, load_folder
from smallsample.data.omniglot import ClassIndexed, load_set, load_split
from smallsample.data.tables import read_texts
from smallsample.data.text import (
    TextSet,
    class_indexed,
    episodic_split,
    load_banking77,
    load_clinc150,
    random_class_indexed,
)

__all__ = [
    "LOADERS",
    "ClassIndexed",
    "DataError",
    "ImageSet",
    "TextSet",
    "class_indexed",
    "data_root",
    "episodic_split",
    "folder_split",
    "load_banking77",
    "load_benchmark",
    "load_clinc150",
    "load_folder",
    "load_set",
    "load_split",
    "random_class_indexed",
    "read_texts",
]
