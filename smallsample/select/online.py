"""Online importance sampling during training, as an optax-style pair of pure functions.

    sampler = online_importance_sampler(num_examples, batch_size=32, decay=0.9, mix=0.1)
    state = sampler.init()
    for step in range(steps):
        key, k = jax.random.split(key)
        batch = sampler.sample(k, state)                  # ImportanceSample
        losses, grads = per_example_loss_and_grad(params, data[batch.indices], batch.raw_weights)
        state = sampler.update(state, batch.indices, losses)

``sum(batch.raw_weights * losses)`` is an unbiased estimate of the mean loss over the whole pool
(and its gradient of the full-data gradient); ``batch.weights`` is the self-normalised version.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from smallsample.select._checks import (
    check_k,
    check_rank,
    check_scalar,
    check_size,
    check_weights,
    is_concrete,
)
from smallsample.select.importance import (
    ImportanceSample,
    importance_sample,
    log_weights_from_scores,
)


class OnlineImportanceState(NamedTuple):
    """State of :func:`online_importance_sampler`.

    Attributes:
      scores: ``[n]`` float32 exponential moving average of each example's loss (meaningful
        where ``seen``).
      seen: ``[n]`` bool, whether the example's loss has been observed.
      count: int32 scalar, number of updates so far.
    """

    scores: jax.Array
    seen: jax.Array
    count: jax.Array


class OnlineImportanceSampler(NamedTuple):
    """``init(scores=None) -> state``, ``update(state, indices, losses) -> state``,
    ``sample(key, state) -> ImportanceSample``, ``probabilities(state) -> [n]``."""

    init: Callable[..., OnlineImportanceState]
    update: Callable[[OnlineImportanceState, jax.Array, jax.Array], OnlineImportanceState]
    sample: Callable[[jax.Array, OnlineImportanceState], ImportanceSample]
    probabilities: Callable[[OnlineImportanceState], jax.Array]


def online_importance_sampler(num_examples: int, *, batch_size: int, decay: float = 0.9,
                              mix: float = 0.1, power: float = 1.0,
                              replace: bool = True) -> OnlineImportanceSampler:
    """Samples training batches proportionally to an EMA of each example's recent loss.

    Scoring: ``update`` sets ``scores[i] = decay * scores[i] + (1 - decay) * loss_i`` for the
    examples just seen (the first observation is taken as is). Examples never seen get the
    largest score seen so far (optimism: every example is visited early); before any update the
    proposal is uniform. Proposal: ``(1 - mix) * s^power / sum(s^power) + mix / n``
    (:func:`log_weights_from_scores`), so every importance weight is at most ``1 / mix``.

    Args:
      num_examples: static pool size ``n``.
      batch_size: static batch size ``k``.
      decay: EMA decay in ``[0, 1)``; may be traced.
      mix: uniform mixing proportion in ``(0, 1]`` (0 allows unbounded weights); may be traced.
      power: sharpening exponent on the scores (> 0); may be traced.
      replace: i.i.d. batches or distinct examples per batch (Gumbel-top-k).

    Checks: ``decay``, ``mix`` and ``power`` outside their ranges (NaN included) raise
    ``ValueError`` when concrete; traced, a NaN ``power`` or ``mix`` gives NaN weights. In
    ``update``, ``indices`` outside ``[0, n)`` and negative or non-finite ``losses`` raise when
    concrete; under ``jit`` out-of-range indices are ignored (never wrapped like NumPy's negative
    indices).

    Returns:
      An :class:`OnlineImportanceSampler`.
    """
    n = check_size("num_examples", num_examples)
    k = check_k(batch_size, n, replace=replace)
    check_scalar("decay", decay, low=0.0, high=1.0, high_open=True)
    check_scalar("mix", mix, low=0.0, high=1.0)
    check_scalar("power", power, low=0.0, low_open=True)

    def init(scores: jax.Array | None = None) -> OnlineImportanceState:
        if scores is None:
            return OnlineImportanceState(jnp.zeros((n,), jnp.float32), jnp.zeros((n,), bool),
                                         jnp.zeros((), jnp.int32))
        if scores.shape != (n,):
            raise ValueError(f"scores must have shape ({n},), got {scores.shape}")
        check_weights(scores, "scores", allow_all_zero=True)
        return OnlineImportanceState(jnp.asarray(scores, jnp.float32), jnp.ones((n,), bool),
                                     jnp.zeros((), jnp.int32))

    def update(state: OnlineImportanceState, indices: jax.Array,
               losses: jax.Array) -> OnlineImportanceState:
        check_rank("indices", indices, 1, "[b]")
        check_rank("losses", losses, 1, "[b]")
        if indices.shape != losses.shape:
            raise ValueError(f"indices shape {indices.shape} != losses shape {losses.shape}")
        if not jnp.issubdtype(indices.dtype, jnp.integer):
            raise ValueError(f"indices must be integers, got dtype {indices.dtype}")
        if is_concrete(indices):
            idx = np.asarray(indices)
            out = (idx < 0) | (idx >= n)
            if out.any():
                raise ValueError(f"indices must lie in [0, {n}); got {idx[out][:5]} at positions "
                                 f"{np.flatnonzero(out)[:10]}")
        check_weights(losses, "losses", allow_all_zero=True)
        losses = losses.astype(jnp.float32)
        # out of range -> n, which mode="drop" ignores (a negative index would otherwise wrap)
        indices = jnp.where((indices >= 0) & (indices < n), indices, n)
        old = state.scores.at[indices].get(mode="fill", fill_value=0.0)
        seen = state.seen.at[indices].get(mode="fill", fill_value=False)
        new = jnp.where(seen, decay * old + (1 - decay) * losses, losses)
        return OnlineImportanceState(state.scores.at[indices].set(new, mode="drop"),
                                     state.seen.at[indices].set(True, mode="drop"),
                                     state.count + 1)

    def effective_scores(state):
        any_seen = jnp.any(state.seen)
        top = jnp.max(jnp.where(state.seen, state.scores, -jnp.inf))
        s = jnp.where(state.seen, state.scores, top)
        return jnp.where(any_seen, s, jnp.ones_like(s))

    def log_proposal(state):
        return log_weights_from_scores(effective_scores(state), power=power, mix=mix)

    def probabilities(state: OnlineImportanceState) -> jax.Array:
        return jnp.exp(log_proposal(state))

    def sample(key: jax.Array, state: OnlineImportanceState) -> ImportanceSample:
        return importance_sample(key, log_proposal(state), k=k, replace=replace)

    return OnlineImportanceSampler(init=init, update=update, sample=sample,
                                   probabilities=probabilities)
