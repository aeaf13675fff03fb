"""Decode once, keep the arrays: the on-disk cache of decoded data sets.

Entries live in :func:`~smallsample.data.files.cache_dir` (``$SMALLSAMPLE_CACHE``), named by the
data set and a content key, in two forms:

- :func:`load_npz` / :func:`save_npz`: one ``.npz`` read whole, for sets that fit in memory
  (Omniglot's 32,460 drawings).
- :func:`cached_array`: a folder holding ``images.npy`` and ``meta.json``, for image sets that may
  not fit in memory (tieredImageNet at 84x84 is about 16 GB). The decoder writes into a memory map
  of the ``.npy`` file, so the set is never whole in memory while it is built; the folder is built
  under a temporary name and renamed into place when complete, so a reader (or a second process
  building the same entry) sees all of it or nothing. Loading memory-maps ``images.npy``
  (``np.load(mmap_mode='r')``) when it is larger than ``mmap_bytes``, else reads it.

Keys (:func:`files_key`): a sha256 over each source file's path, size and modification time plus the
options that shape the array. Hashing the bytes would notice an edit that keeps size and time, but
reads every byte of a data set that may be tens of gigabytes on every load, where listing takes
seconds; a copy that does not keep modification times is decoded once more.

Nothing here unpickles: arrays are read with ``allow_pickle=False`` and names are kept as JSON.
An unreadable entry is rebuilt, never trusted; a read-only cache folder only costs speed.
``meta.json`` carries a sha256 of its own record and an array's header is checked against it
(memory-mapped, before any data is read), so a damaged record or header is rebuilt too; the
pixels themselves are not hashed (that would read every byte of a set of tens of gigabytes).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from smallsample.data.files import atomic_write_bytes, cache_dir

MMAP_BYTES = 1 << 30
"""Entries larger than this (1 GiB) are memory-mapped by default instead of read whole."""


def files_key(files: Iterable[str | os.PathLike], *, base: str | os.PathLike | None = None,
              options: Mapping | None = None) -> str:
    """sha256 (hex) over the files' paths (relative to ``base``), sizes and mtimes, and ``options``.

    The order of ``files`` matters (it is the order of the array built from them).
    """
    h = hashlib.sha256()
    h.update(json.dumps(dict(options or {}), sort_keys=True, default=str).encode())
    for f in files:
        path = Path(f)
        st = path.stat()
        name = str(path.relative_to(base)) if base is not None else str(path)
        h.update(f"\n{name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()


def load_npz(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a cached ``.npz``, or ``None`` if it is missing or unreadable."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except Exception:  # an unreadable cache is rebuilt, never trusted
        return None


def save_npz(path: Path, **arrays: np.ndarray) -> bool:
    """Writes ``arrays`` to ``path`` atomically; ``False`` if the cache folder is not writable."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError:
        return False
    return True


def _record_sha256(shape: list, dtype: str, meta) -> str:
    return hashlib.sha256(json.dumps([shape, dtype, meta], sort_keys=True).encode()).hexdigest()


def _read_entry(folder: Path, mmap: bool | None, mmap_bytes: int):
    with open(folder / "meta.json", encoding="utf-8") as f:
        record = json.load(f)
    if not isinstance(record, dict) or record.get("sha256") != _record_sha256(
            record.get("shape"), record.get("dtype"), record.get("meta")):
        raise ValueError(f"{folder / 'meta.json'}: damaged (its sha256 does not match)")
    images = folder / "images.npy"
    big = images.stat().st_size > mmap_bytes
    # memory-mapped first: the header is checked against the record (and the file's length
    # against the header) before any data is read
    array = np.load(images, mmap_mode="r", allow_pickle=False)
    if list(array.shape) != record["shape"] or str(array.dtype) != record["dtype"]:
        raise ValueError(f"{images}: shape {array.shape} {array.dtype} is not the one recorded")
    if array.offset + array.nbytes != images.stat().st_size:  # bytes inserted or deleted
        raise ValueError(f"{images}: {images.stat().st_size} bytes, not header + data")
    if not (big if mmap is None else mmap):
        array = np.array(array)
    return array, record["meta"]


def cached_array(name: str, shape: tuple[int, ...], dtype, fill: Callable[[np.ndarray], dict],
                 *, use_cache: bool = True, mmap: bool | None = None,
                 mmap_bytes: int | None = None) -> tuple[np.ndarray, dict]:
    """The array cached as ``name``, built by ``fill`` the first time.

    Args:
      name: the entry's folder name in the cache (data set, part, options and content key).
      shape, dtype: of the array.
      fill: ``fill(out)`` writes every element of ``out`` (a writable array of ``shape``, a memory
        map of the entry's file when caching) and returns JSON-able metadata (class names...).
      use_cache: ``False`` builds in memory and writes nothing.
      mmap: ``True`` memory-maps the cached array (read-only), ``False`` reads it whole, ``None``
        memory-maps it when it is larger than ``mmap_bytes`` (default :data:`MMAP_BYTES`).

    Returns:
      ``(array, metadata)``.
    """
    if not use_cache:
        out = np.empty(shape, dtype)
        return out, fill(out)
    mmap_bytes = MMAP_BYTES if mmap_bytes is None else mmap_bytes
    root = cache_dir()
    folder = root / name
    if folder.is_dir():
        try:
            return _read_entry(folder, mmap, mmap_bytes)
        except Exception:  # unreadable: rebuilt below
            shutil.rmtree(folder, ignore_errors=True)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.", suffix=".part"))
    except OSError:  # a read-only cache folder: build in memory
        out = np.empty(shape, dtype)
        return out, fill(out)
    try:
        out = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=dtype, shape=shape)
        meta = fill(out)
        out.flush()
        del out
        record = {"shape": list(shape), "dtype": str(np.dtype(dtype)), "meta": meta}
        record["sha256"] = _record_sha256(record["shape"], record["dtype"], meta)
        with open(tmp / "meta.json", "w", encoding="utf-8") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        with open(tmp / "images.npy", "rb") as f:
            os.fsync(f.fileno())
        try:
            os.replace(tmp, folder)
        except OSError:  # another process put the same entry in place first: use theirs
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _read_entry(folder, mmap, mmap_bytes)
