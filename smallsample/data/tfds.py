"""TensorFlow Datasets (TFDS) image-classification sets as class-indexed arrays.

Reads a data set that TFDS has already *prepared* on disk in the ArrayRecord format, through
``builder.as_data_source`` (what ``tfds.data_source`` calls: random access, no TensorFlow at read
time), into the layout the rest of the library uses: a :class:`ClassIndexed` set, uint8
``[num_classes, per_class, H, W, C]`` plus the class names of the label's ``ClassLabel`` feature.

Nothing here downloads. A data set that is not prepared raises :class:`DataError` with the command
that prepares it once (that step needs TensorFlow: ``pip install 'smallsample[tfds-prepare]'``);
community data sets (``huggingface:...``, ``kaggle:...``), which TFDS resolves over the network,
are refused by name: prepare them once and pass the builder folder instead.

Decisions:

- Images are decoded here with Pillow from the bytes TFDS stored (TFDS's own decoding is skipped),
  then converted to ``channels`` (Pillow's ``L`` / ``RGB`` / ``RGBA``) and resized with Pillow's
  antialiasing LANCZOS filter, as the Omniglot loader does. Only uint8 images are accepted.
- Classes of unequal size: every class keeps ``per_class`` examples (default: the size of the
  smallest class present in the split), drawn without replacement with
  ``numpy.random.default_rng([seed, label])`` and kept in record order, so a class's draw does not
  depend on the other classes. A class with fewer than ``per_class`` examples is an error naming
  it. Labels with no example in the split (TFDS's ``ClassLabel`` often lists the classes of every
  split) are left out, so ``names`` holds only the classes present.
- Cache: decoded arrays go to :func:`smallsample.data.files.cache_dir`, keyed by the data set's
  full name (name, config, version), the split, the reading options, and the data folder's files
  (relative path, size and modification time, plus the sha256 of ``dataset_info.json``). Hashing
  the record files themselves would cost minutes at every load for multi-gigabyte sets; a data set
  prepared again gets new files, so it is decoded again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from smallsample.data.files import DataError, atomic_write_bytes, cache_dir
from smallsample.data.omniglot import ClassIndexed

CACHE_VERSION = 1
READ_CHUNK = 1024
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
PREPARE_EXTRA = "pip install 'smallsample[tfds-prepare]'"
INSTALL_HINT = ("tensorflow-datasets is not installed: pip install 'smallsample[tfds]' (reading) "
                f"or {PREPARE_EXTRA} (preparing, with TensorFlow)")


def _tfds():
    try:
        import tensorflow_datasets as tfds
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


def _builder(tfds, name: str | os.PathLike, data_dir):
    """The TFDS builder of a catalogue name (with ``data_dir``) or of a prepared builder folder."""
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
        builder = tfds.builder(name, data_dir=str(root), try_gcs=False)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DataError(f"{name!r} is neither in TFDS's catalogue nor prepared under {root} "
                        f"(no {root / dataset.name}/.../dataset_info.json); prepare it there with "
                        f"its builder's download_and_prepare(file_format='array_record'), or "
                        f"pass its builder folder") from e
    except Exception as e:  # bad config / version strings
        raise DataError(f"{name!r}: TFDS cannot make a builder for it under {root} ({e})") from e
    if not builder.is_prepared():
        raise DataError(f"TFDS data set {name!r} is not prepared under {root} (no "
                        f"{builder.data_dir}/dataset_info.json). Prepare it once (this needs "
                        f"the network and TensorFlow):\n  {prepare_command(name, root)}")
    return builder


def _check_features(builder, image_key: str, label_key: str):
    tfds = _tfds()
    features = builder.info.features
    keys = list(features.keys()) if hasattr(features, "keys") else []
    where = f"TFDS data set {builder.info.full_name} ({builder.data_dir})"
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


def _fingerprint(builder, split: str, options: dict[str, Any]) -> str:
    root = Path(builder.data_dir)
    files = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            files.append([str(p.relative_to(root)), st.st_size, st.st_mtime_ns])
    info = hashlib.sha256((root / "dataset_info.json").read_bytes()).hexdigest()
    key = {"cache": CACHE_VERSION, "name": builder.info.full_name, "split": split,
           "options": options, "files": files, "info": info}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _cache_path(builder, split: str, digest: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{builder.info.full_name}-{split}").strip("_")
    return cache_dir() / f"tfds-{slug}-v{CACHE_VERSION}-{digest[:16]}.npz"


def _read_labels(source, label_key: str) -> np.ndarray:
    labels = np.empty(len(source), np.int64)
    for start in range(0, len(source), READ_CHUNK):
        stop = min(start + READ_CHUNK, len(source))
        for i, record in enumerate(source.__getitems__(list(range(start, stop)))):
            labels[start + i] = int(record[label_key])
    return labels


def _decode(data: bytes, where: str, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except Exception as e:  # PIL raises several types for bad images
        raise DataError(f"{where}: not a readable image ({e})") from e
    if im.mode not in ("1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "YCbCr"):
        raise DataError(f"{where}: image mode {im.mode} is not 8-bit; only uint8 images are read")
    im = im.convert(_MODES[channels])
    if size is not None and im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.LANCZOS)
    out = np.asarray(im, dtype=np.uint8)
    return out[..., None] if out.ndim == 2 else out


def _select(labels: np.ndarray, names: list[str], per_class: int | None, seed: int, where: str):
    present = np.unique(labels)
    if present.size == 0:
        raise DataError(f"{where}: the split holds no examples")
    counts = {int(c): int(np.sum(labels == c)) for c in present}
    if per_class is None:
        per_class = min(counts.values())
    short = [f"{names[c]!r} ({n})" for c, n in counts.items() if n < per_class]
    if short:
        raise DataError(f"{where}: per_class={per_class} but class(es) {', '.join(short[:10])} "
                        f"have fewer examples{' ...' if len(short) > 10 else ''}; lower per_class "
                        f"(default: the smallest class, {min(counts.values())})")
    rows = []
    for c in present:
        index = np.flatnonzero(labels == c)
        if index.size > per_class:
            pick = np.random.default_rng([seed, int(c)]).choice(index.size, per_class,
                                                                  replace=False)
            index = index[np.sort(pick)]
        rows.append(index)
    return [int(c) for c in present], np.stack(rows)


def load_tfds(name: str | os.PathLike, *, split: str = "train",
              data_dir: str | os.PathLike | None = None, image_key: str = "image",
              label_key: str = "label", size: int | tuple[int, int] | None = None,
              channels: int | None = None, per_class: int | None = None, seed: int = 0,
              use_cache: bool = True) -> ClassIndexed:
    """A prepared TFDS image-classification split as a :class:`ClassIndexed` set.

    Args:
      name: a TFDS catalogue name (``'omniglot'``, ``'cifar100:3.0.2'``, ``'name/config'``) looked
        up under ``data_dir``, or the path of a prepared builder folder
        (``DATA_DIR/NAME[/CONFIG]/VERSION``, the one holding ``dataset_info.json``).
      split: a TFDS split string (``'train'``, ``'test[:50%]'``, ``'train+test'``).
      data_dir: TFDS data folder; ``None`` = ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``.
      image_key: the ``Image`` feature to read.
      label_key: the ``ClassLabel`` feature that gives the class and its name.
      size: output ``H, W`` (an int for square); ``None`` keeps the stored size, which must then
        be the same for every image.
      channels: 1, 3 or 4 (Pillow ``L``, ``RGB``, ``RGBA``); ``None`` = the feature's declared
        channels, or 3 when it declares none.
      per_class: examples kept per class; ``None`` = the smallest class's count.
      seed: seeds the draw within classes larger than ``per_class``.
      use_cache: read / write the decoded arrays in the array cache.

    Returns:
      ``ClassIndexed(images, names)``: images uint8 ``[num_classes, per_class, H, W, C]``, classes
      in label order, names from the ``ClassLabel`` feature (its index as text when it has none).

    Raises:
      DataError: not prepared (the message gives the command that prepares it), not in
        ArrayRecord format, features missing or of the wrong kind, images of unequal size with
        ``size=None``, or a class smaller than ``per_class``.
    """
    if isinstance(size, int):
        size = (size, size)
    if size is not None:
        size = tuple(size)
        if len(size) != 2 or not all(isinstance(s, int) and s >= 1 for s in size):
            raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    if channels is not None and channels not in _MODES:
        raise ValueError(f"channels must be 1, 3 or 4, got {channels!r}")
    if per_class is not None and (not isinstance(per_class, int) or per_class < 1):
        raise ValueError(f"per_class must be a positive int or None, got {per_class!r}")
    tfds = _tfds()
    builder = _builder(tfds, name, data_dir)
    image_feature, label_feature = _check_features(builder, image_key, label_key)
    if channels is None:
        declared = image_feature.shape[-1] if image_feature.shape else None
        channels = declared if declared in _MODES else 3
    where = f"TFDS {builder.info.full_name} split {split!r} ({builder.data_dir})"
    options = {"image_key": image_key, "label_key": label_key, "size": size,
               "channels": channels, "per_class": per_class, "seed": seed}
    cached = None
    if use_cache:
        cached = _cache_path(builder, split, _fingerprint(builder, split, options))
        if cached.exists():
            try:
                with np.load(cached, allow_pickle=False) as f:
                    return ClassIndexed(f["images"], [str(n) for n in f["names"]])
            except Exception:  # an unreadable cache is rebuilt, never trusted
                pass
    try:
        source = builder.as_data_source(split=split,
                                        decoders={image_key: tfds.decode.SkipDecoding()})
    except NotImplementedError as e:
        raise DataError(f"{where}: prepared as {builder.info.file_format}, not array_record, so "
                        f"it has no random access; prepare it again with "
                        f"download_and_prepare(file_format='array_record') in another data_dir "
                        f"({e})") from e
    except (ValueError, KeyError, AssertionError) as e:
        raise DataError(f"{where}: cannot read this split ({e}); its splits are "
                        f"{sorted(builder.info.splits)}") from e
    names_all = list(label_feature.names)
    labels = _read_labels(source, label_key)
    classes, rows = _select(labels, names_all, per_class, seed, where)
    images = None
    flat = rows.reshape(-1)
    for start in range(0, flat.size, READ_CHUNK):
        chunk = flat[start:start + READ_CHUNK]
        for offset, (index, record) in enumerate(
                zip(chunk, source.__getitems__([int(i) for i in chunk]), strict=True)):
            image = _decode(record[image_key], f"{where} record {index}", channels, size)
            if images is None:
                images = np.empty((flat.size,) + image.shape, np.uint8)
            elif image.shape != images.shape[1:]:
                raise DataError(f"{where} record {index}: image is {image.shape[1]}x"
                                f"{image.shape[0]}, the first one {images.shape[2]}x"
                                f"{images.shape[1]}; pass size= to resize them to one size")
            images[start + offset] = image
    result = ClassIndexed(images.reshape(rows.shape + images.shape[1:]),
                          [names_all[c] for c in classes])
    if cached is not None:
        buf = io.BytesIO()
        np.savez(buf, images=result.images, names=np.asarray(result.names))
        try:
            atomic_write_bytes(cached, buf.getvalue())
        except OSError:
            pass  # a read-only cache folder only costs speed
    return result
