"""Prototypical networks (Snell et al. 2017): class means of embeddings, negative squared distance.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from smallsample.episodes import Episode
from smallsample.learners.base import Learner, query_metrics
from smallsample.models.layers import segmented_batch_stats


def class_means(embeddings: jax.Array, labels: jax.Array, ways: int) -> jax.Array:
    """Per-class means ``[ways, d]`` of ``embeddings [n, d]`` with integer ``labels [n]``."""
    onehot = jax.nn.one_hot(labels, ways, dtype=embeddings.dtype)  # [n, ways]
    counts = onehot.sum(0)[:, None]
    return (onehot.T @ embeddings) / jnp.maximum(counts, 1)


def squared_distances(a: jax.Array, b: jax.Array) -> jax.Array:
    """``[n, m]`` squared Euclidean distances between rows of ``a [n, d]`` and ``b [m, d]``."""
    return (jnp.sum(a * a, -1)[:, None] - 2 * a @ b.T + jnp.sum(b * b, -1)[None, :])


NORM_MODES = ("support", "separate", "joint")


def protonet(model: nn.Module, ways: int, *, norm: str = "separate",
             one_pass: bool | None = None, name: str = "protonet") -> Learner:
    """A prototypical-network learner over the embedding ``model`` (a flax module).

    Logits are negative squared distances to the class means of the support embeddings.

    ``norm`` says which batch statistics the model's batch-statistics normalisation
    (:class:`~smallsample.models.layers.BatchStatNorm`) uses; it matters most at 1 shot, where the
    support set is a few images and the query set many:

    - ``'separate'`` (default, as MAML does): support and query batches each use their own
      statistics. Predictions for a query depend on the other queries in its batch, and a batch
      of one query is degenerate.
    - ``'support'``: queries are normalised with the support set's statistics, so support and
      queries pass through the same function and each query is classified on its own (not
      transductive; use it when queries arrive one at a time). ``task_state`` is
      ``(prototypes, norm_stats)``.
    - ``'joint'``: statistics of support and queries together (Snell et al.'s training batch;
      transductive: a query's prediction depends on the other queries). ``adapt`` keeps the support
      set and ``predict`` embeds it with the queries.

    ``one_pass`` (``'separate'`` only): the training gradient (``task_grad``) embeds support and
    queries as one batch, each normalised with its own statistics
    (:func:`~smallsample.models.layers.segmented_batch_stats`): the same numbers as embedding them
    apart, with one convolution per layer instead of two (docs/performance.md, "protonet in one
    pass"). It is exact
    only for a model whose examples meet nowhere but in ``BatchStatNorm``; ``None`` (default)
    turns it on for models that say so (``EXAMPLES_MEET_ONLY_IN_BATCH_STAT_NORM``: Conv-4,
    ResNet-12). ``adapt`` and ``predict`` (evaluation) are the same either way.
    """
    if norm not in NORM_MODES:
        raise ValueError(f"unknown norm {norm!r}; choose from {', '.join(NORM_MODES)}")
    if one_pass is None:
        one_pass = norm == "separate" and getattr(model, "EXAMPLES_MEET_ONLY_IN_BATCH_STAT_NORM",
                                                  False)
    elif one_pass and norm != "separate":
        raise ValueError(f"one_pass embeds support and queries with separate statistics; it "
                         f"does not apply to norm={norm!r}")

    def init(key: jax.Array, example_x: jax.Array) -> Any:
        return model.init(key, example_x)["params"]

    def embed(params, x):
        return model.apply({"params": params}, x)

    if norm == "support":
        def adapt(params, support_x, support_y, key):
            del key
            z, stats = model.apply({"params": params}, support_x, mutable=["norm_stats"])
            return class_means(z, support_y, ways), stats.get("norm_stats", {})

        def predict(params, task_state, query_x):
            prototypes, stats = task_state
            variables = {"params": params, "norm_stats": stats} if stats else {"params": params}
            return -squared_distances(model.apply(variables, query_x), prototypes)

    elif norm == "separate":
        def adapt(params, support_x, support_y, key):
            del key
            return class_means(embed(params, support_x), support_y, ways)

        def predict(params, prototypes, query_x):
            return -squared_distances(embed(params, query_x), prototypes)

        def one_pass_loss(params, episode: Episode):
            n = episode.support_x.shape[0]
            with segmented_batch_stats((n, episode.query_x.shape[0])):
                z = embed(params, jnp.concatenate([episode.support_x, episode.query_x]))
            prototypes = class_means(z[:n], episode.support_y, ways)
            return query_metrics(-squared_distances(z[n:], prototypes), episode.query_y)

        def task_grad(params, episode: Episode, key):
            del key
            (loss, acc), grads = jax.value_and_grad(one_pass_loss, has_aux=True)(params, episode)
            return loss, acc, grads

    else:
        def adapt(params, support_x, support_y, key):
            del params, key
            return support_x, support_y

        def predict(params, task_state, query_x):
            support_x, support_y = task_state
            z = embed(params, jnp.concatenate([support_x, query_x]))
            prototypes = class_means(z[: support_x.shape[0]], support_y, ways)
            return -squared_distances(z[support_x.shape[0]:], prototypes)

    return Learner(init=init, adapt=adapt, predict=predict, name=name,
                   task_grad=task_grad if one_pass else None)
