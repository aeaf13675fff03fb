"""Checkpoint I/O: a :class:`~smallsample.train.step.TrainState` to a file and back.

Checkpoints are flax msgpack, written atomically (a temporary file, then a rename), so an
interrupted write keeps the previous file.
"""

from __future__ import annotations

from pathlib import Path

import flax.serialization
import jax
import jax.numpy as jnp

from smallsample.data.files import atomic_write_bytes
from smallsample.train.step import TrainState

LATEST = "checkpoint.msgpack"
BEST = "best.msgpack"


def save_checkpoint(path: str | Path, state: TrainState) -> None:
    """Serialises ``state`` to ``path`` atomically (an interrupted write keeps the old file)."""
    atomic_write_bytes(Path(path), flax.serialization.to_bytes(jax.device_get(state)))


def load_params(path: str | Path):
    """Only the parameters of a checkpoint, as nested dicts of arrays (no template needed)."""
    path = Path(path)
    try:
        raw = flax.serialization.msgpack_restore(path.read_bytes())
        return jax.tree.map(jnp.asarray, raw["params"])
    except Exception as e:
        raise ValueError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e})") from e


def load_checkpoint(path: str | Path, template: TrainState) -> TrainState:
    """Restores a state saved by :func:`save_checkpoint` into the structure of ``template``."""
    path = Path(path)
    try:
        return flax.serialization.from_bytes(template, path.read_bytes())
    except Exception as e:
        raise ValueError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); it is "
                         f"corrupt or from another configuration") from e


def run_checkpoint(run_dir: str | Path) -> tuple[Path, str]:
    """The checkpoint a finished run is evaluated with: ``best.msgpack`` (best validation
    accuracy) if there is one, else the latest; ``(path, file name)``. A ``FileNotFoundError``
    names the folder when it has neither."""
    run_dir = Path(run_dir)
    for name in (BEST, LATEST):
        if (run_dir / name).is_file():
            return run_dir / name, name
    raise FileNotFoundError(f"{run_dir} has no checkpoint ({BEST} or {LATEST})")
