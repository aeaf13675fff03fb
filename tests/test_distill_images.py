"""Distillation of a few-shot student from a teacher run (issue #22, images): the KD term against a
NumPy float64 recomputation, the same augmented view for both, no gradient to the teacher,
alpha = 0 as the plain step, the teacher folder's checks, and resume (stopped, or killed in a
real process) finding the same teacher and refusing a changed one."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from smallsample.augment import parse_pipeline
from smallsample.cli import main
from smallsample.config import Config, make_config
from smallsample.learners.protonet import protonet
from smallsample.models.conv4 import Conv4
from smallsample.registry import validate
from smallsample.train import (
    init_state,
    load_params,
    make_sampler,
    make_train_step,
    train_and_evaluate,
)
from smallsample.train.loop import load_teacher
from smallsample.train.step import Teacher, distill_task_loss_and_grad, teacher_logits

RNG = np.random.default_rng(0)
# 16 x 16: the run tests' Conv-4 pools four times down to 1 x 1 (at 8 x 8 its embedding would be
# empty, every logit 0, and nothing would train)
DATA = {"train": RNG.integers(0, 256, (10, 6, 16, 16, 1), dtype=np.uint8),
        "val": RNG.integers(0, 256, (6, 6, 16, 16, 1), dtype=np.uint8),
        "test": RNG.integers(0, 256, (6, 6, 16, 16, 1), dtype=np.uint8)}
TINY = make_config(None, ["width=4", "ways=3", "shots=1", "queries=2", "train_queries=2",
                          "meta_batch=2", "steps=6", "steps_per_call=2", "log_every=2",
                          "eval_every=4", "checkpoint_every=2", "val_episodes=8",
                          "test_episodes=10", "image_size=16", "lr=0.01"])
#: every distilled run of these tests uses these settings, so their programs compile once
DISTILLED = {"distill_weight": 0.7, "distill_temperature": 2.0, "augment": "noise(std=0.1)"}
QUIET = {"progress": False, "data": DATA, "log": lambda s: None}
NOISE = parse_pipeline("noise(std=0.2)")  # a view drawn twice would differ in every pixel


def learner(width=4, ways=3):
    return protonet(Conv4(width=width, blocks=2), ways)


STUDENT, TEACHER = learner(4), learner(8)
KEY = jax.random.key(3)


@jax.jit
def episode_and_params(key):
    """One augmented 3-way 2-shot 3-query episode, a student (width 4) and a teacher (8)."""
    sample = make_sampler(meta_batch=1, ways=3, shots=2, queries=3, augment=NOISE)
    k_ep, k_s, k_t = jax.random.split(key, 3)
    ep = jax.tree.map(lambda x: x[0], sample(k_ep, jnp.asarray(DATA["train"])))
    return ep, STUDENT.init(k_s, ep.support_x), TEACHER.init(k_t, ep.support_x)


def logits_of(lrn, params, ep):
    return lrn.predict(params, lrn.adapt(params, ep.support_x, ep.support_y, None), ep.query_x)


@jax.jit
def distilled(params, t_params, ep, alpha, temperature):
    """The per-task function with traced weights (one program for every alpha and T), the
    teacher's gradient, and the two sets of logits it saw."""
    teacher = Teacher(TEACHER, weight=alpha, temperature=temperature)
    out = distill_task_loss_and_grad(STUDENT, teacher, params, t_params, ep, KEY)
    t_grad = jax.grad(lambda tp: distill_task_loss_and_grad(STUDENT, teacher, params, tp, ep,
                                                            KEY)[0])(t_params)
    return out, t_grad, logits_of(STUDENT, params, ep), logits_of(TEACHER, t_params, ep)


@jax.jit
def kd_ce_grad(params, t_logits, ep, alpha, temperature):
    """The reference gradient: kd_ce_loss of the distillation losses through the student."""
    from smallsample.distill import kd_ce_loss

    return jax.grad(lambda p: kd_ce_loss(logits_of(STUDENT, p, ep), t_logits, ep.query_y,
                                         temperature=temperature, alpha=alpha).mean())(params)


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_loss_is_the_kd_ce_mix_of_the_logits_float64_and_no_gradient_reaches_the_teacher():
    """(1 - a) CE + a T^2 KL(teacher || student), recomputed in NumPy float64 from the two
    learners' logits on the episode; the gradient is that of kd_ce_loss through the student;
    the teacher's parameters get a zero gradient."""
    ep, s_params, t_params = episode_and_params(jax.random.key(0))
    for alpha, temperature in [(0.5, 4.0), (0.9, 2.0), (1.0, 1.0), (0.3, 10.0)]:
        (loss, acc, grads), t_grad, s, t = distilled(s_params, t_params, ep, alpha, temperature)
        s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
        assert np.ptp(t) > 1 and not np.allclose(s, t)  # logits that say something
        y = np.asarray(ep.query_y)
        ce = -np_log_softmax(s)[np.arange(len(y)), y]
        log_p, log_q = np_log_softmax(t / temperature), np_log_softmax(s / temperature)
        kl = (np.exp(log_p) * (log_p - log_q)).sum(-1)
        want = ((1 - alpha) * ce + alpha * temperature ** 2 * kl).mean()
        np.testing.assert_allclose(float(loss), want, rtol=1e-5)
        assert float(acc) == pytest.approx((s.argmax(-1) == y).mean())
        ref = kd_ce_grad(s_params, jnp.asarray(t, jnp.float32), ep, alpha, temperature)
        for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref), strict=True):
            np.testing.assert_allclose(g, r, rtol=0, atol=2e-5 * np.abs(r).max())
        assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(t_grad))


def test_dkd_is_the_decoupled_loss_of_the_same_logits():
    from smallsample.distill import dkd_loss

    ep, s_params, t_params = episode_and_params(jax.random.key(1))
    teacher = Teacher(TEACHER, weight=0.6, temperature=3.0, loss="dkd")
    loss, _, _ = jax.jit(lambda p, tp: distill_task_loss_and_grad(
        STUDENT, teacher, p, tp, ep, KEY))(s_params, t_params)
    _, _, s, t = distilled(s_params, t_params, ep, 0.6, 3.0)
    ce = -jax.nn.log_softmax(s)[jnp.arange(9), ep.query_y]
    want = 0.4 * ce.mean() + 0.6 * dkd_loss(s, t, ep.query_y, temperature=3.0).mean()
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    gl = jax.jit(jax.grad(lambda tp: teacher_logits(teacher, tp, ep, KEY).sum()))(t_params)
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(gl))


def test_alpha_zero_is_the_plain_step_and_the_teacher_sees_the_same_view():
    """alpha = 0: exactly the plain step's parameters, the state holding the student alone.
    alpha = 1/2, T = 1, a teacher identical to the student: the KD term's gradient is zero at the
    start, because both saw the same noisy images (a view drawn apart would differ in every
    pixel), so the step is the plain one at half the loss and gradient; a different teacher
    breaks that, so the check can fail."""
    lrn, opt = learner(), optax.adam(1e-2)
    sample = make_sampler(meta_batch=2, ways=3, shots=1, queries=2, augment=NOISE)
    plain = jax.jit(make_train_step(lrn, opt, sample, steps_per_call=2, batch=2))
    zero = jax.jit(make_train_step(lrn, opt, sample, steps_per_call=2, batch=2,
                                   teacher=Teacher(TEACHER, 0.0, 4.0)))
    half = jax.jit(make_train_step(lrn, opt, sample, steps_per_call=2, batch=2,
                                   teacher=Teacher(learner(), 0.5, 1.0)))
    state = init_state(lrn, opt, jnp.zeros((2, 16, 16, 1)), 0)
    data = jnp.asarray(DATA["train"])
    _, _, t_params = episode_and_params(jax.random.key(2))
    a, ma = plain(state, data)
    b, mb = zero(state, data, t_params)
    assert jax.tree.structure(a) == jax.tree.structure(b)  # no teacher in the state
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(ma["loss"], mb["loss"])
    # the first of the two steps: the same state for student and teacher
    _, mh = half(state, data, state.params)
    np.testing.assert_allclose(mh["loss"][0], ma["loss"][0] / 2, rtol=1e-5)
    np.testing.assert_allclose(mh["grad_norm"][0], ma["grad_norm"][0] / 2, rtol=1e-4)
    other = jax.jit(learner().init)(jax.random.key(11), jnp.zeros((2, 16, 16, 1)))
    _, mo = half(state, data, other)
    assert abs(float(mo["grad_norm"][0]) - float(ma["grad_norm"][0]) / 2) > \
        0.01 * float(ma["grad_norm"][0])


def test_config_without_teacher_is_written_as_before():
    keys = json.loads(TINY.to_json())
    assert not {"teacher", "distill_weight", "distill_temperature", "distill_loss"} & set(keys)
    assert Config.from_json(TINY.to_json()) == TINY
    for changed in (TINY.replace(teacher="runs/t", **DISTILLED), TINY.replace(distill_weight=0.7),
                    TINY.replace(distill_loss="dkd")):
        assert len(set(json.loads(changed.to_json())) - set(keys)) == 4
        assert Config.from_json(changed.to_json()) == changed


# ------------------------------------------------------------------ runs, folders and errors
@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("teacher") / "run"
    train_and_evaluate(TINY.replace(width=8, steps=4, eval_every=2), run, **QUIET)
    return run


def test_distilled_run_records_its_teacher_and_resumes_to_the_same_run(teacher_run, tmp_path):
    cfg = TINY.replace(teacher=str(teacher_run), **DISTILLED)
    full = train_and_evaluate(cfg, tmp_path / "full", **QUIET)
    record = json.loads((tmp_path / "full" / "teacher.json").read_text())
    assert record["teacher"] == str(teacher_run) and record["width"] == 8
    assert record["checkpoint"] == str(teacher_run / "best.msgpack")
    results = json.loads((tmp_path / "full" / "results.json").read_text())
    assert results["teacher"]["sha256"] == record["sha256"]
    saved = Config.from_json((tmp_path / "full" / "config.json").read_text())
    assert saved == cfg and "distill_weight" in json.loads(saved.to_json())
    # stopped after 2 steps, resumed to 6: the same run as the one left alone
    train_and_evaluate(cfg.replace(steps=2), tmp_path / "split", **QUIET)
    resumed = train_and_evaluate(cfg, tmp_path / "split", resume=True, **QUIET)
    assert resumed.steps == full.steps == 6
    for x, y in zip(jax.tree.leaves(load_params(tmp_path / "full" / "checkpoint.msgpack")),
                    jax.tree.leaves(load_params(tmp_path / "split" / "checkpoint.msgpack")),
                    strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    # the student learns something else than without a teacher
    alone = train_and_evaluate(TINY.replace(augment=DISTILLED["augment"]), tmp_path / "alone",
                               **QUIET)
    assert alone.steps == 6
    assert not all(np.allclose(x, y) for x, y in zip(
        jax.tree.leaves(load_params(tmp_path / "alone" / "checkpoint.msgpack")),
        jax.tree.leaves(load_params(tmp_path / "full" / "checkpoint.msgpack")), strict=True))


def test_resume_refuses_a_changed_teacher(tmp_path):
    teacher = tmp_path / "teacher"
    train_and_evaluate(TINY.replace(width=8, steps=2, val_part=""), teacher, **QUIET)
    cfg = TINY.replace(teacher=str(teacher), steps=2, **DISTILLED)
    train_and_evaluate(cfg, tmp_path / "student", **QUIET)
    before = {p.name: p.read_bytes() for p in (tmp_path / "student").iterdir()}
    # the teacher trains on: its checkpoint changes
    train_and_evaluate(TINY.replace(width=8, steps=4, val_part=""), teacher, resume=True, **QUIET)
    with pytest.raises(ValueError, match=r"cannot resume .*student: its teacher has changed "
                                         r"since the run began: .*teacher/checkpoint.msgpack"):
        train_and_evaluate(cfg.replace(steps=4), tmp_path / "student", resume=True, **QUIET)
    assert {p.name: p.read_bytes() for p in (tmp_path / "student").iterdir()} == before


def _write_run(folder: Path, cfg: Config) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(cfg.to_json())
    return folder


def test_bad_teacher_folders_and_settings_are_named(teacher_run, tmp_path):
    def refused(match, **changes):
        with pytest.raises(ValueError, match=match):
            validate(TINY.replace(**changes))

    missing = tmp_path / "nope"
    refused(f"teacher='{missing}': no such folder", teacher=str(missing))
    (tmp_path / "file").write_text("x")
    refused("not a folder", teacher=str(tmp_path / "file"))
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(f"is not a run folder: {empty / 'config.json'} does not exist", teacher=str(empty))
    (empty / "config.json").write_text("{")
    refused(f"{empty / 'config.json'}: config is not valid JSON", teacher=str(empty))
    untrained = _write_run(tmp_path / "untrained", TINY)
    refused("the run folder has no checkpoint .* train the teacher first",
            teacher=str(untrained))
    other = _write_run(tmp_path / "size", TINY.replace(image_size=28))
    refused(r"was trained with image_size=28, the student has image_size=16",
            teacher=str(other))
    other = _write_run(tmp_path / "split", TINY.replace(split="maml"))
    refused(r"was trained with split='maml', the student has split='vinyals'",
            teacher=str(other))
    maml = _write_run(tmp_path / "maml", TINY.replace(learner="maml", train_ways=5))
    refused(r"a maml teacher has a 5-way head, the student trains on 3-way episodes",
            teacher=str(maml))
    refused(r"a reptile student cannot be distilled", teacher=str(teacher_run),
            learner="reptile")
    refused(r"distill_weight=1.5 must be in \[0, 1\]", teacher=str(teacher_run),
            distill_weight=1.5)
    refused(r"distill_temperature=0.0 must be a finite number > 0", teacher=str(teacher_run),
            distill_temperature=0.0)
    refused(r"distill_loss='mse'; choose from kd, dkd", distill_loss="mse")
    # a corrupt teacher checkpoint names the file
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for name in ("config.json", "best.msgpack"):
        (corrupt / name).write_bytes((teacher_run / name).read_bytes())
    (corrupt / "best.msgpack").write_bytes((corrupt / "best.msgpack").read_bytes()[:-10])
    refused(f"checkpoint {corrupt / 'best.msgpack'} is corrupt", teacher=str(corrupt))
    # parameters that do not fit the teacher's config (here: its width was edited)
    forged = tmp_path / "forged"
    forged.mkdir()
    (forged / "config.json").write_text(TINY.replace(width=16).to_json())
    (forged / "best.msgpack").write_bytes((teacher_run / "best.msgpack").read_bytes())
    cfg = validate(TINY.replace(teacher=str(forged)))
    with pytest.raises(ValueError, match=rf"teacher='{forged}': the parameters in "
                                         rf"{forged / 'best.msgpack'} do not fit a protonet "
                                         r"conv4 \(width 16\) built for the student's 3-way "
                                         r"episodes of 16x16x1 images"):
        load_teacher(cfg, (16, 16, 1))
    # ... and images of other channels
    with pytest.raises(ValueError, match=r"episodes of 16x16x3 images"):
        load_teacher(TINY.replace(teacher=str(teacher_run)), (16, 16, 3))


# ------------------------------------------------------------ the command line, a real kill
def _folder_data(root: Path) -> Path:
    rng = np.random.default_rng(1)
    for c in range(14):
        (root / f"c{c:02d}").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(
                root / f"c{c:02d}" / f"{i}.png")
    return root


# meta_batch=2: the command makes one CPU device per core, and splits the meta-batch over them
# (teacher parameters replicated) where there are two
FOLDER = ["dataset=folder", "image_size=16", "ways=2", "train_ways=3", "shots=1", "queries=1",
          "train_queries=2", "meta_batch=2", "steps_per_call=2", "log_every=2",
          "eval_every=10", "checkpoint_every=4", "val_episodes=4", "test_episodes=8"]


def _train_cmd(run: Path, *settings, resume=False):
    return [sys.executable, "-m", "smallsample", "train", *([] if resume else ["quickstart"]),
            *settings, "--run-dir", str(run), "--no-progress",
            *(["--resume"] if resume else [])]


def test_command_line_distills_and_a_killed_run_resumes_with_its_teacher(tmp_path, capsys):
    data = _folder_data(tmp_path / "photos")
    common = [*FOLDER, f"data_path={data}"]
    env = dict(os.environ, SMALLSAMPLE_COMPILE_CACHE=str(tmp_path / "jit"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", SMALLSAMPLE_CACHE=str(tmp_path))
    teacher = tmp_path / "teacher"
    assert main(["train", "quickstart", *common, "width=8", "steps=8", "--run-dir",
                 str(teacher), "--no-progress"]) == 0
    student = [*common, "width=4", "steps=24", f"teacher={teacher}", "distill_weight=0.5",
               "distill_temperature=2", "augment=noise(std=0.1)"]
    subprocess.run(_train_cmd(tmp_path / "whole", *student), env=env, check=True,
                   timeout=600, capture_output=True)
    run = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(run, *student), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").exists() and \
                len((run / "metrics.jsonl").read_text().splitlines()) >= 5:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before 5 metric lines"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    # --resume takes the saved config, hence the teacher, and gives the run left alone
    subprocess.run(_train_cmd(run, resume=True), env=env, check=True, timeout=600,
                   capture_output=True)
    a, b = (json.loads((d / "results.json").read_text()) for d in (tmp_path / "whole", run))
    assert a["test_accuracy"] == b["test_accuracy"] and a["steps"] == b["steps"] == 24
    assert a["teacher"] == b["teacher"]
    for x, y in zip(jax.tree.leaves(load_params(tmp_path / "whole" / "checkpoint.msgpack")),
                    jax.tree.leaves(load_params(run / "checkpoint.msgpack")), strict=True):
        np.testing.assert_array_equal(x, y)
    # one-line errors naming the folder and value
    capsys.readouterr()
    assert main(["train", "quickstart", *common, f"teacher={tmp_path / 'none'}", "--run-dir",
                 str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert f"teacher='{tmp_path / 'none'}': no such folder" in err and len(err.splitlines()) == 1
    assert main(["train", "quickstart", *common, "image_size=12", f"teacher={teacher}",
                 "--run-dir", str(tmp_path / "y")]) == 2
    assert "was trained with image_size=16, the student has image_size=12" in \
        capsys.readouterr().err
