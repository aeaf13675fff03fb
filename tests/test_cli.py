import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from smallsample.cli import main
from smallsample.runtime import compile_cache_dir

FAST = ["steps=4", "steps_per_call=2", "log_every=2", "eval_every=2", "checkpoint_every=2",
        "val_episodes=10", "test_episodes=20", "train_ways=5", "width=16"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir):
    d = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "quickstart", *FAST, "--run-dir", str(d), "--no-progress",
                 "--data", str(data_dir)]) == 0
    return d


def test_train_reports_accuracy_and_writes_the_run(run_dir, capsys):
    res = json.loads((run_dir / "results.json").read_text())
    assert res["steps"] == 4 and res["test_episodes"] == 20
    assert 0.2 <= res["test_accuracy"] <= 1.0
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["width"] == 16 and cfg["learner"] == "protonet"


def test_eval_and_lake(run_dir, data_dir, capsys):
    assert main(["eval", str(run_dir), "--episodes", "20", "--lake", "--data",
                 str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "5-way 1-shot test accuracy" in out and "(20 episodes)" in out
    assert "Lake's 20-way within-alphabet one-shot task (20 runs): error" in out
    assert "published, Bayesian Program Learning: 3.3%" in out


def test_resume_extends_the_run_and_refuses_what_would_change_it(run_dir, data_dir, capsys):
    """`--resume` applies the settings that may change (steps, logging, evaluation) and refuses
    the rest by name before touching the run (it used to keep only `steps`, silently)."""
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert main(["train", "lr=1e9", "width=8", "--run-dir", str(run_dir), "--resume",
                 "--no-progress", "--data", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert "cannot change lr (0.001 -> 1000000000.0), width (16 -> 8) when resuming" in err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before
    assert main(["train", "steps=6", "test_episodes=30", "--run-dir", str(run_dir), "--resume",
                 "--no-progress", "--data", str(data_dir)]) == 0
    res = json.loads((run_dir / "results.json").read_text())
    assert res["steps"] == 6 and res["test_episodes"] == 30
    assert json.loads((run_dir / "config.json").read_text())["test_episodes"] == 30


def test_pictures(run_dir, data_dir, tmp_path):
    assert main(["plot", str(run_dir), "--out", str(tmp_path / "c.png")]) == 0
    assert Image.open(tmp_path / "c.png").size[0] > 300
    assert main(["episode", "quickstart", "rotate=true", "--out", str(tmp_path / "e.png"),
                 "--augment", "rotate(max_degrees=20),noise(std=0.05)",
                 "--data", str(data_dir)]) == 0
    assert Image.open(tmp_path / "e.png").size[0] > 300


def test_data_listing(data_dir, capsys):
    assert main(["data", "--data", str(data_dir)]) == 0
    assert "omniglot/images_background.zip" in capsys.readouterr().out


def test_errors_are_clear(tmp_path, capsys, monkeypatch):
    with socket.socket() as s:  # downloads go to a local port where nobody listens
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("SMALLSAMPLE_OMNIGLOT_URL", f"http://127.0.0.1:{s.getsockname()[1]}/")
    assert main(["train", "no-such-preset", "--run-dir", str(tmp_path / "x")]) == 2
    assert "unknown preset 'no-such-preset'" in capsys.readouterr().err
    assert main(["train", "quickstart", "--run-dir", str(tmp_path / "y"),
                 "--data", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "could not download" in err and "images_background.zip" in err
    assert main(["data", "--data", str(tmp_path / "empty")]) == 1
    # settings are checked up front, before any data is read or file written
    for bad, message in [("ways=0", "ways=0 must be >= 1"), ("ways=1", "at least 2 classes"),
                         ("lr=nan", "lr=nan must be a finite number"),
                         ("steps=15", "steps=15 must be a multiple of steps_per_call=10"),
                         ("learner=foo", "unknown learner 'foo'"),
                         ("norm=batch", "norm='batch'; choose from separate")]:
        assert main(["train", "quickstart", bad, "--run-dir", str(tmp_path / "z")]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "z").exists()
    (tmp_path / "run").mkdir()
    assert main(["eval", str(tmp_path / "run")]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_eval_refuses_bad_counts(run_dir, capsys):
    for flag, value in [("--episodes", "-5"), ("--ways", "1"), ("--shots", "0")]:
        assert main(["eval", str(run_dir), flag, value]) == 2
        assert f"{flag} {value} must be at least" in capsys.readouterr().err


def _command(args, env_extra, tmp_path):
    """`python -m smallsample ARGS` in a fresh process (the compilation cache is a process-wide
    JAX setting that must not leak into this one)."""
    env = {**os.environ, **env_extra}
    proc = subprocess.run([sys.executable, "-m", "smallsample", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_command_line_keeps_compiled_programs(tmp_path, data_dir):
    """The `smallsample` command stores what it compiles in $SMALLSAMPLE_COMPILE_CACHE (default
    ~/.cache/smallsample/jax); `off` stores nothing; JAX_COMPILATION_CACHE_DIR, if the user set
    it, is left to JAX."""
    cache = tmp_path / "compiled"
    args = ["episode", "quickstart", "--data", str(data_dir), "--out", "ep.png"]
    fast = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}  # its programs compile quickly
    proc = _command(args, {**fast, "SMALLSAMPLE_COMPILE_CACHE": str(cache)}, tmp_path)
    assert any(p.name.endswith("-cache") for p in cache.iterdir())
    assert f"compile cache {cache} [SMALLSAMPLE_COMPILE_CACHE=off]" in proc.stderr
    proc = _command(args, {**fast, "SMALLSAMPLE_COMPILE_CACHE": "off",
                           "XDG_CACHE_HOME": str(tmp_path / "xdg")}, tmp_path)
    assert not (tmp_path / "xdg" / "smallsample" / "jax").exists()
    assert "compile cache" not in proc.stderr
    # the user's own JAX setting wins
    _command(args, {**fast, "SMALLSAMPLE_COMPILE_CACHE": str(tmp_path / "ours"),
                    "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "theirs")}, tmp_path)
    assert any((tmp_path / "theirs").iterdir()) and not (tmp_path / "ours").exists()


def test_process_settings_are_announced_and_each_can_be_turned_off(tmp_path, data_dir):
    """The command says in one line on standard error what it set, with each off switch;
    SMALLSAMPLE_RUNTIME=off sets nothing (and so says nothing)."""
    args = ["episode", "quickstart", "--data", str(data_dir), "--out", "ep.png"]
    env = {"SMALLSAMPLE_COMPILE_CACHE": str(tmp_path / "c")}
    lines = [ln for ln in _command(args, env, tmp_path).stderr.splitlines()
             if ln.startswith("smallsample: ")]
    assert len(lines) == 1 and "compile cache" in lines[0]
    if "JAX_NUM_CPU_DEVICES" not in os.environ:
        assert "one per core [SMALLSAMPLE_CPU_DEVICES=off]" in lines[0]
    proc = _command(args, {**env, "SMALLSAMPLE_CPU_DEVICES": "off"}, tmp_path)
    assert "CPU device" not in proc.stderr and "compile cache" in proc.stderr
    proc = _command(args, {"SMALLSAMPLE_COMPILE_CACHE": str(tmp_path / "off"),
                           "SMALLSAMPLE_RUNTIME": "off"}, tmp_path)
    assert "smallsample: " not in proc.stderr
    assert not (tmp_path / "off").exists()


def test_compile_cache_dir_default_and_off(monkeypatch, tmp_path):
    monkeypatch.delenv("SMALLSAMPLE_COMPILE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache_dir() == tmp_path / "smallsample" / "jax"
    monkeypatch.setenv("SMALLSAMPLE_COMPILE_CACHE", "~/compiled")
    assert compile_cache_dir() == Path.home() / "compiled"
    monkeypatch.setenv("SMALLSAMPLE_COMPILE_CACHE", "off")
    assert compile_cache_dir() is None


def test_bench_loads_a_cached_step(tmp_path):
    """`bench --compile-cache DIR`: the first run compiles and stores the step, the second loads
    it (recorded as compile_cached) and computes the same loss with it. The first runs on a
    huge-page heap (the command's default), the second as started."""
    from smallsample import runtime as procmem

    args = ["bench", "--quick", "--only", "quick-maml", "--steps", "1", "--compile-cache",
            str(tmp_path / "compiled"), "--json"]
    recs, envs = [], []
    for i in range(2):
        # the second run as started (no huge-page heap): same results
        _command([*args, f"run{i}.json"], {"SMALLSAMPLE_HEAP": "default"} if i else {}, tmp_path)
        out = json.loads((tmp_path / f"run{i}.json").read_text())
        recs.append(out["results"][0])
        envs.append(out["environment"])
    assert not recs[0]["compile_cached"] and recs[1]["compile_cached"]
    assert recs[0]["loss"] == recs[1]["loss"]
    assert all(r["page_faults_per_step"] >= 0 for r in recs)
    # the command restarted itself with glibc's huge-page tunable where the kernel wants asking
    started_with = procmem.hugepage_heap()
    if procmem.glibc() and procmem.transparent_hugepages() == "madvise":
        assert envs[0]["malloc_hugepages"]
        assert envs[1]["malloc_hugepages"] == started_with
    assert not list(tmp_path.glob(".*.part"))  # the JSON was written whole, by rename


def test_train_on_a_folder_of_class_folders(tmp_path, capsys):
    """`dataset=folder data_path=DIR`: a user's folder of class folders (RGB PNGs written here)
    trains and evaluates through the same command; the data set's errors are clear."""
    import numpy as np  # noqa: PLC0415

    rng = np.random.default_rng(0)
    for c in range(14):
        (tmp_path / "photos" / f"class{c:02d}").mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "photos" / f"class{c:02d}" / f"{i}.png")
    tiny = ["dataset=folder", f"data_path={tmp_path / 'photos'}", "image_size=12", "ways=2",
            "train_ways=2", "shots=1", "queries=1", "train_queries=1", "width=8", "steps=2",
            "steps_per_call=2", "log_every=2", "eval_every=2", "checkpoint_every=2",
            "val_episodes=2", "test_episodes=3"]
    assert main(["train", "quickstart", *tiny, "--run-dir", str(tmp_path / "run"),
                 "--no-progress"]) == 0
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["steps"] == 2 and res["test_episodes"] == 3
    assert main(["train", "quickstart", "dataset=folder", "--run-dir", str(tmp_path / "x")]) == 2
    assert "dataset=folder needs data_path" in capsys.readouterr().err
    assert main(["train", "quickstart", "dataset=imagenet21k", "--run-dir",
                 str(tmp_path / "y")]) == 2
    assert "unknown dataset 'imagenet21k'" in capsys.readouterr().err
