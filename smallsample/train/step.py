"""The pure meta-training step, one for every learner (the host loop is
:mod:`smallsample.train.loop`).

``make_train_step`` builds the device function. It samples a meta-batch of episodes on the device
(from the class-indexed data passed as an argument), applies the augmentation pipeline, computes the
mean meta-gradient over tasks (vmapped, in sequential chunks: one task at a time on CPU; split over
a mesh's devices, one all-reduce a step), applies the optax update, and repeats
``steps_per_call`` times under ``lax.scan`` so that Python dispatch is paid once per call. The
step's randomness is ``fold_in(run_key, step)``, so a resumed run continues exactly where the
interrupted one would have been. Nothing here is jitted: the caller decides
(``jax.jit(step, donate_argnums=0)``).

Distillation (``teacher=``, :class:`Teacher`): a trained learner adapts and predicts on the same
episode as the student, after the augmentation (one view, fed to both: "consistent teaching"),
and the student's query loss becomes ``(1 - alpha) CE + alpha KD``
(:func:`distill_task_loss_and_grad`). The teacher's parameters are an argument of the step
(``step(state, data, teacher_params)``), never differentiated and not in the optimizer state.
Without a teacher the step is the plain one, op for op.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import PartitionSpec as P

from smallsample.distill.logits import dkd_loss, kd_loss
from smallsample.episodes import Episode, augment_episodes, sample_meta_batch, to_float
from smallsample.learners.base import Learner, task_loss_and_grad
from smallsample.parallel import AXIS, check_divisible, shard_tasks


class TrainState(NamedTuple):
    """Everything a run needs to continue: step count, parameters, optimiser state, run key."""

    step: jax.Array
    params: Any
    opt_state: Any
    key: jax.Array  # raw uint32 key data, so the state serialises as plain arrays


def make_sampler(*, meta_batch: int, ways: int, shots: int, queries: int, rotate: bool = False,
                 per_class: int | None = None,
                 augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None):
    """``sample(key, data) -> Episode`` with a leading ``[meta_batch]`` axis, augmentation applied
    per image (``augment(key, image [H, W, C]) -> image``) to support and query sets."""

    def sample(key, data):
        k_ep, k_aug = jax.random.split(key)
        episodes = sample_meta_batch(k_ep, data, batch=meta_batch, ways=ways, shots=shots,
                                     queries=queries, rotate=rotate, per_class=per_class)
        return episodes if augment is None else augment_episodes(k_aug, episodes, augment)

    return sample


def default_chunks(batch: int, devices: int = 1, backend: str | None = None) -> int:
    """How many sequential chunks ``chunks=None`` splits a meta-batch of ``batch`` tasks into.

    On CPU: ``batch // devices``, i.e. one task per device at a time, the whole meta-batch a
    ``lax.scan`` over tasks: a vmapped meta-batch's activations do not fit in a CPU's caches, and
    per-task weights turn MAML's matrix products into batched ones, so one task at a time is both
    the fastest and the smallest there. Elsewhere (GPU, TPU): 1, all tasks vmapped, which is what
    fills an accelerator. Evidence: docs/performance.md, "one task at a time on cpu".
    """
    backend = backend or jax.default_backend()
    if backend != "cpu" or batch % devices:
        return 1
    return max(1, batch // devices)


def meta_gradient(learner: Learner, params, episodes: Episode, key: jax.Array, *,
                  chunks: int | None = None, mesh=None, teacher: Teacher | None = None,
                  teacher_params=None):
    """Mean ``(loss, accuracy, grads)`` over a meta-batch ``episodes [B, ...]``.

    The meta-batch is processed as ``chunks`` sequential groups (a ``lax.scan``) of ``B / chunks``
    tasks each, the tasks of a group vmapped; ``chunks=1`` vmaps all ``B`` at once, ``chunks=B``
    runs one task at a time (no vmap). ``None`` or 0: :func:`default_chunks` for this backend.
    The result is the same up to float summation order.

    ``mesh``: a one-axis ``'tasks'`` mesh (:func:`smallsample.parallel.task_mesh`) over which the
    meta-batch is split (``jax.shard_map``): each device sums its ``B / devices`` tasks' results
    in ``chunks`` sequential groups of its own, with no communication, and one all-reduce of the
    flattened sums ends the step (left to XLA's partitioner, the sharded task axis put an
    all-reduce into every group; docs/performance.md, "one cpu device per core"). Task ``i``'s
    key is the same on any mesh, so the numbers equal one device's up to summation order.

    ``teacher`` with ``teacher_params``: each task's loss is
    :func:`distill_task_loss_and_grad` (the teacher's parameters replicated on the mesh).
    """
    batch = episodes.query_y.shape[0]
    keys = jax.random.split(key, batch)

    def task_fn(tparams):
        if teacher is None:
            return lambda p, e, k: task_loss_and_grad(learner, p, e, k)
        return lambda p, e, k: distill_task_loss_and_grad(learner, teacher, p, tparams, e, k)

    if mesh is None:
        chunks = chunks or default_chunks(batch)
        _check_chunks(batch, chunks)
        sums = _task_sums(task_fn(teacher_params), params, episodes, keys, chunks)
    else:
        check_divisible(batch, mesh)
        local = batch // mesh.size
        chunks = chunks or default_chunks(local)

        def device_sums(params, episodes, keys, *tparams):
            task = task_fn(tparams[0] if tparams else None)
            flat, unflatten = ravel_pytree(_task_sums(task, params, episodes, keys, chunks))
            return unflatten(jax.lax.psum(flat, AXIS))  # one all-reduce a step

        _check_chunks(local, chunks, f" (the {local} tasks of each of {mesh.size} devices)")
        extra = () if teacher is None else (teacher_params,)
        sums = jax.shard_map(device_sums, mesh=mesh,
                             in_specs=(P(), P(AXIS), P(AXIS)) + (P(),) * len(extra),
                             out_specs=P(), check_vma=False)(params, episodes, keys, *extra)
    loss, acc, grads = sums
    return loss / batch, acc / batch, jax.tree.map(lambda g: g / batch, grads)


class Teacher(NamedTuple):
    """How a student is distilled from a trained learner, whose parameters are passed to the
    step apart (``step(state, data, teacher_params)``).

    Attributes:
      learner: the teacher's learner, built for the ways of the student's training episodes
        (its ``predict`` gives ``[num_query, ways]`` logits comparable with the student's).
      weight: ``alpha`` in ``(1 - alpha) CE + alpha KD``, in ``[0, 1]`` (may be traced).
      temperature: ``T > 0`` of the KD term (may be traced).
      loss: ``'kd'``: ``T^2 KL(softmax(t / T) || softmax(s / T))``
        (:func:`~smallsample.distill.kd_loss`, Hinton et al. 2015); ``'dkd'``: decoupled KD,
        ``TCKD + 8 NCKD`` at ``T`` (:func:`~smallsample.distill.dkd_loss`, Zhao et al. 2022).
    """

    learner: Learner
    weight: float | jax.Array = 0.5
    temperature: float | jax.Array = 4.0
    loss: str = "kd"


#: ``name -> (student_logits, teacher_logits, labels, temperature) -> [num_query]``
DISTILL_LOSSES: dict[str, Callable[..., jax.Array]] = {
    "kd": lambda s, t, y, temperature: kd_loss(s, t, temperature=temperature),
    "dkd": lambda s, t, y, temperature: dkd_loss(s, t, y, temperature=temperature),
}


def teacher_logits(teacher: Teacher, teacher_params, episode: Episode,
                   key: jax.Array) -> jax.Array:
    """The teacher's query logits ``[num_query, ways]`` on ``episode`` (its ``adapt`` on the
    episode's support set, ``predict`` on its queries), through ``stop_gradient``. The teacher's
    key is ``fold_in(key, 1)``, the student's is ``key``."""
    k = jax.random.fold_in(key, 1)
    state = teacher.learner.adapt(teacher_params, episode.support_x, episode.support_y, k)
    return jax.lax.stop_gradient(teacher.learner.predict(teacher_params, state, episode.query_x))


def distill_task_loss_and_grad(learner: Learner, teacher: Teacher, params, teacher_params,
                               episode: Episode, key: jax.Array):
    """``(loss, accuracy, grads)`` of one task of a student distilled from ``teacher``.

    ``loss = (1 - alpha) CE(s, y) + alpha mean_q KD(s_q, t_q)``, with ``s`` and ``t`` the
    student's and the teacher's query logits ``[num_query, ways]`` on the same episode: the same
    support and query images, augmented once by the sampler, so both see one view (consistent
    teaching, Beyer et al. 2022). With ``loss='kd'`` it is
    :func:`~smallsample.distill.kd_ce_loss` averaged over the queries.

    The cross-entropy part, its gradient and the accuracy are the plain step's
    (:func:`~smallsample.learners.base.task_loss_and_grad`: the learner's own gradient, e.g.
    prototypical networks in one pass), so ``alpha = 0`` gives exactly the plain step's
    gradient. The KD part is differentiated apart through the student's ``adapt`` and
    ``predict`` and added: one more forward and backward pass of the student, small beside the
    teacher's forward pass when the student is the smaller network. The teacher's logits pass
    through ``stop_gradient``: no gradient reaches ``teacher_params``, which are not
    differentiated at all.

    Learners whose outer gradient is not the gradient of their query loss (Reptile, iMAML) are
    not students here (:func:`smallsample.registry.validate` refuses them).
    """
    ce, acc, ce_grads = task_loss_and_grad(learner, params, episode, key)
    t = teacher_logits(teacher, teacher_params, episode, key)
    distill = DISTILL_LOSSES[teacher.loss]

    def kd_part(p):
        state = learner.adapt(p, episode.support_x, episode.support_y, key)
        s = learner.predict(p, state, episode.query_x)
        return distill(s, t, episode.query_y, teacher.temperature).mean()

    kd, kd_grads = jax.value_and_grad(kd_part)(params)
    a = teacher.weight
    grads = jax.tree.map(lambda g, h: (1 - a) * g + a * h, ce_grads, kd_grads)
    return (1 - a) * ce + a * kd, acc, grads


def _check_chunks(batch: int, chunks, where: str = "") -> None:
    if not isinstance(chunks, int) or chunks < 1 or batch % chunks:
        raise ValueError(f"meta-batch {batch}{where} is not divisible into {chunks} chunks")


def _task_sums(task, params, episodes: Episode, keys: jax.Array, chunks: int):
    """Summed ``(loss, accuracy, grads)`` of the tasks ``episodes [B, ...]`` with ``keys [B]``,
    ``task(params, episode, key)`` each, in ``chunks`` sequential groups (checked by the caller,
    :func:`_check_chunks`); group ``g`` holds tasks ``g, g + chunks, g + 2 chunks``...
    """
    batch = episodes.query_y.shape[0]
    per_task = jax.vmap(lambda e, k: task(params, e, k))
    if chunks == 1:
        return jax.tree.map(lambda x: x.sum(0), per_task(episodes, keys))
    group = batch // chunks

    def split(x):  # [B, ...] -> [chunks, group, ...]; group g: tasks g, g + chunks, ...
        return jnp.swapaxes(x.reshape((group, chunks) + x.shape[1:]), 0, 1)

    def body(carry, chunk):
        eps, ks = chunk
        if group == 1:  # one task: no vmap (plain, unbatched matrix products)
            loss, acc, grads = task(params, jax.tree.map(lambda x: x[0], eps), ks[0])
            return jax.tree.map(jnp.add, carry, (loss, acc, grads)), None
        loss, acc, grads = per_task(eps, ks)
        return jax.tree.map(lambda c, g: c + g.sum(0), carry, (loss, acc, grads)), None

    zeros = (jnp.zeros(()), jnp.zeros(()), jax.tree.map(jnp.zeros_like, params))
    sums, _ = jax.lax.scan(body, zeros, (jax.tree.map(split, episodes), split(keys)))
    return sums


def make_train_step(learner: Learner, optimizer: optax.GradientTransformation, sample, *,
                    chunks: int | None = None, steps_per_call: int = 1, mesh=None,
                    batch: int = 1, teacher: Teacher | None = None, streamed: bool = False):
    """``step(state, data) -> (state, metrics)``: ``steps_per_call`` meta-steps in one call.

    ``metrics`` holds ``loss``, ``accuracy`` and ``grad_norm`` arrays of shape
    ``[steps_per_call]``. ``chunks``: see :func:`meta_gradient` (``None`` or 0: the backend's
    default, one task per device at a time on CPU). Not jitted here: the caller decides
    (``jax.jit(step, donate_argnums=0)``).

    ``teacher``: the student is distilled from it (:func:`distill_task_loss_and_grad`) and the
    step is ``step(state, data, teacher_params)``: the teacher's parameters are an argument,
    not a constant of the compiled program, and not part of ``state``.

    ``streamed``: ``data`` is not the class-indexed set but one call's episodes gathered on the
    host (:func:`smallsample.data.stream.stream_batches`, leading axis ``[steps_per_call]``),
    step ``i`` of the call gets ``data[i]``, and ``sample`` is
    :func:`smallsample.data.stream.make_stream_sampler`'s: the same episodes as the device
    sampler's for the same keys, without the whole set on the device.
    """
    check_divisible(batch, mesh)

    def loss_and_grad(params, key, data, *teacher_params):
        k_sample, k_adapt = jax.random.split(key)
        episodes = shard_tasks(sample(k_sample, data), mesh)
        return meta_gradient(learner, params, episodes, k_adapt, chunks=chunks, mesh=mesh,
                             teacher=teacher,
                             teacher_params=teacher_params[0] if teacher_params else None)

    return _repeated_steps(loss_and_grad, optimizer, steps_per_call, streamed=streamed)


def _repeated_steps(loss_and_grad, optimizer, steps_per_call: int, streamed: bool = False):
    """``step(state, data, *extra)``: ``steps_per_call`` optimizer steps under ``lax.scan``, each
    with the key ``fold_in(run_key, step)`` and
    ``loss_and_grad(params, key, data, *extra) -> (loss, acc, grads)`` (``extra``: arguments
    that are not trained, e.g. a teacher's parameters).
    """

    def one_step(state: TrainState, data, *extra):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
        loss, acc, grads = loss_and_grad(state.params, key, data, *extra)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return state._replace(step=state.step + 1, params=params, opt_state=opt_state), \
            {"loss": loss, "accuracy": acc, "grad_norm": optax.tree.norm(grads)}

    def step(state: TrainState, data, *extra):
        if streamed:  # data: [steps_per_call, ...], one step's episodes per iteration
            return jax.lax.scan(lambda s, d: one_step(s, d, *extra), state, data)
        return jax.lax.scan(lambda s, _: one_step(s, data, *extra), state, None,
                            length=steps_per_call)

    return step


def make_pretrain_step(pretrainer, optimizer: optax.GradientTransformation, *, batch: int,
                       steps_per_call: int = 1, per_class: int | None = None, augment=None):
    """``step(state, data) -> (state, metrics)`` of supervised pre-training over all classes.

    Each step draws ``batch`` (class, example) pairs uniformly from the class-indexed ``data`` and
    takes one optimizer step on ``pretrainer.loss`` (fine-tuning baselines).
    """

    def loss_and_grad(params, key, data):
        k_c, k_e, k_aug = jax.random.split(key, 3)
        n = data.shape[1] if per_class is None else per_class
        classes = jax.random.randint(k_c, (batch,), 0, data.shape[0])
        examples = jax.random.randint(k_e, (batch,), 0, n)
        x = to_float(data[classes, examples])
        if augment is not None:
            x = jax.vmap(augment)(jax.random.split(k_aug, batch), x)
        (loss, acc), grads = jax.value_and_grad(pretrainer.loss, has_aux=True)(params, x, classes)
        return loss, acc, grads

    return _repeated_steps(loss_and_grad, optimizer, steps_per_call)


def init_state(learner: Learner, optimizer, example_x: jax.Array, seed: int) -> TrainState:
    """The starting ``TrainState``: ``learner.init`` and ``optimizer.init`` from ``seed``.

    Built as one jitted computation: run op by op, the initialisers would compile and keep one
    small executable per operation (docs/performance.md, "memory").
    """

    def make(key, x):
        k_init, k_run = jax.random.split(key)
        params = learner.init(k_init, x)
        return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params),
                          jax.random.key_data(k_run))

    return jax.jit(make)(jax.random.key(seed), example_x)


