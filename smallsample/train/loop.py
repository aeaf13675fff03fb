"""The host loop: :func:`train_and_evaluate` meta-trains a config in a run folder and evaluates it.

A run folder holds ``config.json`` (the resolved config), ``metrics.jsonl`` (one JSON object per
logged step and per validation), ``checkpoint.msgpack`` (latest), ``best.msgpack`` (best
validation accuracy), ``results.json`` and ``test_accuracies.npy``; a student distilled from a
teacher run (``config.teacher``) also ``teacher.json``, the sha256 of the teacher's checkpoint it
is trained with: the checkpoints hold the student alone, and a resumed run finds its teacher again
through ``config.teacher``, refusing it if its checkpoint has changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from smallsample.config import Config, resume_config
from smallsample.data.files import atomic_write_bytes
from smallsample.data.stream import make_stream_sampler, should_stream, stream_batches
from smallsample.evaluate import Result, evaluate, make_eval_fn
from smallsample.learners.base import Learner
from smallsample.parallel import (
    AXIS,
    auto_devices,
    episode_values,
    replicated,
    split_devices,
    task_mesh,
)
from smallsample.registry import (
    build_learner,
    build_optimizer,
    build_pretrainer,
    is_pretrained,
    load_data,
    teacher_config,
    validate,
)
from smallsample.train.checkpoint import (
    BEST,
    CheckpointError,
    has_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    read_checkpoint,
    run_checkpoint,
    run_lock,
    save_checkpoint,
    save_run_checkpoint,
)
from smallsample.train.step import (
    Teacher,
    TrainState,
    init_state,
    make_pretrain_step,
    make_sampler,
    make_train_step,
)


class RunResult(NamedTuple):
    test: Result | None
    val: Result | None
    steps: int
    seconds: float
    run_dir: Path


def train_devices(config: Config, image_shape: tuple[int, ...], backend: str | None = None,
                  available: int | None = None) -> int:
    """How many of this process's devices the meta-batch is split over.

    ``config.devices`` N: the most devices, at most N, that divide the meta-batch
    (:func:`smallsample.parallel.split_devices`). 0 (auto):
    :func:`smallsample.parallel.auto_devices`, on CPU out of every CPU device (the
    ``smallsample`` command makes one per core, :mod:`smallsample.runtime`).
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


def _write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def open_run(config: Config, run_dir: Path, *, resume: bool, log=print) -> Config:
    """Checks ``config`` and the run folder before anything is written, and returns the config
    the run goes on with (on resume: the saved one with the settings that may change,
    :func:`smallsample.config.resume_config`). A new run's ``config.json`` is written here."""
    config_path = run_dir / "config.json"
    if resume:
        if not config_path.exists():
            raise FileNotFoundError(f"cannot resume: {config_path} does not exist")
        saved = Config.from_json(config_path.read_text())
        resumed = resume_config(saved, config)
        if resumed != saved:
            log(f"resuming {run_dir} with " + ", ".join(
                f"{k}={getattr(resumed, k)}" for k in sorted(json.loads(resumed.to_json()))
                if getattr(resumed, k) != getattr(saved, k)))
        # checked here (a new run's config was checked before the folder was locked); written
        # once its checkpoint has loaded
        return validate(resumed)
    if has_checkpoint(run_dir):
        raise FileExistsError(f"{run_dir} already holds a run; use --resume or another folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(config_path, json.loads(config.to_json()))
    return config


TEACHER_RECORD = "teacher.json"


class TeacherRun(NamedTuple):
    """A teacher loaded for distillation (:func:`load_teacher`)."""

    config: Config          # the teacher run's config
    teacher: Teacher        # its learner for the student's training episodes, and the loss
    params: Any             # its parameters (best.msgpack, else the latest checkpoint)
    checkpoint: Path        # the file they come from
    sha256: str             # of that checkpoint's payload

    def record(self, config: Config) -> dict:
        """What ``teacher.json`` says: where the teacher is, its checkpoint and model."""
        return {"teacher": config.teacher, "checkpoint": str(self.checkpoint),
                "sha256": self.sha256, "learner": self.config.learner,
                "backbone": self.config.backbone, "width": self.config.width,
                "parameters": int(sum(np.size(x) for x in jax.tree.leaves(self.params)))}


def load_teacher(config: Config, image_shape: tuple[int, ...]) -> TeacherRun:
    """The teacher of ``config`` (``config.teacher``, a run folder, checked by
    :func:`smallsample.registry.teacher_config`) with its learner built for the student's
    training episodes (``effective_train_ways``; the evaluation variant, e.g. MAML's
    ``test_inner_steps``) and its parameters from ``best.msgpack`` (else the latest
    checkpoint), read once. A ``ValueError`` names the folder when its parameters do not fit
    that learner on images of ``image_shape`` ``(H, W, C)`` (e.g. other channels) or are not
    finite."""
    teacher_cfg = teacher_config(config)
    folder, where = Path(config.teacher), f"teacher={config.teacher!r}"
    path, _ = run_checkpoint(folder)
    header, payload = read_checkpoint(path)
    try:
        params = flax.serialization.msgpack_restore(payload)["params"]
    except Exception as e:
        raise CheckpointError(f"{where}: checkpoint {path} cannot be read "
                              f"({type(e).__name__}: {e})") from e
    ways = config.effective_train_ways
    learner = build_learner(teacher_cfg, ways=ways, test=True)
    example = jax.ShapeDtypeStruct((2, *image_shape), jnp.float32)
    want = _shapes(jax.eval_shape(learner.init, jax.random.key(0), example))
    got = _shapes(params)
    if want != got:
        differ = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))[:3]
        raise ValueError(
            f"{where}: the parameters in {path} do not fit a {teacher_cfg.learner} "
            f"{teacher_cfg.backbone} (width {teacher_cfg.width}) built for the student's "
            f"{ways}-way episodes of {'x'.join(map(str, image_shape))} images: "
            + ", ".join(f"{k} {got.get(k)} there, {want.get(k)} here" for k in differ))
    for k, leaf in jax.tree_util.tree_leaves_with_path(params):
        if not np.all(np.isfinite(leaf)):
            raise ValueError(f"{where}: {path} holds non-finite parameters "
                             f"({jax.tree_util.keystr(k)})")
    sha = header.get("sha256") or hashlib.sha256(payload).hexdigest()
    teacher = Teacher(learner, weight=config.distill_weight,
                      temperature=config.distill_temperature, loss=config.distill_loss)
    return TeacherRun(teacher_cfg, teacher, jax.tree.map(jnp.asarray, params), path, sha)


def _shapes(tree) -> dict[str, tuple[int, ...]]:
    return {jax.tree_util.keystr(k): tuple(np.shape(x))
            for k, x in jax.tree_util.tree_leaves_with_path(tree)}


def check_teacher_record(run_dir: Path, config: Config, teacher: TeacherRun, *,
                         resume: bool) -> None:
    """A new run writes ``teacher.json`` (the teacher's checkpoint and its sha256); a resumed
    run is refused, before anything is touched, when the teacher's checkpoint is not the one it
    was trained with (a ``ValueError`` naming both files)."""
    path = run_dir / TEACHER_RECORD
    if resume and path.exists():
        try:
            saved = json.loads(path.read_text())
            if not isinstance(saved, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot resume {run_dir}: {path} cannot be read ({e}), so its "
                             f"teacher cannot be checked") from None
        if saved.get("sha256") != teacher.sha256:
            raise ValueError(
                f"cannot resume {run_dir}: its teacher has changed since the run began: "
                f"{teacher.checkpoint} has sha256 {teacher.sha256[:16]}..., the run was trained "
                f"with {saved.get('checkpoint')} of sha256 {str(saved.get('sha256'))[:16]}... "
                f"({path}); restore that checkpoint or start a new run folder")
        return
    if resume and has_checkpoint(run_dir):
        raise ValueError(f"cannot resume {run_dir}: {path} does not exist, so the teacher it "
                         f"was trained with cannot be checked")
    _write_json(path, teacher.record(config))


class Trainer(NamedTuple):
    """What the loop runs: the jitted step, its initial state, and the mesh (None: one device)."""

    step: Callable
    state: TrainState
    mesh: Any
    tasks_per_step: int


def build_trainer(config: Config, train_x: jax.Array, log=print,
                  teacher: TeacherRun | None = None, streamed: bool = False) -> Trainer:
    """The learner, optimizer, sampler and jitted step of ``config`` for the class-indexed
    ``train_x``, and the initial state (``config.seed``). With ``config.teacher``, the student
    is distilled from ``teacher`` (default: :func:`load_teacher`); its parameters are passed to
    the jitted step at each call, the state holds the student alone. ``streamed``: the step
    takes one call's episodes gathered on the host (:mod:`smallsample.data.stream`) instead of
    ``train_x`` (episodic learners only)."""
    optimizer = build_optimizer(config)
    augment = None
    if config.augment:
        from smallsample.augment import parse_pipeline  # noqa: PLC0415

        augment = parse_pipeline(config.augment)
    spc, per_class = config.call_steps, config.per_class or None
    mesh = None
    if is_pretrained(config):
        learner = build_pretrainer(config, num_classes=train_x.shape[0])
        step = make_pretrain_step(learner, optimizer, batch=config.pretrain_batch,
                                  steps_per_call=spc, per_class=per_class, augment=augment)
        tasks = config.pretrain_batch
    else:
        ways = config.effective_train_ways
        learner = build_learner(config, ways=ways)
        if streamed:
            sample = make_stream_sampler(shots=config.effective_train_shots,
                                         rotate=config.rotate, augment=augment)
        else:
            sample = make_sampler(meta_batch=config.meta_batch, ways=ways,
                                  shots=config.effective_train_shots,
                                  queries=config.train_queries, rotate=config.rotate,
                                  per_class=per_class, augment=augment)
        devices = train_devices(config, train_x.shape[2:])
        if devices > 1:
            mesh = task_mesh(jax.local_devices()[:devices])
            log(f"meta-batch of {config.meta_batch} split over {devices} "
                f"{jax.default_backend().upper()} devices")
        if config.teacher and teacher is None:
            teacher = load_teacher(config, train_x.shape[2:])
        step = make_train_step(learner, optimizer, sample, chunks=config.chunks,
                               steps_per_call=spc, batch=config.meta_batch, mesh=mesh,
                               teacher=teacher.teacher if config.teacher else None,
                               streamed=streamed)
        tasks = config.meta_batch
    example = jnp.zeros((2,) + train_x.shape[2:], jnp.float32)
    state = init_state(learner, optimizer, example, config.seed)
    jitted = jax.jit(step, donate_argnums=0)
    if config.teacher and not is_pretrained(config):
        params = teacher.params if mesh is None else jax.device_put(teacher.params,
                                                                     replicated(mesh))
        return Trainer(lambda state, data: jitted(state, data, params), state, mesh, tasks)
    return Trainer(jitted, state, mesh, tasks)


def read_metrics(path: Path, log=print) -> list[dict]:
    """The records of ``metrics.jsonl``. A last line cut short (by a kill mid-write) is dropped
    with a message; a bad line anywhere else is a ``ValueError`` naming the file and line."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if i == len(lines) - 1:
                log(f"{path}: dropping its last line, cut short by an interrupted run "
                    f"({line[:40]!r})")
                continue
            raise ValueError(f"{path}, line {i + 1}: not a metrics record ({e})") from e
        records.append(rec)
    return records


def restore(run_dir: Path, state: TrainState, config: Config,
            log=print) -> tuple[TrainState, float]:
    """The newest readable checkpoint loaded into ``state``'s structure (made by this
    configuration, or an error; ``state`` itself when the run was stopped before its first
    checkpoint), the metrics cut back to its step, and the best validation
    accuracy so far (-1 if none). The state is loaded first, so a checkpoint that does not fit
    leaves the metrics as they were."""
    if has_checkpoint(run_dir):
        state = latest_checkpoint(run_dir, state, config=config, warn=log)
    else:  # killed before its first checkpoint: the run starts again from its first step
        log(f"{run_dir} has no checkpoint yet: starting it again from step 0")
    path = run_dir / "metrics.jsonl"
    step = int(state.step)
    records = [r for r in read_metrics(path, log) if r.get("step", 0) <= step]
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in records).encode())
    best = max((r["val_accuracy"] for r in records if "val_accuracy" in r), default=-1.0)
    log(f"resumed {run_dir} at step {step}")
    return state, best


class _Metrics:
    """``metrics.jsonl``: a call's metrics are fetched after the next call is dispatched (so the
    host never waits for the device), and checked for finiteness when fetched."""

    def __init__(self, file, config: Config, bar):
        self.file, self.config, self.bar = file, config, bar
        self.pending = None

    def add(self, step: int, metrics, tasks_per_s: float) -> None:
        self.flush()
        self.pending = (step, metrics, tasks_per_s)

    def flush(self) -> None:
        if self.pending is None:
            return
        (step, m, tasks_per_s), self.pending = self.pending, None
        loss, acc, grad_norm = (np.asarray(m[k]) for k in ("loss", "accuracy", "grad_norm"))
        if not (np.all(np.isfinite(loss)) and np.all(np.isfinite(grad_norm))):
            raise FloatingPointError(
                f"training became non-finite in the {len(loss)} steps up to step {step}: loss "
                f"{loss.tolist()}, gradient norm {grad_norm.tolist()}; the last good checkpoint "
                f"is kept (try a lower lr)")
        if step % self.config.log_every == 0 or step >= self.config.steps:
            rec = {"step": step, "loss": float(loss.mean()), "accuracy": float(acc.mean()),
                   "grad_norm": float(grad_norm.mean()), "tasks_per_s": tasks_per_s}
            self.file.write(json.dumps(rec) + "\n")
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss.mean():.3f}", acc=f"{acc.mean():.3f}",
                                 tasks_s=f"{tasks_per_s:.0f}", refresh=False)

    def write(self, rec: dict) -> None:
        self.file.write(json.dumps(rec) + "\n")


def _evaluate(config: Config, learner: Learner, eval_fn, params, data, episodes: int):
    return evaluate(learner, _one_device(params), jnp.asarray(data), ways=config.ways,
                    shots=config.shots, queries=config.queries, num_episodes=episodes,
                    seed=config.eval_seed, eval_fn=eval_fn)


def train_and_evaluate(config: Config, run_dir: str | Path, *, resume: bool = False,
                       progress: bool = True, data: dict[str, Any] | None = None,
                       log: Callable[[str], None] = print) -> RunResult:
    """Meta-trains ``config`` in ``run_dir``, validating and checkpointing as it goes, then
    evaluates the best (else the last) checkpoint on the test classes.

    ``resume=True`` continues the run in ``run_dir`` from its latest checkpoint, with the saved
    config and the settings of ``config`` that may change on resume
    (:data:`smallsample.config.RESUMABLE`; any other difference is refused). ``data``: the
    class-indexed ``train`` / ``val`` / ``test`` arrays (default :func:`load_data`)."""
    run_dir = Path(run_dir)
    if not resume:
        validate(config)  # before the folder is made
    with run_lock(run_dir):
        return _train_and_evaluate(config, run_dir, resume, progress, data, log)


def _train_and_evaluate(config: Config, run_dir: Path, resume: bool, progress: bool, data,
                        log) -> RunResult:
    config = open_run(config, run_dir, resume=resume, log=log)
    data = data if data is not None else load_data(config)
    train_x = data["train"]
    # a memory-mapped (or large) set stays on the host: each call's episodes are gathered from
    # it and streamed (smallsample.data.stream); pre-training draws from the set on the device
    streamed = should_stream(train_x) and not is_pretrained(config)
    if not streamed:
        train_x = jnp.asarray(train_x)
    teacher = None
    if config.teacher:  # found again from the config on resume, and checked
        teacher = load_teacher(config, train_x.shape[2:])
        check_teacher_record(run_dir, config, teacher, resume=resume)
    trainer = build_trainer(config, train_x, log=log, teacher=teacher, streamed=streamed)
    state, best_val = trainer.state, -1.0
    if resume:
        state, best_val = restore(run_dir, state, config, log=log)
        _write_json(run_dir / "config.json", json.loads(config.to_json()))
    if trainer.mesh is not None:  # replicated on every device; evaluation runs on the first
        state = jax.device_put(state, replicated(trainer.mesh))
        if not streamed:
            train_x = jax.device_put(train_x, replicated(trainer.mesh))
    eval_learner = build_learner(config, ways=config.ways, test=True)
    eval_fn = make_eval_fn(eval_learner)
    validating = bool(config.val_part and "val" in data and config.val_episodes)

    bar = None
    if progress:
        from tqdm.auto import tqdm  # noqa: PLC0415

        bar = tqdm(total=config.steps, initial=int(state.step), unit="step", dynamic_ncols=True)
    spc, step = config.call_steps, int(state.step)  # the step is tracked on the host
    batches = None
    if streamed:  # from this step on: a resumed run gets the episodes it would have had
        batches = stream_batches(
            train_x, np.asarray(state.key), start_step=step, stop_step=config.steps,
            steps_per_call=spc, meta_batch=config.meta_batch, ways=config.effective_train_ways,
            shots=config.effective_train_shots, queries=config.train_queries,
            rotate=config.rotate, per_class=config.per_class or None,
            device=None if trainer.mesh is None else NamedSharding(trainer.mesh, P(None, AXIS)))
        log(f"training episodes streamed from the host ({type(train_x).__name__} "
            f"{train_x.shape}, {train_x.nbytes / 2**30:.1f} GiB)")
    t0 = t_last = time.perf_counter()
    step_last, val = step, None
    with open(run_dir / "metrics.jsonl", "a") as f, \
            contextlib.closing(batches) if streamed else contextlib.nullcontext():
        metrics = _Metrics(f, config, bar)
        while step < config.steps:
            state, m = trainer.step(state, next(batches) if streamed else train_x)
            step += spc
            now = time.perf_counter()
            metrics.add(step, m, trainer.tasks_per_step * (step - step_last)
                        / max(now - t_last, 1e-9))
            t_last, step_last = now, step
            if bar is not None:
                bar.update(spc)
            last = step >= config.steps
            if (step % config.eval_every == 0 or last) and validating:
                metrics.flush()
                val = _evaluate(config, eval_learner, eval_fn, state.params, data["val"],
                                config.val_episodes)
                metrics.write({"step": step, "val_accuracy": val.mean, "val_ci95": val.ci95})
                if val.mean > best_val:
                    best_val = val.mean
                    save_checkpoint(run_dir / BEST, state, config=config)
                if bar is not None:
                    bar.set_postfix_str(f"val {100 * val.mean:.1f}%", refresh=False)
            if step % config.checkpoint_every == 0 or last:
                metrics.flush()  # checks finiteness: a non-finite state is never saved
                f.flush()
                save_run_checkpoint(run_dir, state, config=config,
                                    keep=config.keep_checkpoints)
        metrics.flush()
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    test = _test(config, run_dir, state, eval_learner, eval_fn, data, log)
    _write_results(config, run_dir, state, seconds, best_val, test, trainer.mesh,
                   None if teacher is None else teacher.record(config))
    return RunResult(test, val, int(state.step), seconds, run_dir)


def _test(config: Config, run_dir: Path, state: TrainState, learner: Learner, eval_fn, data,
          log) -> Result | None:
    if "test" not in data or not config.test_episodes:
        return None
    final = (load_checkpoint(run_dir / BEST, state, config=config) if (run_dir / BEST).exists()
             else state)
    test = _evaluate(config, learner, eval_fn, final.params, data["test"], config.test_episodes)
    log(f"test {config.ways}-way {config.shots}-shot: {test}")
    np.save(run_dir / "test_accuracies.npy", test.accuracies)
    return test


def _write_results(config: Config, run_dir: Path, state: TrainState, seconds: float,
                   best_val: float, test: Result | None, mesh, teacher: dict | None) -> None:
    extra = {} if teacher is None else {"teacher": teacher}
    _write_json(run_dir / "results.json", extra | {
        "steps": int(state.step), "train_seconds": seconds,
        "best_val_accuracy": best_val if best_val >= 0 else None,
        "used_checkpoint": "best" if (run_dir / BEST).exists() else "last",
        "test_accuracy": None if test is None else test.mean,
        "test_ci95": None if test is None else test.ci95,
        "test_episodes": 0 if test is None else len(test.accuracies),
        "device": jax.devices()[0].device_kind, "jax": jax.__version__,
        "devices": 1 if mesh is None else int(mesh.size),
    })
