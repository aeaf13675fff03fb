"""Choosing which pool examples to label next (active learning), with a fixed batch size ``k``.

Pass ``labeled`` (bool ``[n]``) to exclude examples already labelled; slots that could not be
filled with an unlabelled example are marked ``valid = False``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from smallsample.select._checks import check_finite_array, check_k, check_not_nan, check_rank
from smallsample.select.coresets import KCenter, k_center_greedy, kmeans_plus_plus
from smallsample.select.filtering import Selection, top_k
from smallsample.select.importance import (
    entropy_scores,
    least_confidence_scores,
    margin_scores,
)

UNCERTAINTY_SCORES = {
    "entropy": entropy_scores,
    "margin": margin_scores,
    "least_confidence": least_confidence_scores,
}


def _unlabeled(labeled, n):
    if labeled is None:
        return None
    check_rank("labeled", labeled, 1, "[n]")
    if labeled.shape[0] != n:
        raise ValueError(f"labeled shape {labeled.shape} does not match the pool of {n}")
    return ~labeled.astype(bool)


def uncertainty_select(logits: jax.Array, *, k: int, method: str = "entropy",
                       labeled: jax.Array | None = None) -> Selection:
    """The ``k`` most uncertain pool examples under the model's ``logits [n, C]``.

    Args:
      logits: ``[n, C]`` model outputs on the pool.
      k: static batch size to label.
      method: ``"entropy"`` (highest predictive entropy), ``"margin"`` (smallest top-1 minus top-2
        probability) or ``"least_confidence"`` (smallest top-1 probability).
      labeled: optional ``[n]`` bool, examples to exclude.

    Returns:
      A :class:`Selection` of ``k`` indices, most uncertain first. NaN logits are a
      ``ValueError`` when concrete; under ``jit`` their examples rank last and are marked invalid
      (:func:`~smallsample.select.top_k`).
    """
    if method not in UNCERTAINTY_SCORES:
        raise ValueError(f"method must be one of {sorted(UNCERTAINTY_SCORES)}, got {method!r}")
    check_rank("logits", logits, 2, "[n, num_classes]")
    check_not_nan("logits", logits)
    scores = UNCERTAINTY_SCORES[method](logits)
    return top_k(scores, k=k, mask=_unlabeled(labeled, logits.shape[0]))


def badge_embeddings(logits: jax.Array, features: jax.Array) -> jax.Array:
    """BADGE gradient embeddings (Ash et al. 2020): the gradient of the cross-entropy w.r.t. the
    last linear layer's weights, taking the model's own prediction as the label:
    ``(softmax(logits) - onehot(argmax logits)) ⊗ features``.

    Args:
      logits: ``[n, C]``.
      features: ``[n, d]`` penultimate features.

    Returns:
      ``[n, C * d]`` embeddings (class-major: ``[:, c*d:(c+1)*d]`` belongs to class ``c``).
    """
    check_rank("logits", logits, 2, "[n, num_classes]")
    check_rank("features", features, 2, "[n, d]")
    if features.shape[0] != logits.shape[0]:
        raise ValueError(f"features shape {features.shape} does not match logits {logits.shape}")
    p = jax.nn.softmax(logits)
    residual = p - jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1], dtype=p.dtype)
    g = residual[:, :, None] * features[:, None, :].astype(p.dtype)
    return g.reshape(logits.shape[0], -1)


def badge_select(key: jax.Array, logits: jax.Array, features: jax.Array, *, k: int,
                 labeled: jax.Array | None = None) -> Selection:
    """BADGE (Ash et al. 2020): k-means++ seeding on :func:`badge_embeddings`, starting, as the
    reference implementation does, from the unlabelled example with the largest gradient norm.

    Args:
      key: a PRNG key.
      logits: ``[n, C]`` model outputs on the pool.
      features: ``[n, d]`` penultimate features on the pool.
      k: static batch size to label.
      labeled: optional ``[n]`` bool, examples to exclude.

    Returns:
      A :class:`Selection` of ``k`` distinct indices (while enough distinct unlabelled gradient
      embeddings exist). Non-finite ``logits`` or ``features`` are a ``ValueError`` when
      concrete.
    """
    check_finite_array("logits", logits)
    check_finite_array("features", features)
    g = badge_embeddings(logits, features)
    n = g.shape[0]
    k = check_k(k, n)
    allowed = _unlabeled(labeled, n)
    norms = jnp.sum(g * g, -1)
    if allowed is None:
        first = jnp.argmax(norms)
        idx = kmeans_plus_plus(key, g, k=k, first=first)
        return Selection(idx, jnp.ones((k,), bool))
    first = jnp.argmax(jnp.where(allowed, norms, -jnp.inf))
    idx = kmeans_plus_plus(key, g, k=k, first=first, mask=allowed)
    return Selection(idx, allowed[idx])


def coreset_select(pool: jax.Array, labeled_embeddings: jax.Array, *, k: int) -> KCenter:
    """Core-set active learning (Sener & Savarese 2018): greedy k-center on the pool
    embeddings ``[n, d]`` starting from the labelled examples' embeddings ``[m, d]``."""
    return k_center_greedy(pool, k=k, initial_centers=labeled_embeddings)
