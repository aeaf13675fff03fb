"""Where data files live, and getting them: local first, checksummed download otherwise.

Lookup order for the data folder: an explicit ``root`` argument, else the ``SMALLSAMPLE_DATA``
environment variable, else ``$XDG_CACHE_HOME/smallsample/data`` (``~/.cache/smallsample/data``).
Decoded arrays are cached in ``SMALLSAMPLE_CACHE`` (default ``~/.cache/smallsample/arrays``), so a
read-only data folder works.

Downloads go to a temporary file in the target folder, are checked against the upstream sha256 and
renamed into place only when complete, so the data folder never holds a half-written file, whatever
ends the transfer (a checksum mismatch, an HTTP error, a deadline, Ctrl-C). Without a network they
fail at once (short connect timeout) with a message that says which file to put where. A download
cannot hang: besides the per-read ``timeout`` it has an overall deadline and a minimum average rate
(see :func:`download`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from smallsample.paths import user_dir

DEFAULT_TIMEOUT = 20.0
# A transfer slower than MIN_RATE bytes/s on average, once GRACE seconds have passed, is abandoned.
MIN_RATE = 10_000.0
GRACE = 15.0
# The default deadline lets a download that keeps to MIN_RATE finish, plus a minute of slack, so
# the two rules never contradict each other; with no size known in advance (no `size`, no
# Content-Length) it is UNKNOWN_SIZE_DEADLINE.
DEADLINE_SLACK = 60.0
UNKNOWN_SIZE_DEADLINE = 600.0
DEADLINE_ENV = "SMALLSAMPLE_DOWNLOAD_DEADLINE"
MIN_RATE_ENV = "SMALLSAMPLE_DOWNLOAD_MIN_RATE"
_CHUNK = 1 << 16


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


def _unlink_quietly(path: str | os.PathLike) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _naming(e: OSError, doing: str, path: Path) -> OSError:
    """The same kind of ``OSError`` (same errno, so ``ENOSPC`` stays ``ENOSPC``) naming ``path``."""
    if e.errno is None:
        return OSError(f"{doing} {path}: {e}")
    return OSError(e.errno, f"{doing} {path}: {e.strerror or os.strerror(e.errno)}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` through a temporary file in the same folder and a rename.

    Either ``path`` holds all of ``data`` afterwards or it is untouched and no temporary file is
    left. Raises ``OSError`` with the original errno (``ENOSPC``, ``EROFS``, ``EFBIG``...) and a
    message naming ``path`` when the folder cannot be created or the file cannot be written.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise _naming(e, "could not write", path) from e
    finally:
        if tmp is not None:
            _unlink_quietly(tmp)


def _write_all(f, data: bytes) -> None:
    """Writes all of ``data`` to the unbuffered file ``f`` (a raw write may take only part)."""
    view = memoryview(data)
    while view:
        view = view[f.write(view):]


def _env_number(name: str) -> float | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not number >= 0 or number == float("inf"):
        raise ValueError(f"{name}={value!r} must be a finite number >= 0")
    return number


def default_deadline(expected_bytes: int | None, min_rate: float = MIN_RATE) -> float:
    """Seconds allowed for a whole download of ``expected_bytes`` when none is given.

    ``DEADLINE_SLACK + expected_bytes / min_rate`` (a transfer that keeps to the minimum rate ends
    in time), or ``UNKNOWN_SIZE_DEADLINE`` when the size is unknown; ``min_rate`` 0 counts as
    ``MIN_RATE``.
    """
    if expected_bytes is None:
        return UNKNOWN_SIZE_DEADLINE
    return DEADLINE_SLACK + expected_bytes / (min_rate if min_rate > 0 else MIN_RATE)


def _socket_of(response):
    """The socket under a urllib HTTP response, to bound each read by what time is left.

    ``None`` where there is none to reach (another scheme, another Python); the per-read timeout
    then bounds how far a read can overrun the deadline.
    """
    raw = getattr(getattr(response, "fp", None), "raw", None)
    sock = getattr(raw, "_sock", None)
    return sock if hasattr(sock, "settimeout") else None


def download(url: str, dest: Path, *, sha256: str, size: int | None = None,
             timeout: float = DEFAULT_TIMEOUT, deadline: float | None = None,
             min_rate: float | None = None, grace: float = GRACE) -> Path:
    """Downloads ``url`` to ``dest`` if the sha256 matches; nothing is left behind otherwise.

    Three limits keep a download from hanging, each checked between reads and, where the socket can
    be reached, also by shortening the wait for the next read to the time left:

    - ``timeout``: seconds to connect and for each read to return something;
    - ``deadline``: seconds for the whole download. Default: ``$SMALLSAMPLE_DOWNLOAD_DEADLINE`` if
      set, else :func:`default_deadline` of ``size`` (or of the announced Content-Length);
    - ``min_rate``: bytes/s that the average rate must reach once ``grace`` seconds have passed,
      so a server that trickles a byte now and then is given up on. Default:
      ``$SMALLSAMPLE_DOWNLOAD_MIN_RATE`` if set, else ``MIN_RATE``; 0 turns the rule off.

    Raises:
      DataError: the server cannot be reached or answers with an HTTP error, the transfer is cut
        short, too slow or past its deadline, or the checksum or size differs; the message names
        the URL, the file, the bytes received and the time taken, and where to place the file by
        hand. The temporary ``.part`` file is removed in every case (Ctrl-C included).
      OSError: the local file cannot be written (full disk...): same errno, naming ``dest``.
      ValueError: a limit, given or from the environment, is not a number >= 0.
    """
    dest = Path(dest)
    if min_rate is None:
        min_rate = _env_number(MIN_RATE_ENV)
        min_rate = MIN_RATE if min_rate is None else min_rate
    if deadline is None:
        deadline = _env_number(DEADLINE_ENV)
    for name, value in (("timeout", timeout), ("deadline", deadline), ("min_rate", min_rate),
                        ("grace", grace)):
        if value is not None and not (value >= 0 and value != float("inf")):
            raise ValueError(f"download: {name}={value!r} must be a finite number >= 0")
    hint = (f"Download {url} yourself (or copy the file from another machine) and place it at "
            f"{dest}, or point SMALLSAMPLE_DATA at a folder that holds it.")
    start = time.monotonic()
    received = 0

    def fail(reason: str) -> DataError:
        elapsed = time.monotonic() - start
        return DataError(f"could not download {url} to {dest}: {reason} ({received} bytes "
                         f"received in {elapsed:.1f} s). {hint}")

    def past_deadline() -> str:
        return (f"no complete file within the deadline of {limit:g} s (set {DEADLINE_ENV} to "
                "allow longer)")

    limit = deadline if deadline is not None else default_deadline(size, min_rate)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as e:
        raise _naming(e, "could not create a temporary file for", dest) from e
    try:
        out = os.fdopen(fd, "wb", buffering=0)  # unbuffered: a write error surfaces at write
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    try:
        with out:
            try:
                response = urllib.request.urlopen(url, timeout=min(timeout, limit) or 1e-3)
            except urllib.error.HTTPError as e:  # "HTTP Error 404: Not Found"
                e.close()
                raise fail(f"{e}") from e
            except (urllib.error.URLError, OSError) as e:
                if time.monotonic() - start >= limit:
                    raise fail(past_deadline()) from e
                raise fail(f"{getattr(e, 'reason', None) or e}") from e
            with response:
                announced = response.headers.get("Content-Length")
                try:
                    announced = int(announced) if announced is not None else None
                except ValueError:
                    announced = None
                if deadline is None and size is None and announced is not None:
                    limit = default_deadline(announced, min_rate)
                if size is not None and announced is not None and announced != size:
                    raise fail(f"the server announces {announced} bytes, expected {size}")
                h = hashlib.sha256()
                read = getattr(response, "read1", response.read)
                sock = _socket_of(response)
                while True:
                    now = time.monotonic() - start
                    if now >= limit:
                        raise fail(past_deadline())
                    if min_rate > 0 and now >= grace and received < min_rate * now:
                        raise fail(f"the transfer averages {received / now:.0f} bytes/s, below "
                                   f"{min_rate:g} bytes/s after {grace:g} s (set {MIN_RATE_ENV} "
                                   f"to accept slower)")
                    wait = min(timeout, limit - now)
                    if min_rate > 0:  # when the average would fall below min_rate
                        wait = min(wait, max(grace, received / min_rate) - now)
                    if sock is not None:
                        try:
                            sock.settimeout(max(wait, 1e-3))
                        except OSError:
                            sock = None
                    try:
                        block = read(_CHUNK)
                    except (OSError, urllib.error.URLError) as e:  # socket.timeout is an OSError
                        waited = time.monotonic() - start
                        if waited >= limit or (min_rate > 0 and waited >= grace
                                               and received < min_rate * waited):
                            continue  # the checks above say which limit it was
                        raise fail(f"{e}") from e
                    except Exception as e:  # http.client.IncompleteRead and kin
                        raise fail(f"{type(e).__name__}: {e}") from e
                    if not block:
                        break
                    received += len(block)
                    if size is not None and received > size:
                        raise fail(f"the server sent more than the expected {size} bytes")
                    h.update(block)
                    try:
                        _write_all(out, block)
                    except OSError as e:
                        raise _naming(e, "could not write the download to", dest) from e
            if announced is not None and received != announced:
                raise fail(f"cut short: {received} of {announced} bytes")
            if size is not None and received != size:
                raise fail(f"{received} bytes, expected {size}")
            digest = h.hexdigest()
            if digest != sha256:
                raise fail(f"the file has sha256 {digest}, expected {sha256}; it was discarded")
            try:
                os.fsync(out.fileno())
            except OSError as e:
                raise _naming(e, "could not write the download to", dest) from e
        try:
            os.replace(tmp, dest)
        except OSError as e:
            raise _naming(e, "could not move the download into place at", dest) from e
        tmp = None
        return dest
    finally:
        if tmp is not None:
            _unlink_quietly(tmp)
