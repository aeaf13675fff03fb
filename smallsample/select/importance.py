"""Importance sampling from log-weights, importance weights, effective sample size, weighted
losses, and per-example scores to derive the weights from.

A *proposal* ``q`` over a pool of ``n`` examples is given by unnormalised log-weights (``-inf`` =
weight 0); everything is computed in log space with ``logsumexp``. The *target* is the uniform
distribution over the pool unless ``log_target`` is given, so the weighted sample estimates the
plain pool mean of any per-example quantity (e.g. the training loss).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import logsumexp

from smallsample.select._checks import (
    check_k,
    check_labels,
    check_log_weights,
    check_nonempty,
    check_rank,
    check_scalar,
    check_weights,
    is_concrete,
)


class ImportanceSample(NamedTuple):
    """Indices drawn from a proposal, with their importance weights.

    Attributes:
      indices: ``[k]`` int32 indices into the pool.
      weights: ``[k]`` self-normalised importance weights (non-negative, sum to 1):
        ``sum(weights * f[indices])`` estimates the target mean of ``f`` (consistent, with a
        bias of order ``1/k``).
      raw_weights: ``[k]`` unnormalised weights such that ``sum(raw_weights * f[indices])`` is an
        exactly unbiased estimate of the target mean: ``p_i / (k q_i)`` with replacement,
        ``p_i / P(i in sample | kappa)`` without (priority sampling, see
        :func:`importance_sample`).
    """

    indices: jax.Array
    weights: jax.Array
    raw_weights: jax.Array


def log_normalize(log_weights: jax.Array) -> jax.Array:
    """Log-probabilities ``[n]`` from unnormalised ``log_weights [n]`` (``x - logsumexp(x)``).

    Checked as in :func:`sample_with_replacement` when concrete; under ``jit`` all ``-inf`` (or a
    NaN) gives NaN."""
    check_log_weights(log_weights)
    return log_weights - logsumexp(log_weights)


def _last_positive(weights: jax.Array) -> jax.Array:
    n = weights.shape[0]
    return n - 1 - jnp.argmax((weights > 0)[::-1])


def sample_with_replacement(key: jax.Array, log_weights: jax.Array, *, k: int) -> jax.Array:
    """``k`` i.i.d. indices with ``P(i) = exp(log_weights[i]) / sum(exp(log_weights))``.

    Inverse-CDF sampling (one uniform per draw, ``O(n + k log n)`` memory and time).

    Args:
      key: a PRNG key.
      log_weights: ``[n]`` unnormalised log-weights; ``-inf`` means never drawn.
      k: static number of draws (may exceed ``n``).

    Returns:
      ``[k]`` int32 indices.
    """
    check_log_weights(log_weights)
    k = check_k(k, log_weights.shape[0], replace=True)
    w = jnp.exp(log_weights - jnp.max(log_weights))
    cdf = jnp.cumsum(w)
    u = jax.random.uniform(key, (k,), dtype=cdf.dtype) * cdf[-1]
    idx = jnp.searchsorted(cdf, u, side="right")
    return jnp.minimum(idx, _last_positive(w)).astype(jnp.int32)


def _gumbel_top_k(key, log_probs, k):
    """Top ``k`` (and the ``k+1``-th value, or -inf) of Gumbel-perturbed log-probabilities."""
    n = log_probs.shape[0]
    perturbed = log_probs + jax.random.gumbel(key, (n,), dtype=log_probs.dtype)
    if k < n:
        # The barrier keeps XLA (CPU) from rewriting a sliced TopK into a full sort, far slower
        # for a large pool (docs/performance.md, "other families").
        values, idx = jax.lax.optimization_barrier(jax.lax.top_k(perturbed, k + 1))
        return idx[:k], values[k]
    _, idx = jax.lax.top_k(perturbed, k)
    return idx, jnp.array(-jnp.inf, log_probs.dtype)


def sample_without_replacement(key: jax.Array, log_weights: jax.Array, *, k: int) -> jax.Array:
    """``k`` distinct indices by Gumbel-top-k (Kool et al. 2019): successive sampling, i.e. the
    same law as drawing one at a time proportionally to the weights and removing it.

    Args:
      key: a PRNG key.
      log_weights: ``[n]`` unnormalised log-weights; at least ``k`` should be finite (checked when
        concrete), otherwise zero-weight indices fill the tail.
      k: static sample size, ``k <= n``.

    Returns:
      ``[k]`` int32 distinct indices, in the order they would have been drawn.
    """
    check_log_weights(log_weights)
    k = check_k(k, log_weights.shape[0])
    _check_support(log_weights, k)
    idx, _ = _gumbel_top_k(key, log_normalize(log_weights), k)
    return idx.astype(jnp.int32)


def _check_support(log_weights, k):
    if is_concrete(log_weights):
        support = int(np.isfinite(np.asarray(log_weights)).sum())
        if support < k:
            raise ValueError(f"k={k} is larger than the {support} examples with non-zero weight "
                             f"(sampling without replacement)")


def _target(log_target, n):
    if log_target is None:
        return jnp.full((n,), -math.log(n), jnp.float32)
    check_log_weights(log_target, "log_target")
    if log_target.shape != (n,):
        raise ValueError(f"log_target shape {log_target.shape} does not match the pool ({n},)")
    return log_normalize(log_target)


def importance_sample(key: jax.Array, log_weights: jax.Array, *, k: int, replace: bool = True,
                      log_target: jax.Array | None = None) -> ImportanceSample:
    """Draws ``k`` indices from the proposal ``q ∝ exp(log_weights)`` with importance weights
    towards the target ``p`` (uniform over the pool by default).

    With replacement: i.i.d. draws; ``raw_weights = p_i / (k q_i)``.
    Without replacement: Gumbel-top-k; with ``kappa`` the ``(k+1)``-th largest perturbed
    log-probability, ``i`` is in the sample with probability ``q_i(kappa) = 1 -
    exp(-exp(log q_i - kappa))`` given the others, so ``raw_weights = p_i / q_i(kappa)`` gives an
    unbiased estimator (priority sampling: Duffield et al. 2007; Kool et al. 2020, "Estimating
    gradients for discrete distributions by sampling without replacement", eq. 8). With ``k = n``
    the weights are exactly ``p``.
    ``weights`` are the self-normalised versions of ``raw_weights`` in both cases.

    Args:
      key: a PRNG key.
      log_weights: ``[n]`` unnormalised proposal log-weights.
      k: static sample size (``k <= n`` without replacement).
      replace: with (i.i.d.) or without replacement.
      log_target: optional ``[n]`` unnormalised target log-weights (default uniform).

    Returns:
      An :class:`ImportanceSample`.
    """
    check_log_weights(log_weights)
    n = log_weights.shape[0]
    k = check_k(k, n, replace=replace)
    log_p = _target(log_target, n)
    log_q = log_normalize(log_weights)
    if replace:
        idx = sample_with_replacement(key, log_weights, k=k)
        log_raw = log_p[idx] - log_q[idx] - math.log(k)
    else:
        _check_support(log_weights, k)
        idx, kappa = _gumbel_top_k(key, log_q, k)
        idx = idx.astype(jnp.int32)
        # log(1 - exp(-exp(a))) with a = log q_i - kappa, stable for small and large a.
        a = jnp.exp(log_q[idx] - kappa)
        log_incl = jnp.log(-jnp.expm1(-a))
        log_raw = jnp.where(jnp.isfinite(log_q[idx]), log_p[idx] - log_incl, -jnp.inf)
    weights = jnp.exp(log_raw - logsumexp(log_raw))
    return ImportanceSample(indices=idx, weights=weights, raw_weights=jnp.exp(log_raw))


def effective_sample_size(weights: jax.Array) -> jax.Array:
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` of non-negative ``weights [k]``
    (any scale): ``k`` for equal weights, 1 for a one-hot.

    Empty ``weights`` always raise ``ValueError``; negative, non-finite or all-zero weights raise
    when concrete, and under ``jit`` all-zero weights give NaN."""
    check_weights(weights)
    return jnp.sum(weights) ** 2 / jnp.sum(weights * weights)


def effective_sample_size_from_log(log_weights: jax.Array) -> jax.Array:
    """:func:`effective_sample_size` from log-weights ``[k]``, in log space:
    ``exp(2 logsumexp(lw) - logsumexp(2 lw))``.

    Empty ``log_weights`` always raise ``ValueError``; NaN, ``+inf`` or all ``-inf`` raise when
    concrete and give NaN under ``jit``."""
    check_log_weights(log_weights)
    return jnp.exp(2 * logsumexp(log_weights) - logsumexp(2 * log_weights))


def weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    """``sum(w * v) / sum(w)`` over the leading axis of ``values [k, ...]`` with ``weights [k]``.

    Empty ``weights`` always raise; bad weights (as in :func:`effective_sample_size`) raise when
    concrete, and under ``jit`` all-zero weights give NaN."""
    check_weights(weights)
    if values.shape[:1] != weights.shape:
        raise ValueError(f"values shape {values.shape} does not start with weights shape "
                         f"{weights.shape}")
    w = weights.reshape(weights.shape + (1,) * (values.ndim - 1))
    return jnp.sum(w * values, axis=0) / jnp.sum(weights)


def weighted_loss(losses: jax.Array, weights: jax.Array, *, normalize: bool = True) -> jax.Array:
    """Importance-weighted loss from per-example ``losses [k]`` and ``weights [k]``.

    ``normalize=True``: ``sum(w l) / sum(w)`` (use with self-normalised or any weights);
    ``normalize=False``: ``sum(w l)`` (use with :attr:`ImportanceSample.raw_weights` for an
    unbiased estimate of the pool's mean loss and of its gradient). With ``normalize=True``
    empty ``weights`` always raise and all-zero ones raise when concrete (NaN under ``jit``).
    """
    check_rank("losses", losses, 1, "[k]")
    check_weights(weights, allow_all_zero=not normalize)
    if losses.shape != weights.shape:
        raise ValueError(f"losses shape {losses.shape} != weights shape {weights.shape}")
    total = jnp.sum(weights * losses)
    return total / jnp.sum(weights) if normalize else total


def weighted_cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array, *,
                           normalize: bool = True) -> jax.Array:
    """:func:`weighted_loss` of the softmax cross-entropy of ``logits [k, C]``, ``labels [k]``
    (labels as in :func:`loss_scores`)."""
    losses = loss_scores(logits, labels)
    return weighted_loss(losses, weights, normalize=normalize)


# ----------------------------------------------------------------------------- weight sources
# All scores are per example, non-negative, and larger means "more informative".


# Labels: int ``[n]`` in ``range(C)``. Out of range (negative included) is a ``ValueError`` when
# the labels are concrete; under ``jit`` the example's score is NaN (never a plausible number:
# JAX indexing would wrap a negative label and one-hot would zero a large one).


def _check_logits_labels(logits, labels, n_axis=0):
    if n_axis == 0:
        check_rank("logits", logits, 2, "[n, num_classes]")
    elif logits.ndim < 2:
        raise ValueError(f"logits must have shape [..., n, C], got {logits.shape}")
    check_labels(labels, logits.shape[-1])
    if labels.shape[0] != logits.shape[n_axis]:
        raise ValueError(f"labels shape {labels.shape} does not match logits shape {logits.shape}")


def _nan_out_of_range(scores, labels, num_classes):
    bad = (labels < 0) | (labels >= num_classes)
    return jnp.where(bad, jnp.asarray(jnp.nan, scores.dtype), scores)


def loss_scores(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example cross-entropy ``[n]`` of ``logits [n, C]`` and int ``labels [n]``.

    A label outside ``range(C)`` is a ``ValueError`` when concrete and a NaN score under ``jit``.
    """
    _check_logits_labels(logits, labels)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return _nan_out_of_range(losses, labels, logits.shape[-1])


def grad_norm_scores(logits: jax.Array, labels: jax.Array, features: jax.Array) -> jax.Array:
    """Norm of the cross-entropy gradient w.r.t. the last linear layer's weights, per example:
    ``||softmax(logits) - onehot(labels)||_2 * ||features||_2`` (exact for ``logits = features @ W
    + b``; an upper-bound proxy for the full gradient norm, Katharopoulos & Fleuret 2018).

    Args:
      logits: ``[n, C]``.
      labels: ``[n]`` ints in ``range(C)`` (as in :func:`loss_scores`: NaN under ``jit``).
      features: ``[n, d]`` penultimate features (the last layer's input).

    Returns:
      ``[n]`` scores.
    """
    _check_logits_labels(logits, labels)
    check_rank("features", features, 2, "[n, d]")
    if features.shape[0] != logits.shape[0]:
        raise ValueError(f"features shape {features.shape} does not match logits {logits.shape}")
    residual = jax.nn.softmax(logits) - jax.nn.one_hot(labels, logits.shape[-1],
                                                        dtype=logits.dtype)
    scores = jnp.linalg.norm(residual, axis=-1) * jnp.linalg.norm(features, axis=-1)
    return _nan_out_of_range(scores, labels, logits.shape[-1])


def el2n_scores(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """EL2N (Paul et al. 2021): ``E ||softmax(logits) - onehot(labels)||_2`` per example.

    Args:
      logits: ``[..., n, C]``; leading axes (e.g. an ensemble of early-training models) are
        averaged over.
      labels: ``[n]`` ints in ``range(C)`` (as in :func:`loss_scores`: NaN under ``jit``).

    Returns:
      ``[n]`` scores in ``[0, sqrt(2)]``.
    """
    _check_logits_labels(logits, labels, n_axis=-2)
    residual = jax.nn.softmax(logits) - jax.nn.one_hot(labels, logits.shape[-1],
                                                        dtype=logits.dtype)
    norms = jnp.linalg.norm(residual, axis=-1)
    return _nan_out_of_range(norms.reshape((-1, logits.shape[-2])).mean(0), labels,
                             logits.shape[-1])


def entropy_scores(logits: jax.Array) -> jax.Array:
    """Predictive entropy ``-sum p log p`` (nats) of ``logits [n, C]``, per example ``[n]``."""
    check_rank("logits", logits, 2, "[n, num_classes]")
    logp = jax.nn.log_softmax(logits)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def prediction_margin(logits: jax.Array) -> jax.Array:
    """Top-1 minus top-2 probability ``[n]`` of ``logits [n, C]`` (small = uncertain)."""
    check_rank("logits", logits, 2, "[n, num_classes]")
    if logits.shape[-1] < 2:
        raise ValueError(f"the margin needs at least 2 classes, got logits {logits.shape}")
    top2, _ = jax.lax.top_k(jax.nn.softmax(logits), 2)
    return top2[:, 0] - top2[:, 1]


def margin_scores(logits: jax.Array) -> jax.Array:
    """``1 - prediction_margin(logits)`` in ``[0, 1]``; larger = nearer the decision boundary."""
    return 1.0 - prediction_margin(logits)


def least_confidence_scores(logits: jax.Array) -> jax.Array:
    """``1 - max_c softmax(logits)_c`` per example ``[n]``."""
    check_rank("logits", logits, 2, "[n, num_classes]")
    return 1.0 - jnp.max(jax.nn.softmax(logits), axis=-1)


def log_weights_from_scores(scores: jax.Array, *, power: float | jax.Array = 1.0,
                            mix: float | jax.Array = 0.0) -> jax.Array:
    """Proposal log-probabilities ``[n]`` proportional to ``scores ** power``, mixed with the
    uniform distribution: ``log((1 - mix) s^power / sum(s^power) + mix / n)``.

    A positive ``mix`` bounds every importance weight by ``1 / mix`` (no example is starved).
    All-zero scores give the uniform distribution. ``power`` and ``mix`` may be traced.

    Args:
      scores: ``[n]`` non-negative scores, ``n >= 1`` (values checked when concrete).
      power: sharpening exponent (finite, > 0).
      mix: uniform mixing proportion in ``[0, 1]``.

    Out-of-range ``power`` or ``mix`` (NaN included) is a ``ValueError`` when concrete; under
    ``jit`` it gives NaN log-weights, which the samplers turn into NaN weights.
    """
    check_weights(scores, "scores", allow_all_zero=True)
    check_nonempty("scores", scores)
    check_scalar("power", power, low=0.0, low_open=True)
    check_scalar("mix", mix, low=0.0, high=1.0)
    n = scores.shape[0]
    ls = power * jnp.log(scores)
    ls = jnp.where(jnp.all(scores <= 0), 0.0, ls)
    mix = jnp.asarray(mix, ls.dtype)
    return jnp.logaddexp(jnp.log1p(-mix) + log_normalize(ls), jnp.log(mix) - math.log(n))
