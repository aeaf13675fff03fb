"""Where data files live, and getting them: local first, checksummed download otherwise.

Lookup order for the data folder: an explicit ``root`` argument, else the ``SMALLSAMPLE_DATA``
environment variable, else ``$XDG_CACHE_HOME/smallsample/data`` (``~/.cache/smallsample/data``).
Decoded arrays are cached in ``SMALLSAMPLE_CACHE`` (default ``~/.cache/smallsample/arrays``), so a
read-only data folder works.

Downloads go to a temporary file in the target folder, are checked against the upstream sha256 and
renamed into place only when complete, so the data folder never holds a half-written file. Without a
network they fail at once (short connect timeout) with a message that says which file to put where.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from smallsample.paths import user_dir

DEFAULT_TIMEOUT = 20.0


class DataError(RuntimeError):
    """A data file is missing, corrupt or not what was expected; the message says which."""


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data folder: ``root``, else ``$SMALLSAMPLE_DATA``, else the user cache folder."""
    if root is not None:
        return Path(root).expanduser()
    return user_dir("SMALLSAMPLE_DATA", "data")


def cache_dir() -> Path:
    """Decoded-array cache folder: ``$SMALLSAMPLE_CACHE`` or ``~/.cache/smallsample/arrays``."""
    return user_dir("SMALLSAMPLE_CACHE", "arrays")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def download(url: str, dest: Path, *, sha256: str, size: int | None = None,
             timeout: float = DEFAULT_TIMEOUT) -> Path:
    """Downloads ``url`` to ``dest`` if the sha256 matches; nothing is left behind otherwise.

    Raises:
      DataError: the server cannot be reached, the transfer is short, or the checksum differs;
        the message names the URL and where to place the file by hand.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    hint = (f"Download {url} yourself (or copy the file from another machine) and place it at "
            f"{dest}, or point SMALLSAMPLE_DATA at a folder that holds it.")
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        h = hashlib.sha256()
        received = 0
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, \
                    os.fdopen(fd, "wb") as out:
                fd = None
                expected_len = response.headers.get("Content-Length")
                while block := response.read(1 << 20):
                    out.write(block)
                    h.update(block)
                    received += len(block)
                out.flush()
                os.fsync(out.fileno())
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise DataError(f"could not download {url}: {e}. {hint}") from e
        if expected_len is not None and received != int(expected_len):
            raise DataError(f"download of {url} was cut short: {received} of {expected_len} "
                            f"bytes. {hint}")
        if size is not None and received != size:
            raise DataError(f"download of {url} has {received} bytes, expected {size}. {hint}")
        digest = h.hexdigest()
        if digest != sha256:
            raise DataError(f"download of {url} has sha256 {digest}, expected {sha256}; the "
                            f"file was discarded. {hint}")
        os.replace(tmp, dest)
        return dest
    finally:
        if fd is not None:
            os.close(fd)
        if os.path.exists(tmp):
            os.unlink(tmp)
