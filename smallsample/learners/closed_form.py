"""A differentiable closed-form ridge-regression head (R2D2, Bertinetto et al. 2019).

On the embedded support set ``X [n, d]`` with one-hot targets ``Y [n, ways]``, the head is

    W = (X^T X + lam I_d)^{-1} X^T Y  =  X^T (X X^T + lam I_n)^{-1} Y    (Woodbury)

and the second form, an ``n x n`` solve, is used when ``n < d`` (the usual few-shot case). Logits
are ``scale * X_query W + bias`` with a learnable scalar scale and bias; ``lam`` is learnable (as
``log_lambda``) or fixed. Gradients flow through the solve to the embedding, ``scale``, ``bias``
and ``lam``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from smallsample.learners.base import Learner


def ridge_weights(x: jax.Array, targets: jax.Array, lam: Any) -> jax.Array:
    """Ridge-regression weights ``[d, c]`` for features ``x [n, d]`` and ``targets [n, c]``.

    Solves the ``n x n`` (Woodbury) system when ``n < d``, else the ``d x d`` one; both are
    symmetric positive definite for ``lam > 0`` and solved through a Cholesky factorisation.
    """
    if x.ndim != 2 or targets.ndim != 2 or x.shape[0] != targets.shape[0]:
        raise ValueError(f"ridge_weights needs x [n, d] and targets [n, c], got {x.shape} and "
                         f"{targets.shape}")
    n, d = x.shape
    if n < d:
        gram = x @ x.T + lam * jnp.eye(n, dtype=x.dtype)
        return x.T @ jax.scipy.linalg.solve(gram, targets, assume_a="pos")
    gram = x.T @ x + lam * jnp.eye(d, dtype=x.dtype)
    return jax.scipy.linalg.solve(gram, x.T @ targets, assume_a="pos")


def r2d2(model: nn.Module, ways: int, *, lam: float = 1.0, learn_lambda: bool = True,
         scale: float = 1.0, name: str = "r2d2") -> Learner:
    """A ridge-regression (R2D2) learner over the embedding ``model`` (outputs are flattened).

    Args:
      model: the embedding (a flax module).
      ways: classes per task.
      lam: the ridge penalty (initial value when learned).
      learn_lambda: meta-learn ``log(lam)``; else ``lam`` is a fixed constant.
      scale: initial value of the learnable logit scale (the bias starts at 0).

    Returns:
      A :class:`Learner` with ``params = {'model': ..., 'head': {'scale', 'bias'[, 'log_lambda']}}``
      whose ``task_state`` is the ridge weights ``[d, ways]``.
    """
    if lam <= 0:
        raise ValueError(f"lam must be positive, got {lam}")

    def init(key: jax.Array, example_x: jax.Array) -> Any:
        head = {"scale": jnp.asarray(scale, jnp.float32), "bias": jnp.zeros((), jnp.float32)}
        if learn_lambda:
            head["log_lambda"] = jnp.log(jnp.asarray(lam, jnp.float32))
        return {"model": model.init(key, example_x)["params"], "head": head}

    def embed(params, x):
        z = model.apply({"params": params["model"]}, x)
        return z.reshape((z.shape[0], -1))

    def adapt(params, support_x, support_y, key):
        del key
        feats = embed(params, support_x)
        penalty = jnp.exp(params["head"]["log_lambda"]) if learn_lambda else lam
        return ridge_weights(feats, jax.nn.one_hot(support_y, ways, dtype=feats.dtype), penalty)

    def predict(params, weights, query_x):
        head = params["head"]
        return head["scale"] * (embed(params, query_x) @ weights) + head["bias"]

    return Learner(init=init, adapt=adapt, predict=predict, name=name)
