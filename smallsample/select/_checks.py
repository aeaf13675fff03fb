"""Input checks shared by the selection functions.

Shape and size checks (``k``, ``size``, ranks) use static information and always raise a
``ValueError``. Value checks (NaN, negative or infinite weights, labels out of range, empty
classes) need the numbers, so they run only when the input is *concrete*: an eager call, or a
jitted caller passing the array as a closed-over constant. Under ``jax.jit`` / ``jax.vmap`` on
traced inputs they are skipped (a traced value cannot raise a Python error); wrap the caller with
:mod:`jax.experimental.checkify` or validate once on the host when inputs come from outside.
"""

from __future__ import annotations

import jax
import numpy as np


def is_concrete(x) -> bool:
    """True when ``x`` holds numbers now (not a tracer inside jit/vmap/grad)."""
    return not isinstance(x, jax.core.Tracer)


def check_size(name: str, value, *, minimum: int = 1) -> int:
    """``value`` must be a static Python int >= ``minimum``; returns it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a static Python int, got {value!r} "
                         f"({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_k(k, n: int, *, replace: bool = False, what: str = "pool") -> int:
    """``k`` of ``n`` items: a positive static int, at most ``n`` unless with replacement."""
    k = check_size("k", k)
    if n < 1:
        raise ValueError(f"cannot select from an empty {what} (size {n})")
    if not replace and k > n:
        raise ValueError(f"k={k} is larger than the {what} of {n} items (without replacement)")
    return k


def check_rank(name: str, x, rank: int, shape_hint: str) -> None:
    if getattr(x, "ndim", None) != rank:
        raise ValueError(f"{name} must have shape {shape_hint}, got shape "
                         f"{getattr(x, 'shape', None)}")


def check_log_weights(log_weights, name: str = "log_weights") -> None:
    """1-D; when concrete: no NaN, no +inf, at least one finite entry (-inf means weight 0)."""
    check_rank(name, log_weights, 1, "[n]")
    if not is_concrete(log_weights):
        return
    lw = np.asarray(log_weights, dtype=np.float64)
    if np.isnan(lw).any():
        raise ValueError(f"{name} contains NaN at indices {np.flatnonzero(np.isnan(lw))[:10]}")
    if np.isposinf(lw).any():
        raise ValueError(f"{name} contains +inf at indices {np.flatnonzero(np.isposinf(lw))[:10]}")
    if not np.isfinite(lw).any():
        raise ValueError(f"{name} are all -inf (every weight is zero)")


def check_weights(weights, name: str = "weights", *, rank: int | None = 1,
                  allow_all_zero: bool = False) -> None:
    """When concrete: finite, non-negative and (unless ``allow_all_zero``) not all zero."""
    if rank is not None:
        check_rank(name, weights, rank, "[n]" if rank == 1 else f"rank {rank}")
    if not is_concrete(weights):
        return
    w = np.asarray(weights, dtype=np.float64)
    bad = ~np.isfinite(w)
    if bad.any():
        raise ValueError(f"{name} must be finite; got {w[bad].ravel()[:5]} at flat indices "
                         f"{np.flatnonzero(bad)[:10]}")
    if (w < 0).any():
        raise ValueError(f"{name} must be non-negative; got {w[w < 0].ravel()[:5]} at flat "
                         f"indices {np.flatnonzero(w < 0)[:10]}")
    if not allow_all_zero and w.size and not (w > 0).any():
        raise ValueError(f"{name} are all zero")


def check_labels(labels, num_classes: int, name: str = "labels") -> np.ndarray | None:
    """Int labels ``[n]`` in ``range(num_classes)``; returns per-class counts when concrete."""
    check_rank(name, labels, 1, "[n]")
    if not np.issubdtype(np.dtype(labels.dtype), np.integer):
        raise ValueError(f"{name} must be integers, got dtype {labels.dtype}")
    check_size("num_classes", num_classes)
    if not is_concrete(labels):
        return None
    y = np.asarray(labels)
    out = (y < 0) | (y >= num_classes)
    if out.any():
        raise ValueError(f"{name} must lie in [0, {num_classes}); got {y[out][:5]} at indices "
                         f"{np.flatnonzero(out)[:10]}")
    return np.bincount(y, minlength=num_classes)
