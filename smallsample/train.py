"""Meta-training: one jitted step for every learner, and the host loop around it.

``make_train_step`` builds the device function. It samples a meta-batch of episodes on the device
(from the class-indexed data passed as an argument), applies the augmentation pipeline, computes the
mean meta-gradient over tasks (vmapped, in sequential chunks: one task at a time on CPU; split over
a mesh's devices, one all-reduce a step), applies the optax update, and repeats
``steps_per_call`` times under ``lax.scan`` so that Python dispatch is paid once per call. The
step's randomness is ``fold_in(run_key, step)``, so a resumed run continues exactly where the
interrupted one would have been.

``train`` is the host loop: run folder, resolved config, JSON-lines metrics, atomic checkpoints,
validation, progress bar, final test evaluation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import PartitionSpec as P

from smallsample.config import Config
from smallsample.data.files import atomic_write_bytes
from smallsample.episodes import Episode, sample_meta_batch, to_float
from smallsample.evaluate import Result, evaluate, make_eval_fn
from smallsample.learners.base import Learner, task_loss_and_grad
from smallsample.parallel import (
    AXIS,
    auto_devices,
    check_divisible,
    episode_values,
    replicated,
    shard_tasks,
    split_devices,
    task_mesh,
)


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
        if augment is None:
            return episodes
        ks, kq = jax.random.split(k_aug)

        def apply(k, x):  # x: [batch, n, H, W, C]; one key per image
            keys = jax.random.split(k, x.shape[0] * x.shape[1]).reshape(x.shape[:2])
            return jax.vmap(jax.vmap(augment))(keys, x)

        return episodes._replace(support_x=apply(ks, episodes.support_x),
                                 query_x=apply(kq, episodes.query_x))

    return sample


def default_chunks(batch: int, devices: int = 1, backend: str | None = None) -> int:
    """How many sequential chunks ``chunks=None`` splits a meta-batch of ``batch`` tasks into.

    On CPU: ``batch // devices``, i.e. one task per device at a time, the whole meta-batch a
    ``lax.scan`` over tasks. Measured on a 2-core CPU (``smallsample bench --chunks N``), one task
    at a time is both the fastest and the smallest: MAML Omniglot 5-way 1-shot 28.3 tasks/s at 32
    chunks against 19.5 with all 32 tasks vmapped (XLA temporaries 41 MB against 1,026 MB);
    ProtoNet 5-way 5-shot at 32 episodes per step 6.5 against 5.2 tasks/s (152 MB against
    4,558 MB). A vmapped meta-batch's activations do not fit in a CPU's caches, and per-task
    weights turn MAML's matrix products into batched ones. Elsewhere (GPU, TPU): 1, all tasks
    vmapped, which is what fills an accelerator.
    """
    backend = backend or jax.default_backend()
    if backend != "cpu" or batch % devices:
        return 1
    return max(1, batch // devices)


def meta_gradient(learner: Learner, params, episodes: Episode, key: jax.Array, *,
                  chunks: int | None = None, mesh=None):
    """Mean ``(loss, accuracy, grads)`` over a meta-batch ``episodes [B, ...]``.

    The meta-batch is processed as ``chunks`` sequential groups (a ``lax.scan``) of ``B / chunks``
    tasks each, the tasks of a group vmapped; ``chunks=1`` vmaps all ``B`` at once, ``chunks=B``
    runs one task at a time (no vmap). ``None`` or 0: :func:`default_chunks` for this backend.
    The result is the same up to float summation order.

    ``mesh``: a one-axis ``'tasks'`` mesh (:func:`smallsample.parallel.task_mesh`) over which the
    meta-batch is split (``jax.shard_map``): each device sums its ``B / devices`` tasks' results
    in ``chunks`` sequential groups of its own, with no communication, and one all-reduce of the
    flattened sums ends the step. (Left to XLA's partitioner, the sharded task axis put an
    all-reduce of the gradients into every group: 16 a step for a meta-batch of 32 on 2 devices,
    which over ``jax.distributed`` processes on one CPU cost 6x the step itself.) Task ``i``'s key
    is the same on any mesh, so the numbers equal one device's up to summation order.
    """
    batch = episodes.query_y.shape[0]
    keys = jax.random.split(key, batch)
    if mesh is None:
        chunks = chunks or default_chunks(batch)
        _check_chunks(batch, chunks)
        sums = _task_sums(learner, params, episodes, keys, chunks)
    else:
        check_divisible(batch, mesh)
        local = batch // mesh.size
        chunks = chunks or default_chunks(local)

        def device_sums(params, episodes, keys):
            flat, unflatten = ravel_pytree(_task_sums(learner, params, episodes, keys, chunks))
            return unflatten(jax.lax.psum(flat, AXIS))  # one all-reduce a step

        _check_chunks(local, chunks, f" (the {local} tasks of each of {mesh.size} devices)")
        sums = jax.shard_map(device_sums, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS)),
                             out_specs=P(), check_vma=False)(params, episodes, keys)
    loss, acc, grads = sums
    return loss / batch, acc / batch, jax.tree.map(lambda g: g / batch, grads)


def _check_chunks(batch: int, chunks, where: str = "") -> None:
    if not isinstance(chunks, int) or chunks < 1 or batch % chunks:
        raise ValueError(f"meta-batch {batch}{where} is not divisible into {chunks} chunks")


def _task_sums(learner: Learner, params, episodes: Episode, keys: jax.Array, chunks: int):
    """Summed ``(loss, accuracy, grads)`` of the tasks ``episodes [B, ...]`` with ``keys [B]``,
    in ``chunks`` sequential groups (checked by the caller, :func:`_check_chunks`); group ``g``
    holds tasks ``g, g + chunks, g + 2 chunks``...
    """
    batch = episodes.query_y.shape[0]
    per_task = jax.vmap(lambda e, k: task_loss_and_grad(learner, params, e, k))
    if chunks == 1:
        return jax.tree.map(lambda x: x.sum(0), per_task(episodes, keys))
    group = batch // chunks

    def split(x):  # [B, ...] -> [chunks, group, ...]; group g: tasks g, g + chunks, ...
        return jnp.swapaxes(x.reshape((group, chunks) + x.shape[1:]), 0, 1)

    def body(carry, chunk):
        eps, ks = chunk
        if group == 1:  # one task: no vmap (plain, unbatched matrix products)
            loss, acc, grads = task_loss_and_grad(
                learner, params, jax.tree.map(lambda x: x[0], eps), ks[0])
            return jax.tree.map(jnp.add, carry, (loss, acc, grads)), None
        loss, acc, grads = per_task(eps, ks)
        return jax.tree.map(lambda c, g: c + g.sum(0), carry, (loss, acc, grads)), None

    zeros = (jnp.zeros(()), jnp.zeros(()), jax.tree.map(jnp.zeros_like, params))
    sums, _ = jax.lax.scan(body, zeros, (jax.tree.map(split, episodes), split(keys)))
    return sums


def make_train_step(learner: Learner, optimizer: optax.GradientTransformation, sample, *,
                    chunks: int | None = None, steps_per_call: int = 1, mesh=None,
                    batch: int = 1):
    """``step(state, data) -> (state, metrics)``: ``steps_per_call`` meta-steps in one call.

    ``metrics`` holds ``loss``, ``accuracy`` and ``grad_norm`` arrays of shape
    ``[steps_per_call]``. ``chunks``: see :func:`meta_gradient` (``None`` or 0: the backend's
    default, one task per device at a time on CPU). Not jitted here: the caller decides
    (``jax.jit(step, donate_argnums=0)``).
    """
    check_divisible(batch, mesh)

    def loss_and_grad(params, key, data):
        k_sample, k_adapt = jax.random.split(key)
        episodes = shard_tasks(sample(k_sample, data), mesh)
        return meta_gradient(learner, params, episodes, k_adapt, chunks=chunks, mesh=mesh)

    return _repeated_steps(loss_and_grad, optimizer, steps_per_call)


def _repeated_steps(loss_and_grad, optimizer, steps_per_call: int):
    """``step(state, data)``: ``steps_per_call`` optimizer steps under ``lax.scan``, each with the
    key ``fold_in(run_key, step)`` and ``loss_and_grad(params, key, data) -> (loss, acc, grads)``.
    """

    def one_step(state: TrainState, data):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
        loss, acc, grads = loss_and_grad(state.params, key, data)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return state._replace(step=state.step + 1, params=params, opt_state=opt_state), \
            {"loss": loss, "accuracy": acc, "grad_norm": optax.tree.norm(grads)}

    def step(state: TrainState, data):
        return jax.lax.scan(lambda s, _: one_step(s, data), state, None, length=steps_per_call)

    return step


def train_devices(config: Config, image_shape: tuple[int, ...], backend: str | None = None,
                  available: int | None = None) -> int:
    """How many of this process's devices :func:`train` splits the meta-batch over.

    ``config.devices`` N: the most devices, at most N, that divide the meta-batch
    (:func:`smallsample.parallel.split_devices`). 0 (auto):
    :func:`smallsample.parallel.auto_devices`, on CPU out of every CPU device (the
    ``smallsample`` command makes one per core, :func:`smallsample.cli.cpu_devices_per_core`).
    ``image_shape``: one example's ``(H, W, C)``.
    """
    backend = backend or jax.default_backend()
    available = jax.local_device_count() if available is None else available
    if config.devices < 0:
        raise ValueError(f"devices={config.devices} must be >= 0 (0: auto)")
    if config.devices > available:
        raise ValueError(f"devices={config.devices} but this process sees only {available} "
                         f"{backend} device(s)")
    if config.devices:
        return split_devices(config.meta_batch, config.devices)
    values = episode_values(config.effective_train_ways, config.effective_train_shots,
                            config.train_queries, image_shape)
    return auto_devices(config.meta_batch, values, available, backend)


def _one_device(tree):
    """``tree`` on the first device only: evaluation of replicated parameters would otherwise run
    on every device of their mesh, the same work on each."""
    return jax.device_put(tree, jax.local_devices()[0])


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


def make_optimizer(config: Config) -> optax.GradientTransformation:
    if config.lr_decay_every:
        lr = optax.exponential_decay(config.lr, config.lr_decay_every, 0.5, staircase=True)
    else:
        lr = config.lr
    return optax.adam(lr)


def init_state(learner: Learner, optimizer, example_x: jax.Array, seed: int) -> TrainState:
    """The starting ``TrainState``: ``learner.init`` and ``optimizer.init`` from ``seed``.

    Built as one jitted computation: run op by op, the initialisers compile and cache one small
    executable per operation, which kept about 210 MB resident for a Conv-4 (measured with
    :mod:`smallsample.procmem`), more than the training step itself needs on CPU.
    """

    def make(key, x):
        k_init, k_run = jax.random.split(key)
        params = learner.init(k_init, x)
        return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params),
                          jax.random.key_data(k_run))

    return jax.jit(make)(jax.random.key(seed), example_x)


# ---------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, state: TrainState) -> None:
    """Serialises ``state`` to ``path`` atomically (an interrupted write keeps the old file)."""
    atomic_write_bytes(Path(path), flax.serialization.to_bytes(jax.device_get(state)))


def load_params(path: Path):
    """Only the parameters of a checkpoint, as nested dicts of arrays (no template needed)."""
    path = Path(path)
    try:
        raw = flax.serialization.msgpack_restore(path.read_bytes())
        return jax.tree.map(jnp.asarray, raw["params"])
    except Exception as e:
        raise ValueError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e})") from e


def load_checkpoint(path: Path, template: TrainState) -> TrainState:
    """Restores a state saved by :func:`save_checkpoint` into the structure of ``template``."""
    path = Path(path)
    try:
        return flax.serialization.from_bytes(template, path.read_bytes())
    except Exception as e:
        raise ValueError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); it is "
                         f"corrupt or from another configuration") from e


# ---------------------------------------------------------------- the host loop
class RunResult(NamedTuple):
    test: Result | None
    val: Result | None
    steps: int
    seconds: float
    run_dir: Path


def _write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _truncate_metrics(path: Path, step: int) -> None:
    """Drops metric lines past ``step`` (written after the checkpoint a run resumes from)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    atomic_write_bytes(path, ("\n".join(keep) + "\n" if keep else "").encode())


def train(config: Config, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
          data=None, log: Callable[[str], None] = print) -> RunResult:
    """Meta-trains ``config`` in ``run_dir`` and evaluates on the test classes.

    Writes ``config.json``, ``metrics.jsonl`` (one JSON object per logged step and per
    validation), ``checkpoint.msgpack`` (latest), ``best.msgpack`` (best validation accuracy) and
    ``results.json``. With ``resume=True`` the run continues from ``checkpoint.msgpack`` with the
    saved config.
    """
    from smallsample.registry import (  # noqa: PLC0415 (avoid a cycle)
        build_learner,
        build_pretrainer,
        is_pretrained,
        load_data,
    )

    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if resume:
        if not config_path.exists():
            raise FileNotFoundError(f"cannot resume: {config_path} does not exist")
        saved = Config.from_json(config_path.read_text())
        if saved.replace(steps=config.steps) != config.replace(steps=config.steps):
            log(f"resuming with the saved config of {run_dir} (steps={config.steps})")
        config = saved.replace(steps=config.steps)
    elif (run_dir / "checkpoint.msgpack").exists():
        raise FileExistsError(f"{run_dir} already holds a run; use --resume or another folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(config_path, json.loads(config.to_json()))

    data = data if data is not None else load_data(config)
    train_ways = config.effective_train_ways
    train_x = jnp.asarray(data["train"])
    if is_pretrained(config):
        learner = build_pretrainer(config, num_classes=train_x.shape[0])
    else:
        learner = build_learner(config, ways=train_ways)
    optimizer = make_optimizer(config)
    augment = None
    if config.augment:
        from smallsample.augment import parse_pipeline  # noqa: PLC0415
        augment = parse_pipeline(config.augment)
    sample = make_sampler(meta_batch=config.meta_batch, ways=train_ways,
                          shots=config.effective_train_shots, queries=config.train_queries,
                          rotate=config.rotate, per_class=config.per_class or None,
                          augment=augment)
    spc = max(1, min(config.steps_per_call, config.log_every))
    for every, name in ((config.steps, "steps"), (config.log_every, "log_every"),
                        (config.eval_every, "eval_every"),
                        (config.checkpoint_every, "checkpoint_every")):
        if every % spc:
            raise ValueError(f"{name}={every} must be a multiple of steps_per_call={spc}")
    mesh = None
    if is_pretrained(config):
        step = make_pretrain_step(learner, optimizer, batch=config.pretrain_batch,
                                  steps_per_call=spc, per_class=config.per_class or None,
                                  augment=augment)
    else:
        devices = train_devices(config, train_x.shape[2:])
        if devices > 1:
            mesh = task_mesh(jax.local_devices()[:devices])
            log(f"meta-batch of {config.meta_batch} split over {devices} "
                f"{jax.default_backend().upper()} devices")
        step = make_train_step(learner, optimizer, sample, chunks=config.chunks,
                               steps_per_call=spc, batch=config.meta_batch, mesh=mesh)
    step_fn = jax.jit(step, donate_argnums=0)
    example = jnp.zeros((2,) + train_x.shape[2:], jnp.float32)
    state = init_state(learner, optimizer, example, config.seed)
    metrics_path = run_dir / "metrics.jsonl"
    best_val = -1.0
    if resume:
        state = load_checkpoint(run_dir / "checkpoint.msgpack", state)
        _truncate_metrics(metrics_path, int(state.step))
        for line in metrics_path.read_text().splitlines() if metrics_path.exists() else []:
            rec = json.loads(line)
            if "val_accuracy" in rec:
                best_val = max(best_val, rec["val_accuracy"])
        log(f"resumed {run_dir} at step {int(state.step)}")
    if mesh is not None:  # replicated on every device of the mesh; evaluation runs on the first
        state, train_x = jax.device_put((state, train_x), replicated(mesh))

    eval_learner = build_learner(config, ways=config.ways, test=True)
    eval_fn = make_eval_fn(eval_learner)

    def validate(params) -> Result | None:
        if not config.val_part or "val" not in data or not config.val_episodes:
            return None
        return evaluate(eval_learner, _one_device(params), jnp.asarray(data["val"]),
                        ways=config.ways,
                        shots=config.shots, queries=config.queries,
                        num_episodes=config.val_episodes, seed=config.eval_seed, eval_fn=eval_fn)

    start_step = int(state.step)
    tasks_per_step = config.pretrain_batch if is_pretrained(config) else config.meta_batch
    bar = None
    if progress:
        from tqdm.auto import tqdm  # noqa: PLC0415
        bar = tqdm(total=config.steps, initial=start_step, unit="step", dynamic_ncols=True)
    t0 = time.perf_counter()
    t_last, step_last = t0, start_step
    val_result = None
    with open(metrics_path, "a") as metrics_file:
        pending = None  # metrics of the previous call, fetched after the next call is dispatched
        step = start_step  # tracked on the host, so dispatch does not wait for the device
        while step < config.steps:
            state, m = step_fn(state, train_x)
            if pending is not None:
                _log_metrics(pending, metrics_file, bar, config)
            step += spc
            now = time.perf_counter()
            pending = (step, m, tasks_per_step * (step - step_last) / max(now - t_last, 1e-9))
            t_last, step_last = now, step
            if bar is not None:
                bar.update(spc)
            if step % config.eval_every == 0 or step >= config.steps:
                _log_metrics(pending, metrics_file, bar, config)
                pending = None
                val_result = validate(state.params)
                if val_result is not None:
                    rec = {"step": step, "val_accuracy": val_result.mean,
                           "val_ci95": val_result.ci95}
                    metrics_file.write(json.dumps(rec) + "\n")
                    if val_result.mean > best_val:
                        best_val = val_result.mean
                        save_checkpoint(run_dir / "best.msgpack", state)
                    if bar is not None:
                        bar.set_postfix_str(f"val {100 * val_result.mean:.1f}%", refresh=False)
            if step % config.checkpoint_every == 0 or step >= config.steps:
                metrics_file.flush()
                save_checkpoint(run_dir / "checkpoint.msgpack", state)
        if pending is not None:
            _log_metrics(pending, metrics_file, bar, config)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0

    final = state
    if (run_dir / "best.msgpack").exists():
        final = load_checkpoint(run_dir / "best.msgpack", state)
    test = None
    if "test" in data and config.test_episodes:
        test = evaluate(eval_learner, _one_device(final.params), jnp.asarray(data["test"]),
                        ways=config.ways,
                        shots=config.shots, queries=config.queries,
                        num_episodes=config.test_episodes, seed=config.eval_seed,
                        eval_fn=eval_fn)
        log(f"test {config.ways}-way {config.shots}-shot: {test}")
    results = {
        "steps": int(state.step), "train_seconds": seconds,
        "best_val_accuracy": best_val if best_val >= 0 else None,
        "used_checkpoint": "best" if final is not state else "last",
        "test_accuracy": None if test is None else test.mean,
        "test_ci95": None if test is None else test.ci95,
        "test_episodes": 0 if test is None else len(test.accuracies),
        "device": jax.devices()[0].device_kind, "jax": jax.__version__,
        "devices": 1 if mesh is None else int(mesh.size),
    }
    _write_json(run_dir / "results.json", results)
    if test is not None:
        np.save(run_dir / "test_accuracies.npy", test.accuracies)
    return RunResult(test, val_result, int(state.step), seconds, run_dir)


def _log_metrics(pending, metrics_file, bar, config: Config) -> None:
    step, m, tasks_per_s = pending
    loss = np.asarray(m["loss"])
    acc = np.asarray(m["accuracy"])
    grad_norm = np.asarray(m["grad_norm"])
    if not (np.all(np.isfinite(loss)) and np.all(np.isfinite(grad_norm))):
        raise FloatingPointError(
            f"training became non-finite in the {len(loss)} steps up to step {step}: loss "
            f"{loss.tolist()}, gradient norm {grad_norm.tolist()}; the last good checkpoint is "
            f"kept (try a lower lr)")
    if step % config.log_every == 0 or step >= config.steps:
        rec = {"step": step, "loss": float(loss.mean()), "accuracy": float(acc.mean()),
               "grad_norm": float(grad_norm.mean()), "tasks_per_s": tasks_per_s}
        metrics_file.write(json.dumps(rec) + "\n")
    if bar is not None:
        bar.set_postfix(loss=f"{loss.mean():.3f}", acc=f"{acc.mean():.3f}",
                        tasks_s=f"{tasks_per_s:.0f}", refresh=False)
