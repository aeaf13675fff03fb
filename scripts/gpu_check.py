"""GPU check: the meta-training speed suite and a whole MAML Omniglot training run on one GPU, in a
fixed time budget, fetching nothing. Sized for one NVIDIA H200 whose Python already has JAX with
CUDA (plus flax, optax and chex; dm-pix is the one dependency such images tend to lack).

    python3 scripts/gpu_check.py [--out DIR] [--data DIR] [--budget SECONDS] [--dry-run]

Stages, each a separate process under its own time limit, so one slow compile or failure cannot
take the others with it; ``gpu_check.json`` in ``--out`` is rewritten after each stage:

1. ``environment``: ``nvidia-smi``, JAX's devices and the package versions.
2. ``maml_impls``: ``smallsample bench`` of MAML Omniglot 5-way 1-shot (second order, meta-batch
   32) with each convolution lowering (``xla``: cuDNN; ``im2col``; ``shift``); the fastest is
   ``best_conv_impl``.
3. ``train``: ``smallsample train omniglot-maml-5w1s`` (Finn et al.'s protocol: 60,000 steps of
   32 tasks, then 600 test episodes) with that lowering. If the step time of stage 2 says the
   60,000 steps do not fit the time left, the run is shortened to what fits and the record says
   so, with the 60,000-step time projected from the measured steady-state rate.
4. ``suite``: the rest of the standard workloads with ``--conv-impl auto`` (what users get), then,
   time permitting, the MAML family with cuDNN's convolutions (``xla``) for comparison.
5. ``tests``: the model and MAML tests on the GPU, four pytest workers
   (``JAX_DEFAULT_MATMUL_PRECISION=highest``: the tests compare float32 results with float64
   references at float32 tolerances, which the GPU's default TF32 products do not meet by
   design).

What it measured so far: ``benchmarks/README.md`` and ``docs/performance.md`` ("gpu").

The last lines printed are a summary table. ``--dry-run`` runs every stage with tiny sizes (for
checking the script on a CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPLS = ("xla", "im2col", "shift")
MAML_FAMILY = ["fomaml-omniglot-5w1s", "anil-omniglot-5w1s", "maml-omniglot-5w5s",
               "maml-omniglot-5w1s-5steps", "maml-omniglot-20w1s"]
SUITE = MAML_FAMILY + ["protonet-omniglot-5w5s-b1", "protonet-omniglot-5w5s-b32",
                       "protonet-omniglot-20w1s", "maml-mini-5w5s", "protonet-mini-5w5s",
                       "protonet-mini-5w5s-resnet12"]
FULL_STEPS = 60_000


class Check:
    def __init__(self, out: Path, budget: float, dry: bool):
        self.out, self.budget, self.dry = out, budget, dry
        self.t0 = time.monotonic()
        self.work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.log = open(out / "gpu_check.log", "a", buffering=1)  # noqa: SIM115
        self.record: dict = {"budget_s": budget, "dry_run": dry,
                             "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log.write(text + "\n")

    def save(self) -> None:
        # written whole, by rename; not data.files.atomic_write_bytes: this script imports
        # nothing of the library, so a GPU image missing one of its dependencies still gets a
        # record of that (stage 1)
        self.record["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        tmp = self.out / "gpu_check.json.part"
        tmp.write_text(json.dumps(self.record, indent=2) + "\n")
        os.replace(tmp, self.out / "gpu_check.json")

    def run(self, name: str, cmd: list[str], timeout: float, env: dict | None = None) -> dict:
        """Runs ``cmd`` (output to the log and stdout) for at most ``timeout`` seconds."""
        timeout = max(1.0, min(timeout, self.left()))
        self.say(f"== {name} (limit {timeout:.0f} s): {' '.join(cmd)}")
        t = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})},
                                start_new_session=True)
        deadline = t + timeout
        timed_out, pending = False, b""
        fd = proc.stdout.fileno()
        try:
            while True:  # raw reads: a line without its newline yet (pytest's dots) cannot block
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                ready, _, _ = select.select([fd], [], [], min(remaining, 5.0))
                if not ready:
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    self.say(line.decode(errors="replace")[-400:])
        finally:
            if pending:
                self.say(pending.decode(errors="replace")[-400:])
            if not timed_out:  # output closed: give the process the rest of its time to exit
                try:
                    proc.wait(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    timed_out = True
            if timed_out:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            rc = proc.wait()
            proc.stdout.close()
        res = {"rc": rc, "seconds": round(time.monotonic() - t, 1), "timed_out": timed_out}
        self.say(f"-- {name}: rc {rc}, {res['seconds']} s{' (TIMED OUT)' if timed_out else ''}")
        return res

    def bench(self, name: str, args: list[str], timeout: float) -> dict:
        path = self.work / f"{name}.json"
        res = self.run(name, [sys.executable, "-m", "smallsample.bench", *args,
                              "--json", str(path)], timeout)
        if path.exists():
            res.update(json.loads(path.read_text()))
        return res


def environment(c: Check) -> None:
    info: dict = {}
    if shutil.which("nvidia-smi"):
        p = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,"
                            "clocks.max.sm,power.limit", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        info["nvidia_smi"] = p.stdout.strip() or p.stderr.strip()
    code = ("import json, importlib.metadata as m, jax\n"
            "v = {}\n"
            "for n in ['jax', 'jaxlib', 'flax', 'optax', 'chex', 'dm-pix', 'numpy']:\n"
            "    try: v[n] = m.version(n)\n"
            "    except Exception as e: v[n] = 'missing'\n"
            "print(json.dumps({'devices': [str(d) for d in jax.devices()],\n"
            "                  'backend': jax.default_backend(), 'versions': v}))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    try:
        info.update(json.loads(p.stdout.strip().splitlines()[-1]))
    except (IndexError, json.JSONDecodeError):
        info["error"] = (p.stdout + p.stderr)[-2000:]
    c.say(f"environment: {json.dumps(info)}")
    c.record["environment"] = info


def _rate(rec: dict) -> float:
    rows = rec.get("results") or []
    return rows[0].get("tasks_per_s", 0.0) if rows and "error" not in rows[0] else 0.0


def maml_impls(c: Check) -> str:
    recs = {}
    for impl in IMPLS:
        args = (["--quick", "--only", "quick-maml", "--steps", "2"] if c.dry else
                ["--only", "maml-omniglot-5w1s", "--steps", "20"])
        recs[impl] = c.bench(f"maml_{impl}", args + ["--conv-impl", impl],
                             timeout=60 if c.dry else 100)
        c.record["maml_impls"] = recs
        c.save()
    rates = {impl: _rate(r) for impl, r in recs.items()}
    best = max(rates, key=rates.get) if any(rates.values()) else "xla"
    c.record["best_conv_impl"] = best
    c.say(f"maml 5w1s tasks/s by lowering: {rates}; best {best}")
    return best


def train(c: Check, impl: str, data: Path, reserve: float) -> None:
    rows = c.record["maml_impls"].get(impl, {}).get("results") or [{}]
    step_s = rows[0].get("step_ms_median", 1000.0) / 1e3
    startup = 30 if c.dry else 90          # data decoding, compilation, the test episodes
    cap = min(c.left() - reserve - startup, FULL_STEPS * step_s * 1.3)
    per_step = step_s * 1.25               # margin: the loop samples episodes and logs
    steps = min(FULL_STEPS, int(cap / per_step) // 50 * 50) if cap > 0 else 0
    if c.dry:  # the plumbing only: a few steps with the CPU's own lowering
        impl, steps = "auto", 20
    rec: dict = {"conv_impl": impl, "steps_planned": steps, "bench_step_ms": step_s * 1e3}
    c.record["train"] = rec
    if steps < (10 if c.dry else 50):
        rec["skipped"] = f"not enough time: {c.left():.0f} s left, {step_s * 1e3:.1f} ms a step"
        c.say(f"train: {rec['skipped']}")
        c.save()
        return
    run_dir = c.work / "run"
    settings = ["omniglot-maml-5w1s", f"conv_impl={impl}", f"steps={steps}"]
    if c.dry:
        settings += ["test_episodes=20"]
    rec.update(c.run("train", [sys.executable, "-m", "smallsample", "train", *settings,
                               "--data", str(data), "--run-dir", str(run_dir), "--no-progress"],
                     timeout=steps * per_step * 1.2 + startup + 60))
    if (run_dir / "results.json").exists():
        rec["results"] = json.loads((run_dir / "results.json").read_text())
        shutil.copy(run_dir / "results.json", c.out / "train_results.json")
    if (run_dir / "metrics.jsonl").exists():
        shutil.copy(run_dir / "metrics.jsonl", c.out / "train_metrics.jsonl")
        lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        rates = [x["tasks_per_s"] for x in lines if "tasks_per_s" in x]
        rec["steps_done"] = max((x["step"] for x in lines if "step" in x), default=0)
        if len(rates) > 2:
            steady = statistics.median(rates[2:])  # past the first calls (compilation)
            rec["steady_tasks_per_s"] = steady
            rec["steady_step_ms"] = 32e3 / steady
            rec["projected_full_run_s"] = FULL_STEPS * 32 / steady
    res = rec.get("results") or {}
    if res.get("train_seconds"):
        rec["steps_per_s_wall"] = res["steps"] / res["train_seconds"]
    c.say(f"train: {json.dumps({k: v for k, v in rec.items() if k != 'results'})}")
    c.save()


def suite(c: Check, best: str, reserve: float) -> None:
    names = ["quick-protonet"] if c.dry else SUITE
    args = (["--quick"] if c.dry else []) + ["--steps", "2" if c.dry else "10", "--only", *names]
    c.record["suite_auto"] = c.bench("suite_auto", args, timeout=c.left() - reserve)
    c.save()
    if not c.dry and c.left() > reserve + 60:
        c.record["suite_xla"] = c.bench(
            "suite_xla", ["--steps", "10", "--conv-impl", "xla", "--only", *MAML_FAMILY],
            timeout=c.left() - reserve)
        c.save()


def tests(c: Check, data: Path) -> None:
    if c.left() < 45:
        c.record["tests"] = {"skipped": f"{c.left():.0f} s left"}
        return
    files = ["tests/test_models.py"] if c.dry else ["tests/test_models.py",
                                                    "tests/test_learners_maml.py"]
    c.record["tests"] = c.run("tests", [sys.executable, "-m", "pytest", "-q", "-x", "-n", "4",
                                        "-p", "no:cacheprovider", *files],
                              timeout=c.left() - 10,
                              env={"JAX_DEFAULT_MATMUL_PRECISION": "highest",
                                   "SMALLSAMPLE_DATA": str(data)})
    c.save()


def summary(c: Check) -> None:
    r = c.record
    c.say("\n# summary")
    c.say(f"environment: {r.get('environment', {}).get('nvidia_smi', '')} "
          f"{r.get('environment', {}).get('versions', '')}")
    for impl, rec in r.get("maml_impls", {}).items():
        for row in rec.get("results", []):
            c.say(f"maml 5w1s {impl:<7} " + _row(row))
    t = r.get("train", {})
    res = t.get("results") or {}
    c.say(f"train: {t.get('steps_planned')} steps ({t.get('conv_impl')}), "
          f"{res.get('train_seconds', float('nan')):.0f} s wall, steady "
          f"{t.get('steady_step_ms', float('nan')):.2f} ms/step, projected 60k steps "
          f"{t.get('projected_full_run_s', float('nan')):.0f} s; test "
          f"{100 * (res.get('test_accuracy') or float('nan')):.2f} +- "
          f"{100 * (res.get('test_ci95') or float('nan')):.2f}% rc {t.get('rc')}")
    for key in ("suite_auto", "suite_xla"):
        for row in r.get(key, {}).get("results", []):
            c.say(f"{key:<10} " + _row(row))
    c.say(f"tests: {r.get('tests')}")
    c.say(f"elapsed {r.get('elapsed_s')} s of {c.budget:.0f}")


def _row(row: dict) -> str:
    try:
        return _format_row(row)
    except (KeyError, TypeError, ValueError):
        return json.dumps(row)[:300]


def _format_row(row: dict) -> str:
    if "error" in row:
        return f"{row['name']}: ERROR {row['error'][:200]}"
    share = (f"({100 * row['fraction_of_matmul_peak']:.0f}% of a float32 product) "
             if "fraction_of_matmul_peak" in row else "")
    return (f"{row['name']:<28} {row['tasks_per_s']:9.1f} tasks/s {row['step_ms_median']:8.2f} "
            f"ms [{row['step_ms_min']:.2f}-{row['step_ms_max']:.2f}] compile "
            f"{row['compile_s']:5.1f} s {row['achieved_gflop_per_s']:8.1f} GFLOP/s {share}dev "
            f"{row.get('device_peak_mb', float('nan')):.0f} MB ({row['conv_impl']})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out")
    p.add_argument("--data", default=os.environ.get("SMALLSAMPLE_DATA") or "../shared/data",
                   help="folder holding omniglot/ (the upstream zips)")
    p.add_argument("--budget", type=float, default=540, help="seconds for all stages")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes, to check the script")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data).resolve()
    if not (data / "omniglot" / "images_background.zip").exists():
        p.error(f"{data}/omniglot/images_background.zip not found: pass --data DIR")
    os.environ["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # device peak = the step's
    os.environ["PYTHONUNBUFFERED"] = "1"
    c = Check(out, args.budget, args.dry_run)
    try:
        environment(c)
        c.save()
        best = maml_impls(c)
        train(c, best, data, reserve=(40 if c.dry else 120))
        suite(c, best, reserve=(30 if c.dry else 70))
        tests(c, data)
    finally:
        c.save()
        summary(c)
        shutil.rmtree(c.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
