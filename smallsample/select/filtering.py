"""Fixed-size filtering: indices of the examples that pass a test, plus a validity mask."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from smallsample.select._checks import (
    check_k,
    check_not_nan,
    check_rank,
    check_size,
    concrete_scalar,
)


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

    ``threshold`` may be traced. A NaN in ``scores`` or a NaN ``threshold`` is a ``ValueError``
    when concrete; under ``jit`` a NaN score never passes, and a NaN threshold lets nothing pass.
    """
    check_rank("scores", scores, 1, "[n]")
    check_not_nan("scores", scores)
    t = concrete_scalar("threshold", threshold)
    if t is not None and math.isnan(t):
        raise ValueError(f"threshold is NaN (nothing would pass); got {threshold!r}")
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


def _rank_key(scores: jax.Array, mask: jax.Array | None) -> jax.Array:
    """The key ``top_k`` ranks: ``scores`` with NaN and masked-out entries below every number.

    Floats stay floats (``lax.top_k`` on integers is a full sort on CPU, far slower): excluded
    entries become ``-inf`` and a real ``-inf`` score becomes the most negative finite float, so
    it still ranks above them (tying only with that float). Integer scores use their dtype's
    minimum for excluded entries.
    """
    dtype = jnp.dtype(scores.dtype)
    if jnp.issubdtype(dtype, jnp.floating):
        excluded = jnp.isnan(scores) if mask is None else jnp.isnan(scores) | ~mask
        key = jnp.where(scores == -jnp.inf, jnp.finfo(dtype).min, scores)
        return jnp.where(excluded, -jnp.inf, key)
    if dtype == jnp.bool_ or (jnp.issubdtype(dtype, jnp.integer) and dtype.itemsize < 4):
        scores = scores.astype(jnp.int32)
    elif not jnp.issubdtype(dtype, jnp.signedinteger):
        raise ValueError(f"scores must be floats or signed integers, got dtype {dtype}")
    if mask is None:
        return scores
    return jnp.where(mask, scores, jnp.iinfo(scores.dtype).min)


def top_k(scores: jax.Array, *, k: int, mask: jax.Array | None = None) -> Selection:
    """The ``k`` highest ``scores [n]`` (ties: lower index first), optionally among ``mask [n]``.

    ``+inf`` is an ordinary score and so is ``-inf`` (ranked with the most negative finite float).
    A NaN score (among the allowed ones) is a ``ValueError`` when ``scores`` are concrete; under
    ``jit`` NaN ranks below every number, ``-inf`` included, and its slot is marked invalid. Slots
    holding an index outside ``mask`` (fewer than ``k`` allowed) are marked invalid too.
    """
    check_rank("scores", scores, 1, "[n]")
    k = check_k(k, scores.shape[0])
    if mask is not None:
        check_rank("mask", mask, 1, "[n]")
        if mask.shape != scores.shape:
            raise ValueError(f"mask shape {mask.shape} does not match scores shape "
                             f"{scores.shape}")
        mask = mask.astype(bool)
    check_not_nan("scores", scores, where=mask)
    _, idx = jax.lax.top_k(_rank_key(scores, mask), k)
    valid = jnp.ones((k,), bool) if mask is None else mask[idx]
    if jnp.issubdtype(scores.dtype, jnp.floating):
        valid &= ~jnp.isnan(scores[idx])
    return Selection(idx.astype(jnp.int32), valid)
