"""Matching networks (Vinyals et al. 2016): cosine attention over the embedded support set.

The query's class distribution is an attention-weighted vote of the support labels,
``p(y = k | x) = sum_i a(x, x_i) [y_i = k]`` with ``a = softmax_i(scale * cos(f(x), f(x_i)))``.
Query and support share one embedding ``f``; the full-context embeddings (FCE: a bidirectional LSTM
over the support set and an attention LSTM for the query) are not implemented.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from smallsample.learners.base import Learner


class MatchingState(NamedTuple):
    """What a matching network keeps from the support set.

    Attributes:
      keys: ``[n_support, d]`` unit-norm support embeddings.
      onehot: ``[n_support, ways]`` one-hot support labels.
    """

    keys: jax.Array
    onehot: jax.Array


def unit_norm(x: jax.Array, *, eps: float = 1e-8) -> jax.Array:
    """Rows of ``x [n, d]`` scaled to unit Euclidean norm (``eps`` guards a zero row)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def attention_log_probs(queries: jax.Array, state: MatchingState, scale: Any) -> jax.Array:
    """``log p(y = k | query)`` ``[n_query, ways]`` from cosine attention over the support set.

    Computed as ``logsumexp_{i: y_i = k} s_i - logsumexp_i s_i`` with ``s = scale * cos``, so the
    log of the attention vote is stable; a class without support examples gets ``-inf``.
    """
    if queries.ndim != 2 or queries.shape[-1] != state.keys.shape[-1]:
        raise ValueError(f"query embeddings must be [n, {state.keys.shape[-1]}], got "
                         f"{queries.shape}")
    sims = scale * unit_norm(queries) @ state.keys.T  # [n_query, n_support]
    per_class = jax.nn.logsumexp(sims[:, :, None], axis=1, b=state.onehot[None])
    return per_class - jax.nn.logsumexp(sims, axis=1, keepdims=True)


def matching_net(model: nn.Module, ways: int, *, scale: float = 1.0, learn_scale: bool = False,
                 name: str = "matching") -> Learner:
    """A matching-network learner over the embedding ``model`` (a flax module, ``[n, ...] ->
    [n, d]`` or any ``[n, ...]`` output, flattened).

    Args:
      model: the embedding.
      ways: classes per task.
      scale: inverse temperature of the cosine attention (1 in the paper).
      learn_scale: meta-learn the scale: ``params = {'model': ..., 'scale': scalar}``; else
        ``params`` is the model's parameters.

    Returns:
      A :class:`Learner` whose ``task_state`` is a :class:`MatchingState` and whose logits are
      the log attention votes (so softmax cross-entropy is the paper's loss).
    """

    def split(params):
        return (params["model"], params["scale"]) if learn_scale else (params, scale)

    def init(key: jax.Array, example_x: jax.Array) -> Any:
        params = model.init(key, example_x)["params"]
        if learn_scale:
            return {"model": params, "scale": jnp.asarray(scale, jnp.float32)}
        return params

    def embed(params, x):
        z = model.apply({"params": params}, x)
        return z.reshape((z.shape[0], -1))

    def adapt(params, support_x, support_y, key):
        del key
        model_params, _ = split(params)
        keys = unit_norm(embed(model_params, support_x))
        return MatchingState(keys, jax.nn.one_hot(support_y, ways, dtype=keys.dtype))

    def predict(params, state, query_x):
        model_params, s = split(params)
        return attention_log_probs(embed(model_params, query_x), state, s)

    return Learner(init=init, adapt=adapt, predict=predict, name=name)
