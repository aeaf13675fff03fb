"""The MAML family: MAML, first-order MAML, Meta-SGD, ANIL, Reptile and iMAML.

All of them adapt by a few steps of gradient descent on the support set, written as one
``lax.scan`` (:func:`inner_loop`); they differ in what is adapted and how the outer gradient is
formed:

- MAML (Finn et al. 2017): the outer gradient flows through the inner loop (second order);
  ``first_order=True`` stops the gradient of the inner gradients, so the meta-gradient is the query
  gradient at the adapted parameters.
- Meta-SGD (Li et al. 2017): ``learn_inner_lr=True``; per-parameter inner rates live in ``params``.
- ANIL (Raghu et al. 2020): ``head_only=True``; only the submodule named ``head`` (an
  ``nn.Dense``) is adapted; the body runs once on the support set.
- Reptile (Nichol et al. 2018) and iMAML (Rajeswaran et al. 2019) set ``Learner.task_grad``.

BatchNorm: a model built with :class:`smallsample.models.layers.BatchStatNorm` normalises with the
statistics of the batch at hand, as the MAML paper did. The support set and the query set are
separate forward calls, so each is normalised with its own statistics (per task, since tasks are
vmapped); BatchNorm's scale and shift are parameters like any other and are adapted in the inner
loop; there are no running averages.

Convolutions: a model built with ``conv_impl='auto'`` runs with the lowering
:func:`smallsample.models.layers.inner_loop_model` gives it: on GPUs im2col, faster there than
cuDNN's convolutions with per-task weights (docs/performance.md, "convolution lowering");
unchanged on CPU.

More inner steps at test time: the parameters do not depend on ``inner_steps``, so evaluation builds
a second learner with the same settings and a larger ``inner_steps`` (e.g. MAML trains with 5 steps
and evaluates with 10) and uses it with the same ``params``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from smallsample.episodes import Episode
from smallsample.learners.base import Learner, cross_entropy, query_metrics
from smallsample.models.layers import inner_loop_model

Params = Any
PyTree = Any


def _check_steps(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative int (it shapes the scan), got {value!r}")


def _check_unroll(unroll) -> None:
    if not isinstance(unroll, (bool, int)) or (not isinstance(unroll, bool) and unroll < 1):
        raise ValueError(f"unroll must be True, False or an int >= 1, got {unroll!r}")


def sgd_step(params: PyTree, grads: PyTree, lrs: Any) -> PyTree:
    """``params - lrs * grads``; ``lrs`` is a scalar or a pytree shaped like ``params``."""
    if isinstance(lrs, (int, float)) or (hasattr(lrs, "ndim") and lrs.ndim == 0):
        return jax.tree.map(lambda p, g: p - lrs * g, params, grads)
    return jax.tree.map(lambda p, g, lr: p - lr * g, params, grads, lrs)


def inner_loop(loss_fn: Callable[[PyTree], jax.Array], params: PyTree, lrs: Any, *, steps: int,
               first_order: bool = False, remat: bool = False, unroll: int | bool = 1) -> PyTree:
    """``steps`` steps of gradient descent ``p <- p - lrs * grad loss_fn(p)`` as a ``lax.scan``.

    Args:
      loss_fn: ``params -> scalar`` (the support loss).
      params: the starting point (a pytree).
      lrs: the inner rate: a scalar (may be traced) or a pytree shaped like ``params`` (Meta-SGD).
      steps: static number of steps (0 returns ``params``).
      first_order: stop the gradient through the inner gradients (first-order MAML): the adapted
        parameters then have an identity Jacobian with respect to ``params``.
      remat: wrap the step in ``jax.checkpoint`` so that the backward pass recomputes the inner
        step's activations instead of storing them (less memory, about one more forward per step).
      unroll: ``lax.scan``'s: how many steps each loop iteration runs (``True``: all of them, no
        loop). The same numbers; a fully unrolled loop lets XLA schedule and fuse across steps
        (at a longer compile), and its cost analysis then counts every step, where it counts a
        loop's body once.

    Returns:
      The adapted parameters, same structure as ``params``.
    """
    _check_steps("steps", steps)
    _check_unroll(unroll)

    def step(p, _):
        g = jax.grad(loss_fn)(p)
        if first_order:
            g = jax.lax.stop_gradient(g)
        return sgd_step(p, g, lrs), None

    if remat:
        step = jax.checkpoint(step)
    adapted, _ = jax.lax.scan(step, params, None, length=steps, unroll=unroll)
    return adapted


def _features(model: nn.Module, params: Params, x: jax.Array) -> jax.Array:
    """The input of ``model``'s submodule named ``head`` (the model with its head skipped)."""

    def skip_head(next_fun, args, kwargs, context):
        if context.module.name == "head" and context.method_name == "__call__":
            return args[0]
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(skip_head):
        return model.apply({"params": params}, x)


def _dense(head: Params, features: jax.Array) -> jax.Array:
    if set(head) != {"kernel", "bias"}:
        raise ValueError(f"head_only needs the head to be an nn.Dense named 'head' with kernel and "
                         f"bias, got parameters {sorted(head)}")
    return features @ head["kernel"] + head["bias"]


def maml(model: nn.Module, ways: int, *, inner_steps: int = 1, inner_lr: float = 0.4,
         first_order: bool = False, learn_inner_lr: bool = False, head_only: bool = False,
         remat: bool = False, unroll: int | bool = 1, name: str | None = None) -> Learner:
    """MAML, first-order MAML, Meta-SGD and ANIL over a flax ``model`` with a head over ``ways``.

    Args:
      model: a flax module mapping ``[n, ...]`` inputs to logits ``[n, ways]``, e.g.
        ``Conv4(num_classes=ways, downsample='stride', bn_scale_init='uniform')``; for
        ``head_only`` its last layer must be an ``nn.Dense`` named ``head``.
      ways: classes per task.
      inner_steps: static number of inner SGD steps on the support set.
      inner_lr: inner rate (the initial value of the per-parameter rates for Meta-SGD).
      first_order: first-order MAML (no gradient through the inner gradients).
      learn_inner_lr: Meta-SGD: ``params = {'model': model_params, 'inner_lr': rates}`` with one
        rate per parameter entry (of the head only when ``head_only``).
      head_only: ANIL: adapt only ``params['head']``; the body runs once on the support set.
      remat: ``jax.checkpoint`` the inner step (memory for compute; same numbers).
      unroll: the inner loop's ``lax.scan`` unrolling (:func:`inner_loop`; same numbers).
      name: for logs; defaults to the method's usual name.

    Returns:
      A :class:`Learner`. ``params`` is ``model.init(key, x)['params']`` (wrapped with the rates for
      Meta-SGD); ``task_state`` is the adapted parameters (the adapted head for ANIL);
      ``predict`` gives logits ``[n_query, ways]``.
    """
    _check_steps("inner_steps", inner_steps)
    _check_unroll(unroll)
    model = inner_loop_model(model)
    if name is None:
        name = ("meta-sgd" if learn_inner_lr else "anil" if head_only else
                "fomaml" if first_order else "maml")
        if learn_inner_lr and head_only:
            name = "anil-meta-sgd"

    def split(params):
        if learn_inner_lr:
            return params["model"], params["inner_lr"]
        return params, inner_lr

    def init(key: jax.Array, example_x: jax.Array) -> Params:
        model_params = model.init(key, example_x)["params"]
        out = model.apply({"params": model_params}, example_x)
        if out.shape[-1] != ways:
            raise ValueError(f"the model gives {out.shape[-1]} outputs per example, not "
                             f"ways={ways}")
        if head_only and "head" not in model_params:
            raise ValueError(f"head_only needs a submodule named 'head'; the model has "
                             f"{sorted(model_params)}")
        if not learn_inner_lr:
            return model_params
        adapted = model_params["head"] if head_only else model_params
        rates = jax.tree.map(lambda p: jnp.full_like(p, inner_lr), adapted)
        return {"model": model_params, "inner_lr": rates}

    def adapt(params, support_x, support_y, key):
        del key
        model_params, lrs = split(params)
        if head_only:
            feats = _features(model, model_params, support_x)
            loss_fn = lambda h: cross_entropy(_dense(h, feats), support_y)
            start = model_params["head"]
        else:
            loss_fn = lambda p: cross_entropy(model.apply({"params": p}, support_x), support_y)
            start = model_params
        return inner_loop(loss_fn, start, lrs, steps=inner_steps, first_order=first_order,
                          remat=remat, unroll=unroll)

    def predict(params, adapted, query_x):
        model_params, _ = split(params)
        if head_only:
            return _dense(adapted, _features(model, model_params, query_x))
        return model.apply({"params": adapted}, query_x)

    return Learner(init=init, adapt=adapt, predict=predict, name=name)


def _plain(model: nn.Module, ways: int) -> tuple[Callable, Callable, Callable]:
    def init(key, example_x):
        params = model.init(key, example_x)["params"]
        out = model.apply({"params": params}, example_x)
        if out.shape[-1] != ways:
            raise ValueError(f"the model gives {out.shape[-1]} outputs per example, not "
                             f"ways={ways}")
        return params

    def support_loss(support_x, support_y):
        return lambda p: cross_entropy(model.apply({"params": p}, support_x), support_y)

    def predict(params, adapted, query_x):
        del params
        return model.apply({"params": adapted}, query_x)

    return init, support_loss, predict


def reptile(model: nn.Module, ways: int, *, inner_steps: int = 5, inner_lr: float = 0.001,
            name: str = "reptile") -> Learner:
    """Reptile (Nichol et al. 2018): the outer "gradient" of a task is ``params - adapted``.

    ``adapt`` runs ``inner_steps`` plain SGD steps on the support set (the paper uses Adam inner
    steps; SGD here). Convention: ``task_grad`` returns ``params - adapted`` with no division, so an
    outer ``optax.sgd(eps)`` gives Reptile's update ``params + eps * (adapted - params)`` averaged
    over the meta-batch; loss and accuracy are those of the query set after adaptation.
    """
    _check_steps("inner_steps", inner_steps)
    init, support_loss, predict = _plain(inner_loop_model(model), ways)

    def adapt(params, support_x, support_y, key):
        del key
        return inner_loop(support_loss(support_x, support_y), params, inner_lr, steps=inner_steps,
                          first_order=True)

    def task_grad(params, episode: Episode, key):
        adapted = jax.lax.stop_gradient(adapt(params, episode.support_x, episode.support_y, key))
        loss, acc = query_metrics(predict(params, adapted, episode.query_x), episode.query_y)
        return loss, acc, jax.tree.map(jnp.subtract, params, adapted)

    return Learner(init=init, adapt=adapt, predict=predict, task_grad=task_grad, name=name)


def _tree_vdot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def conjugate_gradient(matvec: Callable[[PyTree], PyTree], b: PyTree, *, steps: int) -> PyTree:
    """Solves ``matvec(x) = b`` for a symmetric positive definite operator by exactly ``steps``
    conjugate-gradient iterations from ``x = 0`` (a ``lax.scan``: a static count, no early exit).
    After ``d`` steps the solution is exact (up to rounding) for a ``d``-dimensional problem.
    """
    _check_steps("steps", steps)
    x = jax.tree.map(jnp.zeros_like, b)
    rs = _tree_vdot(b, b)
    tiny = jnp.finfo(rs.dtype).tiny

    def body(carry, _):
        x, r, p, rs = carry
        ap = matvec(p)
        pap = _tree_vdot(p, ap)
        alpha = jnp.where(pap > tiny, rs / jnp.where(pap > tiny, pap, 1), 0)
        x = jax.tree.map(lambda x, p: x + alpha * p, x, p)
        r = jax.tree.map(lambda r, ap: r - alpha * ap, r, ap)
        rs_new = _tree_vdot(r, r)
        beta = jnp.where(rs > tiny, rs_new / jnp.where(rs > tiny, rs, 1), 0)
        p = jax.tree.map(lambda r, p: r + beta * p, r, p)
        return (x, r, p, rs_new), None

    (x, _, _, _), _ = jax.lax.scan(body, (x, b, b, rs), None, length=steps)
    return x


def proximal_inner_loop(inner_loss: Callable[[PyTree], jax.Array], params: PyTree, *,
                        lam: float, steps: int, lr: float) -> PyTree:
    """``steps`` SGD steps from ``params`` on ``inner_loss(phi) + lam/2 ||phi - params||^2``;
    no gradient flows back to ``params`` (iMAML's meta-gradient is implicit)."""
    anchor = jax.lax.stop_gradient(params)

    def prox_loss(phi):
        sq = sum(jnp.sum(jnp.square(a - b)) for a, b in
                 zip(jax.tree.leaves(phi), jax.tree.leaves(anchor), strict=True))
        return inner_loss(phi) + 0.5 * lam * sq

    return jax.lax.stop_gradient(
        inner_loop(prox_loss, anchor, lr, steps=steps, first_order=True))


def implicit_meta_grad(inner_loss: Callable[[PyTree], jax.Array],
                       outer_loss: Callable[[PyTree], tuple[jax.Array, Any]], params: PyTree, *,
                       lam: float, inner_steps: int, inner_lr: float,
                       cg_steps: int) -> tuple[PyTree, jax.Array, Any, PyTree]:
    """iMAML's implicit meta-gradient.

    The adapted point approximates ``phi* = argmin_phi inner_loss(phi) + lam/2 ||phi - params||^2``
    by ``inner_steps`` SGD steps from ``params``; the meta-gradient is
    ``(I + H / lam)^{-1} grad outer_loss(phi)`` with ``H`` the Hessian of ``inner_loss`` at
    ``phi``, solved by ``cg_steps`` conjugate-gradient iterations on Hessian-vector products.

    Args:
      inner_loss: ``phi -> scalar`` (the support loss, without the proximal term).
      outer_loss: ``phi -> (scalar, aux)`` (the query loss and, e.g., the accuracy).

    Returns:
      ``(adapted, outer_value, aux, meta_grad)``.
    """
    adapted = proximal_inner_loop(inner_loss, params, lam=lam, steps=inner_steps, lr=inner_lr)
    (value, aux), g = jax.value_and_grad(outer_loss, has_aux=True)(adapted)
    grad_inner = jax.grad(inner_loss)

    def matvec(v):
        hv = jax.jvp(grad_inner, (adapted,), (v,))[1]
        return jax.tree.map(lambda v, hv: v + hv / lam, v, hv)

    return adapted, value, aux, conjugate_gradient(matvec, g, steps=cg_steps)


def imaml(model: nn.Module, ways: int, *, inner_steps: int = 16, inner_lr: float = 0.1,
          lam: float = 2.0, cg_steps: int = 5, name: str = "imaml") -> Learner:
    """iMAML (Rajeswaran et al. 2019): implicit meta-gradients through a proximal inner problem.

    ``adapt`` runs ``inner_steps`` SGD steps on ``support loss + lam/2 ||phi - params||^2`` from
    ``params``; ``task_grad`` returns the query loss and accuracy at the adapted point and
    :func:`implicit_meta_grad` (``cg_steps`` static CG iterations). The meta-gradient is exact when
    the inner problem is solved exactly and ``cg_steps`` reaches the number of parameters.
    """
    _check_steps("inner_steps", inner_steps)
    _check_steps("cg_steps", cg_steps)
    init, support_loss, predict = _plain(inner_loop_model(model), ways)

    def adapt(params, support_x, support_y, key):
        del key
        return proximal_inner_loop(support_loss(support_x, support_y), params, lam=lam,
                                   steps=inner_steps, lr=inner_lr)

    def task_grad(params, episode: Episode, key):
        del key
        outer = lambda phi: query_metrics(predict(params, phi, episode.query_x), episode.query_y)
        _, loss, acc, grads = implicit_meta_grad(
            support_loss(episode.support_x, episode.support_y), outer, params, lam=lam,
            inner_steps=inner_steps, inner_lr=inner_lr, cg_steps=cg_steps)
        return loss, acc, grads

    return Learner(init=init, adapt=adapt, predict=predict, task_grad=task_grad, name=name)
