"""Checkpoint I/O: a :class:`~smallsample.train.step.TrainState` to a file and back, and the
run folder's lock.

A checkpoint file is a header line and a flax msgpack payload::

    smallsample-checkpoint
    {"format": 2, "step": 500, "sha256": "...", "bytes": 123456, "config": {...}}
    <payload>

It is written through a temporary file, fsynced and renamed into place (the folder fsynced too),
so a kill or a full disk during the write leaves the previous checkpoint as it was. A state that
is not finite is never written. Reading checks the header, the payload's length and sha256, and,
when the caller gives its config, that the checkpoint was made by the same configuration (the
settings of :data:`smallsample.config.RESUMABLE` may differ). Files written before the format
existed (a bare msgpack payload, format 1) still load, unchecked.

A run folder keeps its latest checkpoint as ``checkpoint.msgpack`` and the ones before it as
``checkpoint-STEP.msgpack`` (``keep`` in all); :func:`latest_checkpoint` returns the newest that
reads, warning about any that do not.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from smallsample.config import RESUMABLE, Config
from smallsample.data.files import atomic_write_bytes
from smallsample.train.step import TrainState

LATEST = "checkpoint.msgpack"
BEST = "best.msgpack"
FORMAT = 2
MAGIC = b"smallsample-checkpoint\n"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, corrupt, not finite, or from another
    configuration (the message names the file and why)."""


class RunFolderBusy(OSError):
    """Another process holds the run folder's lock."""


def _non_finite(tree) -> list[str]:
    bad = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        a = np.asarray(leaf)
        if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
            bad.append(jax.tree_util.keystr(path))
    return bad


def save_checkpoint(path: str | Path, state: TrainState, *, config: Config | None = None) -> None:
    """Writes ``state`` (and ``config``, to check against when it is read) to ``path``
    atomically. A non-finite state raises ``FloatingPointError`` naming its leaves, and nothing
    is written; an ``OSError`` (full disk, read-only folder) names the path and keeps the file
    that was there."""
    path = Path(path)
    state = jax.device_get(state)
    bad = _non_finite(state)
    if bad:
        raise FloatingPointError(f"not writing checkpoint {path} at step {int(state.step)}: "
                                 f"non-finite values in {', '.join(bad[:5])}")
    payload = flax.serialization.to_bytes(state)
    header = {"format": FORMAT, "step": int(state.step), "bytes": len(payload),
              "sha256": hashlib.sha256(payload).hexdigest(),
              "config": None if config is None else json.loads(config.to_json())}
    try:
        atomic_write_bytes(path, MAGIC + json.dumps(header).encode() + b"\n" + payload)
        _fsync_dir(path.parent)
    except OSError as e:
        raise OSError(e.errno, f"writing checkpoint {path} failed ({e.strerror or e}); the "
                               f"previous checkpoint is kept") from e


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be fsynced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_checkpoint(path: str | Path) -> tuple[dict, bytes]:
    """``(header, payload)`` of a checkpoint file, checked (format 1 files: ``{'format': 1}``
    and the whole file). Raises :class:`CheckpointError` naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read: {e}") from e
    if not data.startswith(MAGIC):
        if not data:
            raise CheckpointError(f"checkpoint {path} is empty")
        return {"format": 1}, data
    line_end = data.find(b"\n", len(MAGIC))
    try:
        if line_end < 0:
            raise ValueError("no end of line")
        header = json.loads(data[len(MAGIC):line_end])
        if not isinstance(header, dict):
            raise ValueError("not a JSON object")
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"checkpoint {path} has a corrupt header: {e}") from e
    payload = data[line_end + 1:]
    if header.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {header.get('format')!r}; this "
                              f"version of smallsample reads formats 1 and {FORMAT}")
    if len(payload) != header.get("bytes") or \
            hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise CheckpointError(f"checkpoint {path} is corrupt: its content does not match its "
                              f"checksum (truncated or overwritten)")
    return header, payload


def check_config(header: dict, config: Config, path: Path) -> None:
    """Refuses a checkpoint made by another configuration, naming the settings."""
    saved = header.get("config")
    if saved is None:
        return
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint {path} has a corrupt header: its config is not an "
                              f"object")
    mine = json.loads(config.to_json())
    differ = sorted(k for k in set(saved) | set(mine)
                    if k not in RESUMABLE and saved.get(k) != mine.get(k))
    if differ:
        raise CheckpointError(
            f"checkpoint {path} was made by another configuration: " + ", ".join(
                f"{k}={saved.get(k)!r} there, {mine.get(k)!r} here" for k in differ))


def load_checkpoint(path: str | Path, template: TrainState, *,
                    config: Config | None = None) -> TrainState:
    """Restores a checkpoint into the structure of ``template``, checking (with ``config``) that
    the same configuration made it, and that every array has the template's shape."""
    path = Path(path)
    return _restore(path, *read_checkpoint(path), template, config)


def _restore(path: Path, header: dict, payload: bytes, template: TrainState,
             config: Config | None) -> TrainState:
    """:func:`load_checkpoint` of a file already read (and checked) by :func:`read_checkpoint`."""
    if config is not None:
        check_config(header, config, path)
    try:
        state = flax.serialization.from_bytes(template, payload)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); it "
                              f"is corrupt or from another configuration") from e
    want = jax.tree.map(np.shape, template)
    got = jax.tree.map(np.shape, state)
    if want != got:
        raise CheckpointError(f"checkpoint {path} does not fit this model: its arrays have "
                              f"other shapes (another configuration)")
    return state


def load_params(path: str | Path):
    """Only the parameters of a checkpoint, as nested dicts of arrays (no template needed);
    a checkpoint whose parameters are not finite is refused."""
    path = Path(path)
    _, payload = read_checkpoint(path)
    try:
        params = flax.serialization.msgpack_restore(payload)["params"]
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: "
                              f"{e})") from e
    bad = _non_finite(params)
    if bad:
        raise CheckpointError(f"checkpoint {path} holds non-finite parameters "
                              f"({', '.join(bad[:5])}); it cannot be evaluated")
    return jax.tree.map(jnp.asarray, params)


# ------------------------------------------------------------------------- the run folder
def _header_step(path: Path) -> int | None:
    """The step in a checkpoint's header line, read without the payload (None: no readable
    header, e.g. a format-1 file)."""
    try:
        with open(path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                return None
            step = json.loads(f.readline()).get("step")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return step if isinstance(step, int) else None


def _step_of(path: Path) -> int:
    return int(path.stem.rpartition("-")[2])


def checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's checkpoints, newest first: ``checkpoint.msgpack``, then ``checkpoint-STEP``."""
    run_dir = Path(run_dir)
    older = sorted((p for p in run_dir.glob("checkpoint-*.msgpack")
                    if p.stem.rpartition("-")[2].isdigit()), key=_step_of, reverse=True)
    return [p for p in [run_dir / LATEST] if p.is_file()] + older


def has_checkpoint(run_dir: str | Path) -> bool:
    return bool(checkpoints(run_dir))


def save_run_checkpoint(run_dir: Path, state: TrainState, *, config: Config,
                        keep: int = 3) -> Path:
    """Writes ``state`` as the run's latest checkpoint, keeping the previous one as
    ``checkpoint-STEP.msgpack`` and ``keep`` checkpoints in all. A kill at any moment leaves at
    least one complete checkpoint."""
    latest = run_dir / LATEST
    tmp = run_dir / f".{LATEST}.new"
    save_checkpoint(tmp, state, config=config)  # complete before anything is moved
    if latest.is_file():
        step = _header_step(latest)
        if step is not None and step != int(state.step):
            os.replace(latest, run_dir / f"checkpoint-{step:08d}.msgpack")
    os.replace(tmp, latest)
    _fsync_dir(run_dir)
    for old in checkpoints(run_dir)[max(1, keep):]:
        old.unlink(missing_ok=True)
    return latest


def latest_checkpoint(run_dir: str | Path, template: TrainState, *, config: Config | None = None,
                      warn=None) -> TrainState:
    """The newest of the run's checkpoints that reads: a corrupt one is skipped with a warning
    (``warn``, default :func:`warnings.warn`); a checkpoint of another configuration is an error,
    never skipped. Raises :class:`CheckpointError` when none reads."""
    warn = warn or (lambda msg: warnings.warn(msg, RuntimeWarning, stacklevel=3))
    found = checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"{run_dir} has no checkpoint ({LATEST})")
    errors = []
    for path in found:
        try:
            header, payload = read_checkpoint(path)
        except CheckpointError as e:
            errors.append(str(e))
            warn(f"{e}; falling back to the checkpoint before it")
            continue
        return _restore(path, header, payload, template, config)
    raise CheckpointError(f"no checkpoint of {run_dir} can be read: " + "; ".join(errors))


def run_checkpoint(run_dir: str | Path) -> tuple[Path, str]:
    """The checkpoint a finished run is evaluated with: ``best.msgpack`` (best validation
    accuracy) if there is one, else the latest; ``(path, file name)``. A ``FileNotFoundError``
    names the folder when it has neither."""
    run_dir = Path(run_dir)
    found = [run_dir / BEST] if (run_dir / BEST).is_file() else []
    found += checkpoints(run_dir)
    if not found:
        raise FileNotFoundError(f"{run_dir} has no checkpoint ({BEST} or {LATEST})")
    return found[0], found[0].name


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Holds an exclusive lock on ``run_dir`` (``.lock``, ``flock``: released by the kernel when
    the process ends, however it ends); a second holder gets :class:`RunFolderBusy`. Where
    ``fcntl`` does not exist (Windows) there is no lock."""
    try:
        import fcntl  # noqa: PLC0415
    except ImportError:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise RunFolderBusy(f"{run_dir} is in use by {holder}: one training run at a time "
                                f"per run folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        yield
    finally:
        os.close(fd)
