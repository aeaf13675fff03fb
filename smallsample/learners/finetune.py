"""Fine-tuning baselines (Chen et al. 2019, "A Closer Look at Few-shot Classification").

Baseline: pre-train a body and a linear head over all training classes with plain supervised
learning; for each task, freeze the body and train a fresh linear head on the support set.
Baseline++: the same with a cosine classifier, ``logits = scale * cos(feature, w_k)``.

Pre-training (:func:`pretrainer`) and adaptation (:func:`finetune`) share the parameters
``{'body': embedding params, 'head': head params}``; the fine-tuning learner reads only ``'body'``.
Its ``adapt`` runs a fixed number of full-batch optimizer steps (a ``lax.scan`` over an ``optax``
optimizer) on features computed once with the gradient stopped, so it is meant for evaluation, not
for meta-training. The paper trains 100 epochs of batch 4 with SGD (lr 0.01, momentum 0.9,
dampening 0.9, weight decay 1e-3); the default here is 100 full-batch steps of SGD with momentum
0.9 and weight decay 1e-3.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from smallsample.learners.base import Learner

HeadKind = Literal["linear", "cosine"]


def default_scale(num_classes: int) -> float:
    """Cosine-classifier scale of Chen et al.'s code: 2 up to 200 classes, else 10."""
    return 2.0 if num_classes <= 200 else 10.0


def init_head(key: jax.Array, dim: int, num_classes: int, *, kind: HeadKind = "linear",
              dtype: Any = jnp.float32) -> dict:
    """A fresh head over ``dim`` features: ``{'kernel' [dim, c], 'bias' [c]}`` (linear) or
    ``{'kernel' [dim, c]}`` (cosine), drawn from U(-1/sqrt(dim), 1/sqrt(dim)) (PyTorch's
    ``nn.Linear`` default)."""
    if kind not in ("linear", "cosine"):
        raise ValueError(f"head kind must be 'linear' or 'cosine', got {kind!r}")
    bound = 1.0 / jnp.sqrt(dim)
    k_w, k_b = jax.random.split(key)
    head = {"kernel": jax.random.uniform(k_w, (dim, num_classes), dtype, -bound, bound)}
    if kind == "linear":
        head["bias"] = jax.random.uniform(k_b, (num_classes,), dtype, -bound, bound)
    return head


def head_logits(head: dict, features: jax.Array, *, kind: HeadKind = "linear",
                scale: float = 2.0, eps: float = 1e-8) -> jax.Array:
    """Logits ``[n, c]`` of a linear or cosine head on ``features [n, d]``."""
    if features.ndim != 2 or features.shape[-1] != head["kernel"].shape[0]:
        raise ValueError(f"features must be [n, {head['kernel'].shape[0]}], got {features.shape}")
    if kind == "linear":
        return features @ head["kernel"] + head["bias"]
    f = features / jnp.maximum(jnp.linalg.norm(features, axis=-1, keepdims=True), eps)
    w = head["kernel"] / jnp.maximum(jnp.linalg.norm(head["kernel"], axis=0, keepdims=True), eps)
    return scale * f @ w


def _embed(model: nn.Module, body: Any, x: jax.Array) -> jax.Array:
    z = model.apply({"params": body}, x)
    return z.reshape((z.shape[0], -1))


class Pretrainer(NamedTuple):
    """Supervised pre-training over all training classes, as pure functions.

    Attributes:
      init: ``(key, example_x) -> {'body', 'head'}`` with a head over ``num_classes``.
      loss: ``pretrain_loss(params, x [n, ...], y [n]) -> (mean cross-entropy, accuracy)``;
        differentiate it with ``jax.value_and_grad(..., has_aux=True)``.
      logits: ``(params, x) -> [n, num_classes]``.
    """

    init: Callable[..., Any]
    loss: Callable[..., tuple[jax.Array, jax.Array]]
    logits: Callable[..., jax.Array]


def pretrainer(model: nn.Module, num_classes: int, *, head: HeadKind = "linear",
               scale: float | None = None) -> Pretrainer:
    """Baseline (``head='linear'``) or Baseline++ (``head='cosine'``) pre-training of the
    embedding ``model`` with a head over ``num_classes`` training classes.

    ``scale`` (cosine head only) defaults to :func:`default_scale` of ``num_classes``.
    """
    scale = default_scale(num_classes) if scale is None else scale

    def init(key: jax.Array, example_x: jax.Array) -> Any:
        k_body, k_head = jax.random.split(key)
        body = model.init(k_body, example_x)["params"]
        feats = _embed(model, body, example_x)
        return {"body": body,
                "head": init_head(k_head, feats.shape[-1], num_classes, kind=head,
                                  dtype=feats.dtype)}

    def logits(params, x):
        return head_logits(params["head"], _embed(model, params["body"], x), kind=head,
                           scale=scale)

    def loss(params, x, y):
        z = logits(params, x)
        return (optax.softmax_cross_entropy_with_integer_labels(z, y).mean(),
                (jnp.argmax(z, -1) == y).mean())

    return Pretrainer(init=init, loss=loss, logits=logits)


def finetune(model: nn.Module, ways: int, *, head: HeadKind = "linear", steps: int = 100,
             optimizer: optax.GradientTransformation | None = None, scale: float | None = None,
             name: str | None = None) -> Learner:
    """A learner that trains a fresh head on the frozen features of the support set.

    Args:
      model: the embedding (the pre-trained body).
      ways: classes per task.
      head: ``'linear'`` (Baseline) or ``'cosine'`` (Baseline++).
      steps: static number of full-batch optimizer steps.
      optimizer: an optax optimizer for the head; default SGD (0.01, momentum 0.9) with weight
        decay 1e-3.
      scale: cosine-head scale; default :func:`default_scale` of ``ways``.

    Returns:
      A :class:`Learner`: ``params`` needs ``'body'`` (e.g. from :func:`pretrainer`); ``adapt``
      uses its ``key`` to draw the fresh head and returns the trained head.
    """
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    if optimizer is None:
        optimizer = optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(0.01, momentum=0.9))
    scale = default_scale(ways) if scale is None else scale
    name = name or ("baseline++" if head == "cosine" else "baseline")

    def init(key: jax.Array, example_x: jax.Array) -> Any:
        return {"body": model.init(key, example_x)["params"]}

    def adapt(params, support_x, support_y, key):
        feats = jax.lax.stop_gradient(_embed(model, params["body"], support_x))
        start = init_head(key, feats.shape[-1], ways, kind=head, dtype=feats.dtype)

        def loss(h):
            z = head_logits(h, feats, kind=head, scale=scale)
            return optax.softmax_cross_entropy_with_integer_labels(z, support_y).mean()

        def step(carry, _):
            h, opt_state = carry
            updates, opt_state = optimizer.update(jax.grad(loss)(h), opt_state, h)
            return (optax.apply_updates(h, updates), opt_state), None

        (trained, _), _ = jax.lax.scan(step, (start, optimizer.init(start)), None, length=steps)
        return trained

    def predict(params, trained, query_x):
        return head_logits(trained, _embed(model, params["body"], query_x), kind=head,
                           scale=scale)

    return Learner(init=init, adapt=adapt, predict=predict, name=name)
