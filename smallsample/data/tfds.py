"""TensorFlow Datasets (TFDS) image-classification sets as class-indexed arrays.

Reads a data set that TFDS has already *prepared* on disk in the ArrayRecord format, through
``builder.as_data_source`` (what ``tfds.data_source`` calls: random access, no TensorFlow at read
time), into the :class:`~smallsample.data.images.ImageSet` every image set of the library is:
uint8 ``[num_classes, per_class, H, W, C]``, the class names of the label's ``ClassLabel``
feature, and each class's count.

Nothing here downloads. A data set that is not prepared raises :class:`DataError` with the command
that prepares it once (a step that needs TensorFlow: ``pip install 'smallsample[tfds-prepare]'``).
Community data sets (``huggingface:...``, ``kaggle:...``), which TFDS resolves over the network,
are refused by name: prepare one once and pass its builder folder instead.

Decisions, shared with :mod:`smallsample.data.images` (whose :func:`build_image_set` does the
decoding, sampling and caching):

- Images are decoded with Pillow from the bytes TFDS stored (TFDS's own decoding is skipped),
  converted to ``channels`` and resized with Pillow's antialiasing LANCZOS filter
  (:func:`~smallsample.data.images.to_array`); JPEGs are decoded at a reduced scale first unless
  ``draft=False``. Only uint8 images are read.
- Classes of unequal size: every class keeps ``per_class`` examples (default: the smallest class
  of the split), sampled within the class by ``seed`` (records ordered by
  ``sha256(f"{seed}:{record}")``); ``counts`` keeps each class's size. Labels with no example in
  the split (a ``ClassLabel`` often lists the classes of every split) are left out.
- Cache: the labels of a split and the decoded arrays are cached
  (:mod:`smallsample.data.cache`) under a key over the builder folder's files (relative path, size
  and modification time), the data set's full name (name, config, version), the split and the
  options; a data set prepared again has new files and is decoded again.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from smallsample.data.cache import cached_array, files_key
from smallsample.data.files import DataError
from smallsample.data.images import ImageSet, _check_channels, _hw, build_image_set, to_array

READ_CHUNK = 1024
PREPARE_EXTRA = "pip install 'smallsample[tfds-prepare]'"
INSTALL_HINT = ("tensorflow-datasets is not installed: pip install 'smallsample[tfds]' (reading) "
                f"or {PREPARE_EXTRA} (preparing, with TensorFlow)")


def _tfds():
    try:
        import tensorflow_datasets as tfds  # noqa: PLC0415 (an optional extra)
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return tfds


def default_data_dir() -> Path:
    """TFDS's own default data folder: ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``."""
    return Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()


def prepare_command(name: str, data_dir: str | os.PathLike) -> str:
    """The shell command that prepares the catalogue data set ``name`` under ``data_dir``."""
    code = (f"import tensorflow_datasets as tfds; "
            f"tfds.builder({name!r}, data_dir={str(data_dir)!r})"
            f".download_and_prepare(file_format='array_record')")
    return f"{PREPARE_EXTRA} && python -c \"{code}\""


def builder(name: str | os.PathLike, data_dir: str | os.PathLike | None = None):
    """The prepared TFDS builder of a catalogue name (under ``data_dir``) or of a builder folder.

    Raises:
      DataError: not prepared (with the command that prepares it), not found, or a community
        data set (resolved over the network).
    """
    tfds = _tfds()
    path = Path(name).expanduser()
    if isinstance(name, os.PathLike) or str(name).startswith(("/", ".", "~")) or path.is_dir():
        if not (path / "dataset_info.json").is_file():
            raise DataError(f"{path} is not a prepared TFDS builder folder (no dataset_info.json); "
                            f"pass the folder DATA_DIR/NAME[/CONFIG]/VERSION that holds it, or a "
                            f"data set name with data_dir=")
        try:
            return tfds.builder_from_directory(str(path))
        except Exception as e:  # TFDS raises several types for unreadable metadata
            raise DataError(f"{path}: TFDS cannot read this builder folder ({e})") from e
    name = str(name)
    dataset, _ = tfds.core.naming.parse_builder_name_kwargs(name)
    if dataset.namespace:
        raise DataError(f"{name!r}: community data sets ({dataset.namespace}:...) are resolved "
                        f"over the network; prepare it once in array_record format and pass its "
                        f"builder folder DATA_DIR/NAME/VERSION instead")
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    try:
        found = tfds.builder(name, data_dir=str(root), try_gcs=False)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DataError(f"{name!r} is neither in TFDS's catalogue nor prepared under {root} "
                        f"(no {root / dataset.name}/.../dataset_info.json); prepare it there with "
                        f"its builder's download_and_prepare(file_format='array_record'), or "
                        f"pass its builder folder") from e
    except Exception as e:  # bad config / version strings
        raise DataError(f"{name!r}: TFDS cannot make a builder for it under {root} ({e})") from e
    if not found.is_prepared():
        raise DataError(f"TFDS data set {name!r} is not prepared under {root} (no "
                        f"{found.data_dir}/dataset_info.json). Prepare it once (this needs "
                        f"the network and TensorFlow):\n  {prepare_command(name, root)}")
    return found


def _features(found, image_key: str, label_key: str, where: str):
    tfds = _tfds()
    features = found.info.features
    keys = list(features.keys()) if hasattr(features, "keys") else []
    if image_key not in keys or not isinstance(features[image_key], tfds.features.Image):
        raise DataError(f"{where}: no image feature {image_key!r}; its features are {keys} "
                        f"(pass image_key=)")
    if label_key not in keys or not isinstance(features[label_key], tfds.features.ClassLabel):
        raise DataError(f"{where}: no ClassLabel feature {label_key!r}; its features are {keys} "
                        f"(pass label_key=)")
    image = features[image_key]
    if np.dtype(image.np_dtype) != np.uint8:
        raise DataError(f"{where}: image feature {image_key!r} has dtype {image.np_dtype}; only "
                        f"uint8 images are read")
    return image, features[label_key]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def _records(source, indices: list[int], where: str) -> list:
    """``source``'s records at ``indices``; a DataError naming the set when its files cannot be
    read (array_record raises RuntimeError for a missing or damaged shard)."""
    try:
        return source.__getitems__(indices)
    except (RuntimeError, OSError) as e:
        raise DataError(f"{where}: cannot read its ArrayRecord files ({type(e).__name__}: {e}); "
                        f"prepare the data set again") from e


def _labels(source, label_key: str, tag: str, key: str, use_cache: bool,
            where: str) -> np.ndarray:
    """int64 ``[num_records]``: the label of every record of the split (a pass over all)."""

    def fill(out: np.ndarray) -> dict:
        for start in range(0, len(source), READ_CHUNK):
            stop = min(start + READ_CHUNK, len(source))
            for i, record in enumerate(_records(source, list(range(start, stop)), where)):
                out[start + i] = int(record[label_key])
        return {}

    labels, _ = cached_array(f"{tag}-labels-{key[:16]}", (len(source),), np.int64, fill,
                             use_cache=use_cache, mmap=False)
    return labels


def load_tfds(name: str | os.PathLike, *, split: str = "train",
              data_dir: str | os.PathLike | None = None, image_key: str = "image",
              label_key: str = "label", classes: Sequence[str] | None = None,
              size: int | Sequence[int] | None = None, channels: int | None = None,
              per_class: int | None = None, seed: int = 0, draft: bool = True,
              use_cache: bool = True, mmap: bool | None = None, progress: bool = True,
              workers: int | None = None) -> ImageSet:
    """A prepared TFDS image-classification split as an :class:`ImageSet`.

    Args:
      name: a TFDS catalogue name (``'omniglot'``, ``'cifar100:3.0.2'``, ``'name/config'``) looked
        up under ``data_dir``, or the path of a prepared builder folder
        (``DATA_DIR/NAME[/CONFIG]/VERSION``, the one holding ``dataset_info.json``).
      split: a TFDS split string (``'train'``, ``'test[:50%]'``, ``'train+test'``).
      data_dir: TFDS data folder; ``None`` = ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``.
      image_key: the ``Image`` feature to read.
      label_key: the ``ClassLabel`` feature that gives the class and its name.
      classes: the class names to load, in this order (default: every class with an example in
        the split, in label order).
      size: output ``H = W`` (int) or ``(H, W)``; ``None`` keeps the stored size, which must then
        be the same for every image.
      channels: 3 (RGB) or 1 (Pillow's ``L``); ``None`` = the feature's declared channels when
        1 or 3, else 3.
      per_class, seed: examples kept per class (default: the smallest class's count) and the
        seed that samples them within larger classes.
      draft: see :func:`smallsample.data.images.decode_image`.
      use_cache, mmap: see :func:`smallsample.data.cache.cached_array`.
      progress, workers: a tqdm bar while decoding; decoding threads.

    Returns:
      ``ImageSet(images, names, counts)``: images uint8 ``[num_classes, per_class, H, W, C]``,
      names from the ``ClassLabel`` feature (its index as text when it has no names).

    Raises:
      DataError: not prepared (the message gives the command that prepares it), not in the
        ArrayRecord format, a missing split or feature, an unknown or absent class, images of
        unequal size with ``size=None``, or a class smaller than ``per_class`` or than 2.
    """
    hw = None if size is None else _hw(size)
    if channels is not None:
        _check_channels(channels)
    tfds = _tfds()
    found = builder(name, data_dir)
    where = f"TFDS {found.info.full_name} split {split!r} ({found.data_dir})"
    image_feature, label_feature = _features(found, image_key, label_key, where)
    if channels is None:
        declared = image_feature.shape[-1] if image_feature.shape else None
        channels = declared if declared in (1, 3) else 3
    try:
        source = found.as_data_source(split=split,
                                      decoders={image_key: tfds.decode.SkipDecoding()})
    except NotImplementedError as e:
        raise DataError(f"{where}: prepared as {found.info.file_format}, not array_record, so "
                        f"it has no random access; prepare it again with "
                        f"download_and_prepare(file_format='array_record') in another data_dir "
                        f"({e})") from e
    except (ValueError, KeyError, AssertionError) as e:
        raise DataError(f"{where}: cannot read this split ({e}); its splits are "
                        f"{sorted(found.info.splits)}") from e
    if len(source) == 0:
        raise DataError(f"{where}: the split holds no examples")

    root = Path(found.data_dir)
    data_files = sorted(p for p in root.rglob("*") if p.is_file())
    tag = "tfds-" + _slug(f"{found.info.full_name}-{split}")
    read = {"name": found.info.full_name, "split": split, "image_key": image_key,
            "label_key": label_key}
    labels = _labels(source, label_key, tag, files_key(data_files, base=root, options=read),
                     use_cache, where)
    names_all = list(label_feature.names)
    present = {int(c): np.flatnonzero(labels == c).tolist() for c in np.unique(labels)}
    if classes is None:
        chosen = sorted(present)
    else:
        index = {n: i for i, n in enumerate(names_all)}
        unknown = [c for c in classes if c not in index]
        if unknown:
            raise DataError(f"{where}: no class(es) {', '.join(map(repr, unknown[:5]))} in the "
                            f"ClassLabel {label_key!r} ({len(names_all)} names)")
        chosen = [index[c] for c in classes]
        absent = [names_all[c] for c in chosen if c not in present]
        if absent:
            raise DataError(f"{where}: class(es) {', '.join(map(repr, absent[:5]))} have no "
                            f"example in this split")
    records = {names_all[c]: present[c] for c in chosen}

    if hw is None:  # the stored size: declared by the feature, else that of a first image
        shape = image_feature.shape or ()
        if len(shape) == 3 and all(isinstance(s, int) for s in shape[:2]):
            hw = (int(shape[0]), int(shape[1]))
        else:
            first = _records(source, [records[names_all[chosen[0]]][0]], where)[0]
            with Image.open(io.BytesIO(first[image_key])) as im:
                hw = (im.size[1], im.size[0])
    h, w = hw

    def decode(index: int) -> np.ndarray:
        data = _records(source, [index], where)[0][image_key]
        try:
            im = Image.open(io.BytesIO(data))
            if draft and size is not None and im.format == "JPEG":
                im.draft(im.mode, (2 * w, 2 * h))
            im.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"{where} record {index}: not a readable image "
                            f"({type(e).__name__}: {e})") from e
        if size is None and im.size != (w, h):
            raise DataError(f"{where} record {index}: image is {im.size[0]}x{im.size[1]}, "
                            f"others {w}x{h}; pass size= to resize them to one size")
        if im.mode in ("I", "I;16", "F"):
            raise DataError(f"{where} record {index}: image mode {im.mode} is not 8-bit")
        return to_array(im, size=(h, w), channels=channels)

    def content_key(flat: list[int]) -> str:
        kept = hashlib.sha256(np.asarray(flat, np.int64).tobytes()).hexdigest()
        return files_key(data_files, base=root,
                         options={**read, "draft": draft, "records": kept,
                                  "stored_size": size is None})

    return build_image_set(tag, records, decode=decode, ids=str, content_key=content_key,
                           shape=(h, w, channels), per_class=per_class, seed=seed,
                           where=where, use_cache=use_cache, mmap=mmap, progress=progress,
                           workers=workers)
