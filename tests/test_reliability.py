"""Runs that survive faults: checkpoints that are checked (format, checksum, configuration),
kept and fallen back on; one run per folder; metrics that agree with the checkpoint after a kill;
training killed with SIGKILL at several moments and resumed gives the run left alone. Real
processes and real files throughout."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smallsample.config import make_config
from smallsample.train import train_and_evaluate
from smallsample.train.checkpoint import (
    CheckpointError,
    RunFolderBusy,
    checkpoints,
    load_params,
    read_checkpoint,
    run_lock,
)

RNG = np.random.default_rng(0)
DATA = {"train": RNG.integers(0, 256, (10, 6, 8, 8, 1), dtype=np.uint8),
        "val": RNG.integers(0, 256, (6, 6, 8, 8, 1), dtype=np.uint8),
        "test": RNG.integers(0, 256, (6, 6, 8, 8, 1), dtype=np.uint8)}
TINY = make_config(None, ["width=4", "ways=3", "shots=1", "queries=2", "train_queries=2",
                          "meta_batch=2", "steps=6", "steps_per_call=2", "log_every=2",
                          "eval_every=4", "checkpoint_every=2", "val_episodes=4",
                          "test_episodes=6", "image_size=8"])
QUIET = {"progress": False, "data": DATA, "log": lambda s: None}


def _files(run):
    return {p.name: p.read_bytes() for p in Path(run).iterdir() if p.is_file()}


def test_checkpoints_are_kept_checked_and_fallen_back_on(tmp_path):
    """Three checkpoints are kept; each carries its config and a checksum; a corrupt latest is
    skipped with a warning for the one before it, and the resumed run ends exactly where the run
    left alone did."""
    full = train_and_evaluate(TINY.replace(steps=8), tmp_path / "full", **QUIET)
    run = tmp_path / "run"
    train_and_evaluate(TINY, run, **QUIET)
    assert [p.name for p in checkpoints(run)] == [
        "checkpoint.msgpack", "checkpoint-00000004.msgpack", "checkpoint-00000002.msgpack"]
    header, _ = read_checkpoint(run / "checkpoint.msgpack")
    assert header["format"] == 2 and header["step"] == 6 and header["config"]["width"] == 4
    data = bytearray((run / "checkpoint.msgpack").read_bytes())
    data[-10] ^= 0xFF  # one flipped bit of the payload
    (run / "checkpoint.msgpack").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt: its content does not match"):
        read_checkpoint(run / "checkpoint.msgpack")
    said = []
    out = train_and_evaluate(TINY.replace(steps=8), run, resume=True, progress=False,
                             data=DATA, log=said.append)
    assert any("falling back" in s for s in said)
    assert any("resumed" in s and "at step 4" in s for s in said)
    assert out.steps == 8
    a, b = load_params(tmp_path / "full" / "checkpoint.msgpack"), load_params(
        run / "checkpoint.msgpack")
    for x, y in zip(jax_leaves(a), jax_leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    assert out.test.mean == pytest.approx(full.test.mean)


def jax_leaves(tree):
    import jax  # noqa: PLC0415

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_a_checkpoint_of_another_configuration_is_refused_before_anything_changes(tmp_path):
    """A checkpoint written by a MAML run (its header says so; the payload is checksummed
    apart) dropped into a prototypical-network run folder."""
    from smallsample.train.checkpoint import MAGIC  # noqa: PLC0415

    run = tmp_path / "protonet"
    train_and_evaluate(TINY.replace(steps=2), run, **QUIET)
    header, payload = read_checkpoint(run / "checkpoint.msgpack")
    header["config"].update(learner="maml", backbone="conv4-stride")
    (run / "checkpoint.msgpack").write_bytes(MAGIC + json.dumps(header).encode() + b"\n"
                                             + payload)
    before = _files(run)
    with pytest.raises(CheckpointError, match="another configuration: .*learner='maml' there, "
                                              "'protonet' here"):
        train_and_evaluate(TINY.replace(steps=4), run, resume=True, **QUIET)
    assert _files(run) == before  # metrics and config untouched


def test_a_torn_metrics_line_is_repaired_and_a_bad_one_named(tmp_path):
    run = tmp_path / "run"
    train_and_evaluate(TINY.replace(steps=4), run, **QUIET)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "loss": 1.2')  # a kill in the middle of a line
    said = []
    train_and_evaluate(TINY, run, resume=True, progress=False, data=DATA, log=said.append)
    assert any("dropping its last line" in s for s in said)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(x) for x in lines)
    assert [json.loads(x)["step"] for x in lines if "loss" in x] == [2, 4, 6]
    text = (run / "metrics.jsonl").read_text().splitlines()
    text[1] = "garbage"
    (run / "metrics.jsonl").write_text("\n".join(text) + "\n")
    with pytest.raises(ValueError, match="metrics.jsonl, line 2: not a metrics record"):
        train_and_evaluate(TINY.replace(steps=8), run, resume=True, **QUIET)


def test_a_non_finite_checkpoint_is_never_evaluated(tmp_path):
    """Even a checkpoint written by another program with NaN parameters is refused by eval."""
    import flax.serialization  # noqa: PLC0415

    run = tmp_path / "run"
    train_and_evaluate(TINY.replace(steps=2), run, **QUIET)
    raw = flax.serialization.msgpack_restore((run / "checkpoint.msgpack").read_bytes()
                                             .split(b"\n", 2)[2])
    leaf = raw["params"]["Conv_0"]["kernel"]
    raw["params"]["Conv_0"]["kernel"] = np.full_like(leaf, np.nan)
    (tmp_path / "nan.msgpack").write_bytes(flax.serialization.msgpack_serialize(raw))
    with pytest.raises(CheckpointError, match="non-finite parameters"):
        load_params(tmp_path / "nan.msgpack")


HOLD = """
import sys, time
from pathlib import Path
from smallsample.train.checkpoint import run_lock
with run_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_one_run_per_folder_and_a_killed_holder_leaves_no_lock(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderBusy, match=f"in use by pid {holder.pid}"):
            train_and_evaluate(TINY, run, **QUIET)
        assert not (run / "config.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    with run_lock(run):  # the kernel released it with the process
        pass
    train_and_evaluate(TINY.replace(steps=2), run, **QUIET)


FULL_DISK = """
import resource, signal, sys
from pathlib import Path
import numpy as np
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
from smallsample.train.checkpoint import save_checkpoint, read_checkpoint
from smallsample.train.step import TrainState
import jax.numpy as jnp
path = Path(sys.argv[1])
small = TrainState(jnp.ones((), jnp.int32), {"w": jnp.ones(4)}, (), jnp.zeros(2, jnp.uint32))
save_checkpoint(path, small)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
big = small._replace(step=jnp.full((), 2, jnp.int32), params={"w": jnp.ones(100_000)})
try:
    save_checkpoint(path, big)
except OSError as e:
    print("ERROR", e)
print("STEP", read_checkpoint(path)[0]["step"])
"""


def test_a_write_that_fails_keeps_the_previous_checkpoint(tmp_path):
    """A file-size limit makes the write fail as a full disk would (EFBIG instead of ENOSPC):
    the error names the checkpoint, the previous one is intact, no temporary file is left."""
    path = tmp_path / "ck" / "checkpoint.msgpack"
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, str(path)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"writing checkpoint {path} failed" in proc.stdout
    assert "the previous checkpoint is kept" in proc.stdout
    assert "STEP 1" in proc.stdout
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.msgpack"]


def _folder_data(root: Path) -> Path:
    rng = np.random.default_rng(1)
    for c in range(14):
        (root / f"c{c:02d}").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(
                root / f"c{c:02d}" / f"{i}.png")
    return root


def _train_cmd(data: Path, run: Path, *extra):
    preset = [] if "--resume" in extra else ["quickstart"]  # a resumed run has its own config
    return [sys.executable, "-m", "smallsample", "train", *preset, "dataset=folder",
            f"data_path={data}", "image_size=16", "ways=2", "train_ways=3", "shots=1",
            "queries=1", "train_queries=2", "width=8", "steps=40", "steps_per_call=2",
            "log_every=2", "eval_every=10", "checkpoint_every=4", "val_episodes=4",
            "test_episodes=8", "--run-dir", str(run), "--no-progress", *extra]


def test_training_killed_at_several_moments_resumes_to_the_same_run(tmp_path):
    """SIGKILL while training, at several points (after 2, 5 and 8 metric lines), then
    --resume: the same parameters, metrics and test numbers as the run left alone."""
    data = _folder_data(tmp_path / "photos")
    env = dict(os.environ, SMALLSAMPLE_COMPILE_CACHE=str(tmp_path / "jit"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", SMALLSAMPLE_CACHE=str(tmp_path))
    subprocess.run(_train_cmd(data, tmp_path / "alone"), env=env, check=True, timeout=600,
                   capture_output=True)
    run = tmp_path / "killed"
    for lines in (2, 5, 8):
        proc = subprocess.Popen(_train_cmd(data, run, *(["--resume"] if lines > 2 else [])),
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        metrics = run / "metrics.jsonl"
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= lines:
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"the run ended before {lines} metric lines"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    subprocess.run(_train_cmd(data, run, "--resume"), env=env, check=True, timeout=600,
                   capture_output=True)
    a, b = (json.loads((d / "results.json").read_text()) for d in (tmp_path / "alone", run))
    assert a["test_accuracy"] == b["test_accuracy"] and a["steps"] == b["steps"] == 40
    strip = lambda d: [{k: v for k, v in json.loads(x).items() if k != "tasks_per_s"}
                       for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert strip(tmp_path / "alone") == strip(run)
    # the run trains: Conv-4 pools 16x16 to 1x1 (at 10x10 it pooled to nothing and every loss
    # was ln 2)
    assert np.ptp([m["loss"] for m in strip(run) if "loss" in m]) > 1e-3
    for x, y in zip(jax_leaves(load_params(tmp_path / "alone" / "checkpoint.msgpack")),
                    jax_leaves(load_params(run / "checkpoint.msgpack")), strict=True):
        np.testing.assert_array_equal(x, y)


def test_the_command_line_gives_one_line_errors_not_tracebacks(tmp_path, capsys):
    """A run that goes non-finite, and eval of a checkpoint that is not finite: exit 2 and one
    line naming the problem."""
    import flax.serialization  # noqa: PLC0415

    from smallsample.cli import main  # noqa: PLC0415

    data = _folder_data(tmp_path / "photos")
    args = ["train", "quickstart", "dataset=folder", f"data_path={data}", "image_size=10",
            "ways=2", "train_ways=2", "shots=1", "queries=1", "train_queries=1", "width=4",
            "learner=maml", "backbone=conv4-stride", "steps=4", "steps_per_call=2",
            "log_every=2", "eval_every=4", "checkpoint_every=2"]
    assert main([*args, "lr=1e30", "--no-progress", "--run-dir", str(tmp_path / "nan")]) == 2
    err = capsys.readouterr().err
    assert "error: training became non-finite" in err and "Traceback" not in err
    assert not (tmp_path / "nan" / "checkpoint.msgpack").exists()
    run = tmp_path / "ok"
    assert main([*args, "--no-progress", "--run-dir", str(run)]) == 0
    header, payload = read_checkpoint(run / "checkpoint.msgpack")
    raw = flax.serialization.msgpack_restore(payload)
    raw["params"]["Conv_0"]["kernel"] = np.full_like(raw["params"]["Conv_0"]["kernel"], np.inf)
    for name in ["checkpoint.msgpack", "best.msgpack"]:
        (run / name).unlink(missing_ok=True)
    (run / "checkpoint.msgpack").write_bytes(flax.serialization.msgpack_serialize(raw))
    assert main(["eval", str(run), "--episodes", "4"]) == 2
    assert "holds non-finite parameters" in capsys.readouterr().err


WRITER = """
import sys
from pathlib import Path
import jax.numpy as jnp
from smallsample.config import make_config
from smallsample.train.checkpoint import save_run_checkpoint
from smallsample.train.step import TrainState
run, config = Path(sys.argv[1]), make_config(None, ["width=4"])
run.mkdir(exist_ok=True)
print("ready", flush=True)
step = 1
while True:  # checkpoints as fast as they can be written, until killed
    state = TrainState(jnp.full((), step, jnp.int32), {"w": jnp.full(50_000, float(step))}, (),
                       jnp.zeros(2, jnp.uint32))
    save_run_checkpoint(run, state, config=config, keep=2)
    step += 1
"""


def test_a_kill_during_checkpoint_writes_always_leaves_a_whole_checkpoint(tmp_path):
    """SIGKILL at random moments of a process that does nothing but write checkpoints: each
    time, the newest checkpoint that reads is complete and consistent (its parameters are its
    step), and nothing half-written is ever taken for a checkpoint."""
    import jax.numpy as jnp  # noqa: PLC0415

    from smallsample.train.checkpoint import latest_checkpoint  # noqa: PLC0415
    from smallsample.train.step import TrainState  # noqa: PLC0415

    template = TrainState(jnp.zeros((), jnp.int32), {"w": jnp.zeros(50_000)}, (),
                          jnp.zeros(2, jnp.uint32))
    config = make_config(None, ["width=4"])
    rng = np.random.default_rng(0)
    last = 0
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "run")],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.3, 1.0)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        warnings = []
        state = latest_checkpoint(tmp_path / "run", template, config=config,
                                  warn=warnings.append)
        step = int(state.step)
        assert step >= 1
        np.testing.assert_array_equal(np.asarray(state.params["w"]), float(step))
        last = max(last, step)
    assert last > 1  # the writer did get through several checkpoints


def test_corrupted_checkpoint_files_give_only_checkpoint_errors(tmp_path):
    """Random damage to a checkpoint file (truncation, flipped, inserted or deleted bytes, a
    damaged header): reading it raises CheckpointError naming the file, or gives back exactly
    the state that was saved; never another exception."""
    import jax.numpy as jnp  # noqa: PLC0415
    from hypothesis import HealthCheck, given, settings  # noqa: PLC0415
    from hypothesis import strategies as st  # noqa: PLC0415

    from smallsample.train.checkpoint import load_checkpoint, save_checkpoint  # noqa: PLC0415
    from smallsample.train.step import TrainState  # noqa: PLC0415

    state = TrainState(jnp.full((), 7, jnp.int32), {"w": jnp.arange(6.0)}, (),
                       jnp.zeros(2, jnp.uint32))
    config = make_config(None, ["width=4"])
    good_path = tmp_path / "good.msgpack"
    save_checkpoint(good_path, state, config=config)
    good = good_path.read_bytes()
    bad_path = tmp_path / "bad.msgpack"

    @settings(max_examples=150, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def check(data):
        blob = bytearray(good)
        for _ in range(data.draw(st.integers(1, 3))):
            kind = data.draw(st.sampled_from(["cut", "flip", "insert", "delete", "header"]))
            i = data.draw(st.integers(0, max(0, len(blob) - 1)))
            if kind == "cut":
                del blob[i:]
            elif kind == "flip" and blob:
                blob[i] ^= data.draw(st.integers(1, 255))
            elif kind == "insert":
                blob[i:i] = data.draw(st.binary(min_size=1, max_size=8))
            elif kind == "delete" and blob:
                del blob[i:i + data.draw(st.integers(1, 8))]
            else:
                end = blob.find(b"\n", 23)
                blob[23:end if end > 0 else 23] = data.draw(st.binary(max_size=40))
        bad_path.write_bytes(bytes(blob))
        try:
            out = load_checkpoint(bad_path, state, config=config)
        except CheckpointError as e:
            assert str(bad_path) in str(e)
            return
        np.testing.assert_array_equal(np.asarray(out.params["w"]), np.arange(6.0))
        assert int(out.step) == 7

    check()
