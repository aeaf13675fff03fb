"""Input checks shared by the selection functions.

Shape and size checks (``k``, ``size``, ranks, empty inputs) use static information and always
raise a ``ValueError``. Value checks (NaN, negative or infinite weights, labels out of range, empty
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
    """1-D and not empty; when concrete: no NaN, no +inf, at least one finite entry (-inf means
    weight 0)."""
    check_rank(name, log_weights, 1, "[n]")
    check_nonempty(name, log_weights)
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
    """When concrete: finite, non-negative and (unless ``allow_all_zero``) not all zero. Unless
    ``allow_all_zero``, an empty ``weights`` (whose sum is zero) raises even under ``jit``."""
    if rank is not None:
        check_rank(name, weights, rank, "[n]" if rank == 1 else f"rank {rank}")
    if not allow_all_zero:
        check_nonempty(name, weights)
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


def check_nonempty(name: str, x) -> None:
    """``x`` has at least one entry (a static check: it holds under ``jit`` too)."""
    if getattr(x, "size", 1) == 0:
        raise ValueError(f"{name} is empty (shape {x.shape})")


def check_not_nan(name: str, x, *, where=None) -> None:
    """When concrete: no NaN in ``x`` (among the entries where ``where`` is True, if given)."""
    if not (is_concrete(x) and np.issubdtype(np.dtype(x.dtype), np.floating)):
        return
    bad = np.isnan(np.asarray(x, np.float64))
    if where is not None:
        if not is_concrete(where):
            return
        bad &= np.asarray(where, bool)
    if bad.any():
        where_ = "indices" if bad.ndim == 1 else "flat indices"
        raise ValueError(f"{name} contains NaN at {where_} {np.flatnonzero(bad)[:10]}")


def check_finite_array(name: str, x) -> None:
    """When concrete: no NaN or inf anywhere in ``x``."""
    if not is_concrete(x):
        return
    v = np.asarray(x, np.float64)
    bad = ~np.isfinite(v)
    if bad.any():
        raise ValueError(f"{name} must be finite; got {v[bad].ravel()[:5]} at flat indices "
                         f"{np.flatnonzero(bad)[:10]}")


def concrete_scalar(name: str, value) -> float | None:
    """The number in ``value`` (Python, NumPy or concrete 0-d JAX scalar), or None when traced."""
    if not is_concrete(value):
        return None
    v = np.asarray(value)
    if v.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {v.shape}")
    if not (np.issubdtype(v.dtype, np.number) or v.dtype == bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(v)


def check_scalar(name: str, value, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> None:
    """A scalar option that may be traced: when concrete, a finite number in the given range
    (``(low`` / ``high)`` when ``low_open`` / ``high_open``). Traced values are not checked."""
    v = concrete_scalar(name, value)
    if v is None:
        return
    left = "(-inf" if low is None else f"{'(' if low_open else '['}{low}"
    right = "inf)" if high is None else f"{high}{')' if high_open else ']'}"
    ok = np.isfinite(v)
    if low is not None:
        ok = ok and (v > low if low_open else v >= low)
    if high is not None:
        ok = ok and (v < high if high_open else v <= high)
    if not ok:
        raise ValueError(f"{name} must be a finite number in {left}, {right}, got {value!r}")


def check_index(name: str, value, n: int):
    """An index into ``n`` items that may be traced: when concrete, an integer in ``[0, n)``
    (``ValueError`` otherwise). Returns it as an int32 scalar, clipped into ``[0, n - 1]`` so that
    a traced out-of-range value picks the nearest end, as JAX indexing does."""
    if is_concrete(value):
        v = np.asarray(value)
        if v.ndim != 0 or not np.issubdtype(v.dtype, np.integer):
            raise ValueError(f"{name} must be an integer index, got {value!r}")
        if not 0 <= int(v) < n:
            raise ValueError(f"{name}={int(v)} is outside the {n} points (valid: 0 to {n - 1})")
    return jax.numpy.clip(jax.numpy.asarray(value, jax.numpy.int32), 0, n - 1)
