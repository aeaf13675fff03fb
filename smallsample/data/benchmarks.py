"""The standard few-shot image benchmarks, read from the files as users have them.

Each loader returns one part (``train`` / ``val`` / ``test``) as an
:class:`~smallsample.data.images.ImageSet` (uint8 ``[num_classes, per_class, H, W, C]``, class
names, per-class counts), decoded once and cached (see :mod:`smallsample.data.images` for
resizing, unequal classes and the cache). Folders default to ``<root>/<name>`` where ``root`` is
the data folder (:func:`~smallsample.data.files.data_root`), and split files to
``<root>/splits/<benchmark>/``.

- mini-ImageNet (Vinyals et al. 2016; the split of Ravi & Larochelle 2017): 64 / 16 / 20 classes of
  600 images, 84x84. Two layouts: Ravi & Larochelle's ``{train,val,test}.csv`` (``filename,label``)
  with the ``images/`` folder they name (the CSVs are looked up in the folder, then in
  ``splits/mini-imagenet/``), or one folder per class per part (``train/n01532829/*.jpg``).
- tieredImageNet (Ren et al. 2018): one folder per class per part
  (``tiered-imagenet/{train,val,test}/CLASS/*``), 351 / 97 / 160 classes of 732 to 1300 images;
  about 16 GB at 84x84, so the cached array is memory-mapped.
- CIFAR-FS (Bertinetto et al. 2019; 64 / 16 / 20 classes) and FC100 (Oreshkin et al. 2018; 12 / 4
  / 4 superclasses, 60 / 20 / 20 classes), 600 images of 32x32 per class (CIFAR-100's 500 training
  and 100 test images pooled), from CIFAR-100's binary release ``cifar-100-binary/`` (``train.bin``,
  ``test.bin``: records of one coarse label byte, one fine label byte and 3072 pixel bytes, the
  red, green and blue planes of 32x32 row-major; ``fine_label_names.txt``,
  ``coarse_label_names.txt``); class lists ``splits/{cifar-fs,fc100}/{part}.json``.
- CUB-200-2011 (Wah et al. 2011; the 100 / 50 / 50 class split of Hilliard et al. 2018 as in
  torchmeta): ``CUB_200_2011/images.txt`` (``id path``), ``image_class_labels.txt``
  (``id class_id``), ``classes.txt`` (``class_id name``) and ``images/``; 41 to 60 images a class,
  84x84 by default, whole images (not cropped to the bounding boxes); class list
  ``splits/cub/{part}.json``.

Never unpickle a downloaded file: unpickling runs whatever code the file names. The mini-ImageNet
caches that other libraries pass around (``mini-imagenet-cache-*.pkl``) and CIFAR-100's "python
version" are pickles; use the images with the CSVs (or class folders) and CIFAR-100's binary
version instead. Nothing here reads a pickle (arrays are read with ``allow_pickle=False``).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from PIL import Image

from smallsample.data.cache import files_key
from smallsample.data.files import DataError, data_root
from smallsample.data.images import (
    PARTS,
    ImageSet,
    build_image_set,
    list_folder,
    load_classes,
    read_class_list,
    to_array,
)
from smallsample.data.text import csv_rows, read_text

MINI_IMAGENET_CLASSES = {"train": 64, "val": 16, "test": 20}
MINI_IMAGENET_PER_CLASS = 600
TIERED_IMAGENET_CLASSES = {"train": 351, "val": 97, "test": 160}
CIFAR_FS_CLASSES = {"train": 64, "val": 16, "test": 20}
FC100_CLASSES = {"train": 60, "val": 20, "test": 20}
CUB_CLASSES = {"train": 100, "val": 50, "test": 50}
CIFAR_RECORD = 3074
CIFAR_SIZE = 32


def _is_file(path: Path) -> bool:
    """``path.is_file()`` for a name read from a list file: ``False`` where the system refuses
    the name (too long...)."""
    try:
        return path.is_file()
    except OSError:
        return False


def _check_part(part: str) -> None:
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")


def _folder(path, root, name: str) -> Path:
    return Path(path) if path is not None else data_root(root) / name


def _split_file(split_dir, root, benchmark: str, part: str, suffix: str) -> Path:
    folder = Path(split_dir) if split_dir is not None else data_root(root) / "splits" / benchmark
    return folder / f"{part}{suffix}"


# --- mini-ImageNet -------------------------------------------------------------------------------

def read_mini_imagenet_csv(path: str | os.PathLike) -> dict[str, list[str]]:
    """A Ravi & Larochelle split CSV (``filename,label``): synset -> file names, synsets sorted,
    files in row order.

    Raises:
      DataError: the file is missing, its header is not ``filename,label``, a row has not two
        fields, or a file name repeats; the message names the file and row.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} is missing (a mini-ImageNet split file filename,label)")
    classes: dict[str, list[str]] = {}
    seen = set()
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        rows = csv_rows(path, reader)
        header = next(rows, None)
        if header != ["filename", "label"]:
            raise DataError(f"{path}: header is {header!r:.80}, expected ['filename', 'label']")
        for row in rows:
            where = f"{path}: line {reader.line_num}"
            if len(row) != 2 or not row[0] or not row[1]:
                raise DataError(f"{where}: expected filename,label, got {row!r:.80}")
            if row[0] in seen:
                raise DataError(f"{where}: {row[0]} is listed twice")
            seen.add(row[0])
            classes.setdefault(row[1], []).append(row[0])
    if not classes:
        raise DataError(f"{path}: no rows")
    return {c: classes[c] for c in sorted(classes)}


def load_mini_imagenet(part: str, *, path: str | os.PathLike | None = None, root=None,
                       split_dir: str | os.PathLike | None = None, size: int = 84,
                       channels: int = 3, per_class: int | None = None, seed: int = 0,
                       **options) -> ImageSet:
    """One part of mini-ImageNet: 64 / 16 / 20 classes of 600 images.

    Args:
      part: ``train``, ``val`` or ``test``.
      path: the mini-ImageNet folder (default ``<root>/mini-imagenet``), holding either
        ``images/`` (with ``{part}.csv`` beside it, else in ``split_dir``, default
        ``<root>/splits/mini-imagenet``), or ``{part}/SYNSET/*`` class folders.
      options: ``use_cache``, ``mmap``, ``progress``, ``workers`` of
        :func:`~smallsample.data.images.load_classes`.

    Raises:
      DataError: neither layout is there, the split CSV is missing or malformed, an image it
        names is missing or does not decode; the message names the file.
    """
    _check_part(part)
    folder = _folder(path, root, "mini-imagenet")
    common = dict(size=size, channels=channels, per_class=per_class, seed=seed, **options)
    images = folder / "images"
    if images.is_dir():
        csv_path = folder / f"{part}.csv"
        if not csv_path.is_file():
            csv_path = _split_file(split_dir, root, "mini-imagenet", part, ".csv")
            if not csv_path.is_file():
                raise DataError(f"no split file for mini-ImageNet {part}: neither "
                                f"{folder / f'{part}.csv'} nor {csv_path} exists (Ravi & "
                                f"Larochelle's {part}.csv, columns filename,label)")
        classes = {}
        for label, names in read_mini_imagenet_csv(csv_path).items():
            files = [images / n for n in names]
            for n, f in zip(names, files, strict=True):
                if not _is_file(f):
                    raise DataError(f"{f} is missing (named in {csv_path}, class {label}, "
                                    f"file {n})")
            classes[label] = files
        return load_classes(classes, tag=f"mini-imagenet-{part}", base=folder, where=str(csv_path),
                            **common)
    if (folder / part).is_dir():
        return load_classes(list_folder(folder / part), tag=f"mini-imagenet-{part}", base=folder,
                            where=str(folder / part), **common)
    raise DataError(f"mini-ImageNet not found in {folder}: expected {folder}/images/ with "
                    f"{part}.csv (Ravi & Larochelle's layout) or {folder}/{part}/SYNSET/*.jpg "
                    f"class folders; pass path= or set SMALLSAMPLE_DATA")


# --- tieredImageNet ------------------------------------------------------------------------------

def load_tiered_imagenet(part: str, *, path: str | os.PathLike | None = None, root=None,
                         size: int = 84, channels: int = 3, per_class: int | None = None,
                         seed: int = 0, **options) -> ImageSet:
    """One part of tieredImageNet from class folders ``{path}/{part}/CLASS/*`` (default ``path``:
    ``<root>/tiered-imagenet``). Classes have 732 to 1300 images: ``per_class`` (default the
    smallest) are sampled by ``seed``. The cached array is memory-mapped when over 1 GiB."""
    _check_part(part)
    folder = _folder(path, root, "tiered-imagenet")
    if not (folder / part).is_dir():
        raise DataError(f"{folder / part} is missing: tieredImageNet is read from class folders "
                        f"{folder}/{part}/CLASS/*; pass path= or set SMALLSAMPLE_DATA")
    return load_classes(list_folder(folder / part), tag=f"tiered-imagenet-{part}", base=folder,
                        where=str(folder / part), size=size, channels=channels,
                        per_class=per_class, seed=seed, **options)


# --- CIFAR-100: CIFAR-FS and FC100 ---------------------------------------------------------------

def _read_names(path: Path, count: int) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path} is missing (it ships in CIFAR-100's binary release, "
                        f"cifar-100-binary.tar.gz)")
    names = [line.strip() for line in read_text(path).splitlines() if line.strip()]
    if len(names) != count:
        raise DataError(f"{path}: {len(names)} names, expected {count}")
    return names


def read_cifar100(path: str | os.PathLike) -> dict:
    """CIFAR-100's binary release (the folder ``cifar-100-binary``), training then test records.

    Returns:
      A dict: ``images`` uint8 ``[n, 32, 32, 3]`` (n = 60,000 for the full release), ``fine`` and
      ``coarse`` int64 ``[n]`` labels, ``fine_names`` (100) and ``coarse_names`` (20).

    Raises:
      DataError: a file is missing, a ``.bin`` is not a whole number of 3074-byte records, or a
        label is out of range (the message names the file and record).
    """
    path = Path(path)
    records = []
    for name in ("train.bin", "test.bin"):
        f = path / name
        if not f.is_file():
            raise DataError(f"{f} is missing: CIFAR-FS and FC100 read CIFAR-100's binary "
                            f"release (cifar-100-binary.tar.gz, not the pickled python version)")
        raw = np.fromfile(f, dtype=np.uint8)
        if raw.size == 0 or raw.size % CIFAR_RECORD:
            raise DataError(f"{f}: {raw.size} bytes is not a whole number of {CIFAR_RECORD}-byte "
                            f"records (coarse label, fine label, 3072 pixels)")
        raw = raw.reshape(-1, CIFAR_RECORD)
        for col, limit, what in ((0, 20, "coarse"), (1, 100, "fine")):
            bad = np.flatnonzero(raw[:, col] >= limit)
            if bad.size:
                raise DataError(f"{f}: record {bad[0]}: {what} label {raw[bad[0], col]} is not "
                                f"below {limit}")
        records.append(raw)
    raw = np.concatenate(records)
    images = raw[:, 2:].reshape(-1, 3, CIFAR_SIZE, CIFAR_SIZE).transpose(0, 2, 3, 1)
    return {"images": np.ascontiguousarray(images), "coarse": raw[:, 0].astype(np.int64),
            "fine": raw[:, 1].astype(np.int64),
            "fine_names": _read_names(path / "fine_label_names.txt", 100),
            "coarse_names": _read_names(path / "coarse_label_names.txt", 20)}


def _cifar_set(benchmark: str, part: str, classes: list[str], where: str, data: dict,
               folder: Path, *, size: int, channels: int, per_class, seed, **options) -> ImageSet:
    index = {n: i for i, n in enumerate(data["fine_names"])}
    by_class = {c: np.flatnonzero(data["fine"] == index[c]).tolist() for c in classes}
    bins = [folder / "train.bin", folder / "test.bin"]

    def decode(i: int) -> np.ndarray:
        image = data["images"][i]
        if (size, channels) == (CIFAR_SIZE, 3):
            return image
        return to_array(Image.fromarray(image), size=size, channels=channels)

    return build_image_set(f"{benchmark}-{part}", by_class, decode=decode, ids=str,
                           content_key=lambda flat: files_key(bins, base=folder,
                                                              options={"records": flat}),
                           shape=(size, size, channels), per_class=per_class, seed=seed,
                           where=where, **options)


def load_cifar_fs(part: str, *, path: str | os.PathLike | None = None, root=None,
                  split_dir: str | os.PathLike | None = None, size: int = 32, channels: int = 3,
                  per_class: int | None = None, seed: int = 0, **options) -> ImageSet:
    """One part of CIFAR-FS: 64 / 16 / 20 CIFAR-100 classes of 600 images, in the order of
    ``{split_dir}/{part}.json`` (``[superclass, class]`` pairs; default ``split_dir``:
    ``<root>/splits/cifar-fs``), from ``path`` (default ``<root>/cifar-100-binary``)."""
    _check_part(part)
    folder = _folder(path, root, "cifar-100-binary")
    split = _split_file(split_dir, root, "cifar-fs", part, ".json")
    classes = read_class_list(split)
    data = read_cifar100(folder)
    unknown = [c for c in classes if c not in data["fine_names"]]
    if unknown:
        raise DataError(f"{split}: not CIFAR-100 classes: {', '.join(unknown[:5])}")
    return _cifar_set("cifar-fs", part, classes, str(split), data, folder, size=size,
                      channels=channels, per_class=per_class, seed=seed, **options)


def load_fc100(part: str, *, path: str | os.PathLike | None = None, root=None,
               split_dir: str | os.PathLike | None = None, size: int = 32, channels: int = 3,
               per_class: int | None = None, seed: int = 0, **options) -> ImageSet:
    """One part of FC100: the fine classes of the superclasses in ``{split_dir}/{part}.json``
    (12 / 4 / 4 superclasses, 60 / 20 / 20 classes; default ``split_dir``:
    ``<root>/splits/fc100``), superclass by superclass, fine classes in CIFAR-100's label order."""
    _check_part(part)
    folder = _folder(path, root, "cifar-100-binary")
    split = _split_file(split_dir, root, "fc100", part, ".json")
    supers = read_class_list(split)
    data = read_cifar100(folder)
    unknown = [s for s in supers if s not in data["coarse_names"]]
    if unknown:
        raise DataError(f"{split}: not CIFAR-100 superclasses: {', '.join(unknown[:5])}")
    classes = []
    for s in supers:
        fine = np.unique(data["fine"][data["coarse"] == data["coarse_names"].index(s)])
        classes += [data["fine_names"][i] for i in fine]
    return _cifar_set("fc100", part, classes, str(split), data, folder, size=size,
                      channels=channels, per_class=per_class, seed=seed, **options)


# --- CUB-200-2011 --------------------------------------------------------------------------------

def _read_table(path: Path, what: str) -> dict[str, str]:
    if not path.is_file():
        raise DataError(f"{path} is missing (CUB-200-2011's {path.name}: {what})")
    out = {}
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=1)
        if len(fields) != 2:
            raise DataError(f"{path}: line {n}: expected '{what}', got {line!r:.80}")
        if fields[0] in out:
            raise DataError(f"{path}: line {n}: id {fields[0]} repeats")
        out[fields[0]] = fields[1].strip()
    return out


def read_cub(path: str | os.PathLike) -> dict[str, list[Path]]:
    """CUB-200-2011's own layout: class name (``001.Black_footed_Albatross``) -> image files, in
    ``images.txt`` order.

    Raises:
      DataError: a list file is missing or malformed, an image has no class or a class id is
        unknown, an image file is missing; the message names the file and line.
    """
    path = Path(path)
    classes = _read_table(path / "classes.txt", "class_id class_name")
    images = _read_table(path / "images.txt", "image_id image_path")
    labels = _read_table(path / "image_class_labels.txt", "image_id class_id")
    out: dict[str, list[Path]] = {name: [] for name in classes.values()}
    for image_id, rel in images.items():
        if image_id not in labels:
            raise DataError(f"{path / 'image_class_labels.txt'}: no class for image {image_id} "
                            f"({rel})")
        if labels[image_id] not in classes:
            raise DataError(f"{path / 'image_class_labels.txt'}: image {image_id} has class id "
                            f"{labels[image_id]}, not in {path / 'classes.txt'}")
        f = path / "images" / rel
        if not _is_file(f):
            raise DataError(f"{f} is missing (listed in {path / 'images.txt'})")
        out[classes[labels[image_id]]].append(f)
    return out


def load_cub(part: str, *, path: str | os.PathLike | None = None, root=None,
             split_dir: str | os.PathLike | None = None, size: int = 84, channels: int = 3,
             per_class: int | None = None, seed: int = 0, **options) -> ImageSet:
    """One part of CUB-200-2011: 100 / 50 / 50 classes in the order of ``{split_dir}/{part}.json``
    (default ``<root>/splits/cub``), from ``path`` (default ``<root>/CUB_200_2011``). Classes have
    41 to 60 images: ``per_class`` (default the part's smallest) are sampled by ``seed``."""
    _check_part(part)
    folder = _folder(path, root, "CUB_200_2011")
    split = _split_file(split_dir, root, "cub", part, ".json")
    names = read_class_list(split)
    found = read_cub(folder)
    unknown = [c for c in names if c not in found]
    if unknown:
        raise DataError(f"{split}: classes not in {folder / 'classes.txt'}: "
                        f"{', '.join(unknown[:5])}")
    return load_classes({c: found[c] for c in names}, tag=f"cub-{part}", base=folder,
                        where=str(split), size=size, channels=channels, per_class=per_class,
                        seed=seed, **options)


LOADERS = {"mini-imagenet": load_mini_imagenet, "tiered-imagenet": load_tiered_imagenet,
           "cifar-fs": load_cifar_fs, "fc100": load_fc100, "cub": load_cub}
"""Loader of each benchmark: ``LOADERS[name](part, *, root=..., size=..., ...)``."""


def load_benchmark(name: str, part: str, **kwargs) -> ImageSet:
    """``LOADERS[name](part, **kwargs)`` with a clear error for an unknown name."""
    if name not in LOADERS:
        raise ValueError(f"unknown image benchmark {name!r}; choose from {sorted(LOADERS)}")
    return LOADERS[name](part, **kwargs)

