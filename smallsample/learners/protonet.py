"""Prototypical networks (Snell et al. 2017): class means of embeddings, negative squared distance.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from smallsample.learners.base import Learner


def class_means(embeddings: jax.Array, labels: jax.Array, ways: int) -> jax.Array:
    """Per-class means ``[ways, d]`` of ``embeddings [n, d]`` with integer ``labels [n]``."""
    onehot = jax.nn.one_hot(labels, ways, dtype=embeddings.dtype)  # [n, ways]
    counts = onehot.sum(0)[:, None]
    return (onehot.T @ embeddings) / jnp.maximum(counts, 1)


def squared_distances(a: jax.Array, b: jax.Array) -> jax.Array:
    """``[n, m]`` squared Euclidean distances between rows of ``a [n, d]`` and ``b [m, d]``."""
    return (jnp.sum(a * a, -1)[:, None] - 2 * a @ b.T + jnp.sum(b * b, -1)[None, :])


def protonet(model: nn.Module, ways: int, *, name: str = "protonet") -> Learner:
    """A prototypical-network learner over the embedding ``model`` (a flax module).

    ``task_state`` is the prototypes ``[ways, d]``; logits are negative squared distances.
    """

    def init(key: jax.Array, example_x: jax.Array) -> Any:
        return model.init(key, example_x)["params"]

    def embed(params, x):
        return model.apply({"params": params}, x)

    def adapt(params, support_x, support_y, key):
        del key
        return class_means(embed(params, support_x), support_y, ways)

    def predict(params, prototypes, query_x):
        return -squared_distances(embed(params, query_x), prototypes)

    return Learner(init=init, adapt=adapt, predict=predict, name=name)
