"""Image sets from folders of class folders, decoded once into class-indexed uint8 arrays.

The common core of every image data set but Omniglot: a mapping from class names to image files
(a user's folder, a benchmark's layout, see :mod:`smallsample.data.benchmarks`) becomes an
:class:`ImageSet`, ``images`` uint8 ``[num_classes, per_class, H, W, C]``, that
:func:`smallsample.episodes.sample_episode` samples from.

- Decoding: any format Pillow reads (files are picked by the extensions Pillow registers; others,
  and hidden files, are skipped). Grayscale, palette, CMYK and RGBA images are converted to the
  set's channel count (``channels=3``: RGB, an alpha channel is dropped; ``channels=1``: Pillow's
  ``L``). Each image is resized to ``size`` (an int for square, or ``(height, width)``) with
  Pillow's antialiasing LANCZOS filter, the aspect ratio not kept (as mini-ImageNet's 84x84);
  JPEGs are decoded at a reduced scale no smaller than twice the output size first
  (:func:`decode_image`, ``draft=True``), which halves the decoding time of photos.
  Images are decoded by a pool of threads (Pillow releases the GIL while decoding and resizing),
  with a tqdm progress bar.
- Classes of unequal size: the class-indexed array needs the same count in every class, so each
  class keeps ``per_class`` images (default: the size of the smallest class), sampled within the
  class by ``seed``: the images of a larger class are ordered by ``sha256(f"{seed}:{file}")`` and
  the first ``per_class`` kept, in that order (so the choice depends only on the seed and the
  names, and a smaller ``per_class`` keeps a subset of a larger one's images; the first ``k`` of a
  row are a random ``k`` as well, for ``sample_episode(per_class=k)``). A class with exactly
  ``per_class`` images keeps them all, in file-name order. ``ImageSet.counts`` keeps how many
  images each class had. Sampling rather than padding keeps episode sampling one static-shaped
  gather on the device; a smaller set of a class is not biased to any part of the file list.
- A class needs at least two images (one support, one query): one image, an empty class folder or
  an image that does not decode is a :class:`~smallsample.data.files.DataError` naming the file
  or folder.
- Caching: the decoded array is cached (:mod:`smallsample.data.cache`) under a key over the kept
  files' paths, sizes and modification times and the options (size, channels, per_class, seed),
  and memory-mapped when larger than 1 GiB (``mmap=None``), so a set larger than memory is neither
  built nor loaded whole.

Splits of a user's folder: by class, either dealt by a seed (:func:`split_classes`, fractions
0.64 / 0.16 / 0.20 by default, mini-ImageNet's 64 / 16 / 20) or read from list files
(:func:`read_class_list`: one class a line, or a JSON list); :func:`folder_split` does both.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from smallsample.data.cache import cached_array, files_key
from smallsample.data.files import DataError
from smallsample.data.text import class_split, read_json, read_text

CACHE_VERSION = 1
DEFAULT_FRACTIONS = (0.64, 0.16, 0.20)
PARTS = ("train", "val", "test")


class ImageSet(NamedTuple):
    """A class-indexed image set.

    Attributes:
      images: uint8 ``[num_classes, per_class, H, W, C]`` (a read-only ``np.memmap`` when
        memory-mapped).
      names: the ``num_classes`` class names, row ``c`` of ``images`` is class ``names[c]``.
      counts: int64 ``[num_classes]``: how many images each class had before ``per_class`` were
        kept.
    """

    images: np.ndarray
    names: list[str]
    counts: np.ndarray

    @property
    def num_classes(self) -> int:
        return self.images.shape[0]


def image_extensions() -> frozenset[str]:
    """File suffixes (lower case, with the dot) of the formats this Pillow can open."""
    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items()
                     if fmt in Image.OPEN)


def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in size):
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    return int(size[0]), int(size[1])


def _check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")


def to_array(im: Image.Image, *, size: int | Sequence[int], channels: int = 3) -> np.ndarray:
    """A Pillow image converted to ``channels`` and resized: uint8 ``[H, W, channels]``."""
    h, w = _hw(size)
    _check_channels(channels)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # Pillow's advice for palette images with transparency
    im = im.convert("L" if channels == 1 else "RGB")
    if im.size != (w, h):
        im = im.resize((w, h), Image.LANCZOS)
    return np.asarray(im, dtype=np.uint8).reshape(h, w, channels)


def decode_image(path: str | os.PathLike, *, size: int | Sequence[int], channels: int = 3,
                 draft: bool = True) -> np.ndarray:
    """One image file, decoded, converted and resized: uint8 ``[H, W, channels]``.

    Args:
      draft: let the JPEG decoder scale down by 1/2, 1/4 or 1/8 while decoding (Pillow's
        ``draft``), to no less than twice the output size, before the LANCZOS resize: a JPEG
        photo shrunk to a few-shot size decodes about twice as fast, with pixels that differ
        from those of a full decode by a fraction of a grey level on average. ``False`` decodes
        at full size. Other formats are always decoded at full size.

    Raises:
      DataError: the file does not decode (the message names it).
    """
    h, w = _hw(size)
    try:
        with Image.open(path) as im:
            if draft and im.format == "JPEG":
                im.draft(im.mode, (2 * w, 2 * h))
            im.load()
            return to_array(im, size=size, channels=channels)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e


def list_folder(path: str | os.PathLike) -> dict[str, list[Path]]:
    """The image files of each class folder of ``path``: class name -> files sorted by name
    (an empty list for a class folder without image files).

    Raises:
      DataError: ``path`` is not a folder or holds no class folders.
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path} is not a folder (expected a folder of class folders)")
    exts = image_extensions()
    classes = {}
    for sub in sorted(path.iterdir()):
        if sub.name.startswith(".") or not sub.is_dir():
            continue
        files = sorted(f for f in sub.iterdir()
                       if not f.name.startswith(".") and f.suffix.lower() in exts and f.is_file())
        classes[sub.name] = files
    if not classes:
        raise DataError(f"{path}: no class folders (expected {path}/CLASS_NAME/IMAGE files)")
    return classes


def _choose(name: str, sources: Sequence, ids: Sequence[str], per_class: int,
            seed: int) -> list:
    if len(sources) == per_class:
        return list(sources)
    order = sorted(range(len(sources)),
                   key=lambda i: hashlib.sha256(f"{seed}:{ids[i]}".encode()).hexdigest())
    return [sources[i] for i in order[:per_class]]


def _per_class(classes: Mapping[str, Sequence], per_class: int | None, where: str) -> int:
    for name, sources in classes.items():
        if len(sources) < 2:
            first = f": {sources[0]}" if sources else ""
            raise DataError(f"{where}: class {name!r} has {len(sources)} image(s){first}; a "
                            f"class needs at least 2 (a support and a query example)")
    smallest = min(len(s) for s in classes.values())
    if per_class is None:
        return smallest
    if not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise ValueError(f"per_class must be a positive int or None, got {per_class!r}")
    small = [f"{n} ({len(s)})" for n, s in classes.items() if len(s) < per_class]
    if small:
        raise DataError(f"{where}: per_class={per_class} is more than the images of class(es) "
                        f"{', '.join(small[:5])}{' ...' if len(small) > 5 else ''}")
    return int(per_class)


def _fill(out: np.ndarray, jobs: list[tuple[int, int, object]], decode: Callable,
          *, progress: bool, desc: str, workers: int | None) -> None:
    """Writes ``decode(source)`` to ``out[c, j]`` for each job ``(c, j, source)``."""
    workers = workers or min(8, os.cpu_count() or 1)
    bar = tqdm(total=len(jobs), desc=desc, unit="img", disable=not progress, leave=False)
    with bar, ThreadPoolExecutor(max_workers=workers) as pool:
        chunk = max(1, workers * 16)
        for start in range(0, len(jobs), chunk):  # bounded: never all decoded images at once
            part = jobs[start:start + chunk]
            for (c, j, _), image in zip(part, pool.map(lambda job: decode(job[2]), part),
                                        strict=True):
                out[c, j] = image
            bar.update(len(part))


def build_image_set(tag: str, classes: Mapping[str, Sequence], *,
                    decode: Callable[[object], np.ndarray], ids: Callable[[object], str],
                    content_key: Callable[[list], str], shape: tuple[int, int, int],
                    per_class: int | None = None, seed: int = 0, where: str = "",
                    use_cache: bool = True, mmap: bool | None = None, progress: bool = True,
                    workers: int | None = None) -> ImageSet:
    """The class-indexed set of ``classes`` (name -> sources), decoded once and cached.

    Args:
      tag: names the cache entry (data set and part).
      classes: class name -> its sources (files, record numbers...) in order.
      decode: source -> uint8 ``shape`` array (raising ``DataError`` naming the source).
      ids: source -> a stable string (its relative path), the within-class sampling key.
      content_key: the kept sources (flat, class by class) -> a hex key of their content.
      shape: ``(H, W, C)`` of one image.
      per_class, seed: images kept per class and the seed that samples them (module docstring).
      where: what to name in errors (the folder or split file).
    """
    if not classes:
        raise DataError(f"{where}: no classes")
    per = _per_class(classes, per_class, where)
    names = list(classes)
    kept = [_choose(n, classes[n], [ids(s) for s in classes[n]], per, seed) for n in names]
    counts = np.asarray([len(classes[n]) for n in names], np.int64)
    sampled = bool((counts > per).any())
    flat = [s for row in kept for s in row]
    key = content_key(flat)
    h, w, ch = shape
    options = hashlib.sha256(json.dumps([CACHE_VERSION, names, counts.tolist(), per,
                                         seed if sampled else None]).encode()).hexdigest()
    name = f"{tag}-{h}x{w}x{ch}-{per}-{hashlib.sha256((key + options).encode()).hexdigest()[:16]}"

    def fill(out: np.ndarray) -> dict:
        jobs = [(c, j, s) for c, row in enumerate(kept) for j, s in enumerate(row)]
        _fill(out, jobs, decode, progress=progress, desc=f"decoding {tag}", workers=workers)
        return {"names": names, "counts": counts.tolist()}

    images, meta = cached_array(name, (len(names), per, h, w, ch), np.uint8, fill,
                                use_cache=use_cache, mmap=mmap)
    if meta["names"] != names:
        raise DataError(f"cache entry {name}: class names differ from the source; delete it")
    return ImageSet(images, names, counts)


def load_classes(classes: Mapping[str, Sequence[str | os.PathLike]], *, tag: str,
                 size: int | Sequence[int] = 84, channels: int = 3,
                 per_class: int | None = None, seed: int = 0, base: str | os.PathLike | None = None,
                 where: str = "", draft: bool = True, use_cache: bool = True,
                 mmap: bool | None = None, progress: bool = True,
                 workers: int | None = None) -> ImageSet:
    """:func:`build_image_set` for image files: class name -> files (paths).

    ``base``: the folder the files are named relative to (in the cache key and sampling order);
    ``draft``: see :func:`decode_image`.
    """
    h, w = _hw(size)
    _check_channels(channels)
    classes = {n: [Path(f) for f in fs] for n, fs in classes.items()}

    def ids(f: Path) -> str:
        return str(f.relative_to(base)) if base is not None else str(f)

    def key(flat: list[Path]) -> str:
        return files_key(flat, base=base, options={"draft": draft})

    def decode(f: Path) -> np.ndarray:
        return decode_image(f, size=(h, w), channels=channels, draft=draft)

    return build_image_set(tag, classes, decode=decode, ids=ids, content_key=key,
                           shape=(h, w, channels), per_class=per_class, seed=seed, where=where,
                           use_cache=use_cache, mmap=mmap, progress=progress, workers=workers)


def load_folder(path: str | os.PathLike, *, classes: Sequence[str] | None = None,
                size: int | Sequence[int] = 84, channels: int = 3, per_class: int | None = None,
                seed: int = 0, draft: bool = True, use_cache: bool = True,
                mmap: bool | None = None, progress: bool = True,
                workers: int | None = None) -> ImageSet:
    """A folder of class folders (``path/CLASS/IMAGE``) as an :class:`ImageSet`.

    Args:
      path: the folder; each sub-folder is a class, named by the sub-folder.
      classes: the classes to load, in this order (default: all, sorted by name).
      size: output ``H = W`` (int) or ``(H, W)``.
      channels: 3 (RGB) or 1 (grayscale).
      per_class, seed: images kept per class (default: the smallest class's count) and the seed
        that samples them within larger classes (module docstring).
      draft: see :func:`decode_image`.
      use_cache, mmap: see :func:`smallsample.data.cache.cached_array`.
      progress: a tqdm bar while decoding; workers: decoding threads (default
        ``min(8, cpu_count)``).

    Raises:
      DataError: a missing or empty folder, a class in ``classes`` that is not a sub-folder, a
        class with one image, an image that does not decode; the message names it.
    """
    path = Path(path)
    found = list_folder(path)
    if classes is not None:
        missing = [c for c in classes if c not in found]
        if missing:
            raise DataError(f"{path}: no class folder(s) {', '.join(map(repr, missing[:5]))}"
                            f"{' ...' if len(missing) > 5 else ''} (of {len(missing)} asked)")
        found = {c: found[c] for c in classes}
    for name, files in found.items():
        if not files:
            raise DataError(f"{path / name}: class folder holds no image files")
    tag = "folder-" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
    return load_classes(found, tag=tag, size=size, channels=channels, per_class=per_class,
                        seed=seed, base=path, where=str(path), draft=draft,
                        use_cache=use_cache, mmap=mmap,
                        progress=progress, workers=workers)


def split_classes(names: Sequence[str], *, seed: int = 0,
                  fractions: Sequence[float] = DEFAULT_FRACTIONS) -> dict[str, list[str]]:
    """Deals ``names`` into ``train`` / ``val`` / ``test`` by ``seed`` (sha256 order, as
    :func:`smallsample.data.text.class_split`); ``train`` and ``val`` get ``floor(n * fraction)``
    classes, ``test`` the rest."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1):
        raise ValueError(f"fractions must be 3 numbers >= 0 that sum to 1, got {fractions!r}")
    n = len(names)
    sizes = [math.floor(n * fractions[0]), math.floor(n * fractions[1])]
    sizes.append(n - sum(sizes))
    return dict(zip(PARTS, class_split(names, seed=seed, sizes=sizes), strict=True))


def read_class_list(path: str | os.PathLike) -> list[str]:
    """Class names from a list file: ``.json`` (a list of names, or of ``[group, name]`` pairs:
    the name is the last item) or text (one class a line; blank lines and ``#`` comments skipped).

    Raises:
      DataError: the file is missing, is not such a list, or names a class twice.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} is missing (a split file listing the classes of a part)")
    if path.suffix.lower() == ".json":
        raw = read_json(path)
        if not isinstance(raw, list):
            raise DataError(f"{path}: expected a JSON list of class names")
        names = []
        for i, item in enumerate(raw):
            if isinstance(item, list) and item and all(isinstance(s, str) for s in item):
                item = item[-1]
            if not isinstance(item, str) or not item.strip():
                raise DataError(f"{path}: item {i} is {item!r:.60}, not a class name")
            names.append(item)
    else:
        names = [line.split("#", 1)[0].strip() for line in read_text(path).splitlines()]
        names = [n for n in names if n]
    if not names:
        raise DataError(f"{path}: lists no classes")
    dup = sorted(n for n, count in Counter(names).items() if count > 1)
    if dup:
        raise DataError(f"{path}: class(es) listed twice: {', '.join(dup[:5])}")
    return names


def folder_split(path: str | os.PathLike, part: str, *, seed: int = 0,
                 fractions: Sequence[float] = DEFAULT_FRACTIONS,
                 split_dir: str | os.PathLike | None = None, **options) -> ImageSet:
    """One part (``train`` / ``val`` / ``test``) of a folder of class folders, split by class.

    With ``split_dir``, the part's classes are read from ``split_dir/{part}.txt`` or
    ``{part}.json`` (:func:`read_class_list`); otherwise the folder's classes are dealt by
    ``seed`` with ``fractions`` (:func:`split_classes`). ``options`` go to :func:`load_folder`
    (``size``, ``channels``, ``per_class``; its ``seed`` is this ``seed``).
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    if split_dir is not None:
        split_dir = Path(split_dir)
        candidates = [split_dir / f"{part}.txt", split_dir / f"{part}.json"]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise DataError(f"no split file for part {part!r}: {candidates[0]} and "
                            f"{candidates[1]} are missing")
        classes = read_class_list(found[0])
    else:
        classes = split_classes(list(list_folder(path)), seed=seed, fractions=fractions)[part]
        if not classes:
            raise DataError(f"{path}: part {part!r} gets no classes with fractions {fractions}")
    return load_folder(path, classes=classes, seed=seed, **options)
