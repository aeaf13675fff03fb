"""Fixed-size filtering: indices of the examples that pass a test, plus a validity mask."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from smallsample.select._checks import check_k, check_rank, check_size


class Selection(NamedTuple):
    """A fixed-size selection.

    Attributes:
      indices: ``[size]`` int32 indices into the pool; entries where ``valid`` is False are padding
        (``fill_value``) and must be masked out by the caller.
      valid: ``[size]`` bool.
    """

    indices: jax.Array
    valid: jax.Array


def filter_mask(mask: jax.Array, *, size: int, fill_value: int = 0) -> Selection:
    """The first ``size`` indices (in increasing order) where ``mask [n]`` is True.

    ``size`` is a static buffer size and may exceed ``n``; ``valid[i]`` says whether slot ``i``
    holds a real index. Works under ``jit`` (wraps ``jnp.nonzero(..., size=...)``).
    """
    check_rank("mask", mask, 1, "[n]")
    size = check_size("size", size)
    mask = mask.astype(bool)
    (indices,) = jnp.nonzero(mask, size=size, fill_value=fill_value)
    valid = jnp.arange(size) < jnp.sum(mask)
    return Selection(indices.astype(jnp.int32), valid)


def filter_by_score(scores: jax.Array, threshold: float | jax.Array, *, size: int,
                    above: bool = True, fill_value: int = 0) -> Selection:
    """Indices of ``scores [n]`` that are ``>= threshold`` (``above``) or ``<= threshold``.

    ``threshold`` may be traced. NaN scores never pass.
    """
    check_rank("scores", scores, 1, "[n]")
    mask = scores >= threshold if above else scores <= threshold
    return filter_mask(mask, size=size, fill_value=fill_value)


def filter_where(predicate: Callable[..., jax.Array], examples, *, size: int,
                 fill_value: int = 0) -> Selection:
    """Indices of the examples for which ``predicate(example) -> bool scalar`` holds.

    ``examples`` is a pytree whose leaves share a leading axis ``[n, ...]``; ``predicate`` sees one
    example (it is ``jax.vmap``-ed) and must be traceable.
    """
    mask = jax.vmap(predicate)(examples)
    if mask.ndim != 1:
        raise ValueError(f"predicate must return one bool per example, got shape {mask.shape}")
    return filter_mask(mask, size=size, fill_value=fill_value)


def top_k(scores: jax.Array, *, k: int, mask: jax.Array | None = None) -> Selection:
    """The ``k`` highest ``scores [n]`` (ties: lower index first), optionally among ``mask [n]``.

    Slots holding an index outside ``mask`` (fewer than ``k`` allowed) are marked invalid.
    """
    check_rank("scores", scores, 1, "[n]")
    k = check_k(k, scores.shape[0])
    if mask is None:
        _, idx = jax.lax.top_k(scores, k)
        return Selection(idx.astype(jnp.int32), jnp.ones((k,), bool))
    check_rank("mask", mask, 1, "[n]")
    if mask.shape != scores.shape:
        raise ValueError(f"mask shape {mask.shape} does not match scores shape {scores.shape}")
    mask = mask.astype(bool)
    keyed = jnp.where(mask, scores, -jnp.inf)
    _, idx = jax.lax.top_k(keyed, k)
    return Selection(idx.astype(jnp.int32), mask[idx])
