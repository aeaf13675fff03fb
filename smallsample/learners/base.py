"""The one learner interface every few-shot method implements.

    init(key, example_x)                     -> params       meta-parameters (a pytree)
    adapt(params, support_x, support_y, key) -> task_state   what is known after the support set
    predict(params, task_state, query_x)     -> logits       [num_query, ways]

One jitted, vmapped meta-training step (:mod:`smallsample.train`) and one evaluation loop
(:mod:`smallsample.evaluate`) serve all learners. Learners whose outer gradient is not the gradient
of the query loss through ``adapt`` (Reptile, iMAML) also provide ``task_grad``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from smallsample.episodes import Episode

Params = Any
TaskState = Any


class Learner(NamedTuple):
    """A few-shot learner as pure functions (see module docstring).

    Attributes:
      init: ``(key, example_x) -> params``; ``example_x`` is a batch ``[n, ...]`` of inputs.
      adapt: ``(params, support_x, support_y, key) -> task_state``.
      predict: ``(params, task_state, query_x) -> logits [num_query, ways]``.
      task_grad: optional ``(params, episode, key) -> (loss, accuracy, grads)`` for learners
        whose meta-gradient is not the plain gradient of :func:`episode_loss` (Reptile, iMAML),
        or that compute that gradient another way (prototypical networks in one pass).
      name: a short name for logs.
    """

    init: Callable[..., Params]
    adapt: Callable[..., TaskState]
    predict: Callable[..., jax.Array]
    task_grad: Callable[..., tuple[jax.Array, jax.Array, Params]] | None = None
    name: str = "learner"


def episode_loss(learner: Learner, params: Params, episode: Episode,
                 key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Query cross-entropy after adapting to the support set; returns ``(loss, accuracy)``."""
    state = learner.adapt(params, episode.support_x, episode.support_y, key)
    return query_metrics(learner.predict(params, state, episode.query_x), episode.query_y)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of ``logits [n, ways]`` against integer ``labels [n]``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def query_metrics(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean softmax cross-entropy and accuracy of ``logits [n, ways]`` against ``labels [n]``."""
    return cross_entropy(logits, labels), (jnp.argmax(logits, -1) == labels).mean()


def task_loss_and_grad(learner: Learner, params: Params, episode: Episode,
                       key: jax.Array) -> tuple[jax.Array, jax.Array, Params]:
    """``(loss, accuracy, meta-gradient)`` of one task, through ``task_grad`` when the learner
    defines it, else by differentiating :func:`episode_loss`."""
    if learner.task_grad is not None:
        return learner.task_grad(params, episode, key)
    (loss, acc), grads = jax.value_and_grad(
        lambda p: episode_loss(learner, p, episode, key), has_aux=True)(params)
    return loss, acc, grads


def episode_accuracy(learner: Learner, params: Params, episode: Episode,
                     key: jax.Array) -> jax.Array:
    """Query accuracy of one episode (no gradient)."""
    return episode_loss(learner, params, episode, key)[1]
