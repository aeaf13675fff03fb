"""smallsample (JAX) vs learn2learn (PyTorch), one step each in lockstep: paired ratios.

Both sides are started once, built and warmed up, and then kept waiting; the driver asks one for a
single step, then the other, and so on (ABBA order, so a steady drift favours neither). Only one
side runs at a time. Each pair's ratio (learn2learn's step time / JAX's, the same meta-batch on
both sides, so JAX's tasks/s over learn2learn's) comes from two steps about a second apart: on a
shared machine whose speed moves within a minute, this is what makes the ratio trustworthy.
Reports the median of the paired ratios with a bootstrap 95% interval, their quartiles, and the
share of pairs at or above ``--target``::

    python benchmarks/paired_l2l.py maml-omniglot-5w1s --peer /tmp/l2lvenv/bin/python \\
        --threads 0 --pairs 40 --json /tmp/paired.json

``--baseline DIR`` adds a third worker: the JAX side of another checkout of this project (an
earlier commit, e.g. ``git worktree add /tmp/base REV``), stepped in the same rotation, so a
change is measured before and after in one run against the same learn2learn steps.

Both sides train for real (Adam steps on their synthetic data). ``--threads N`` gives each side N
threads and pins it to N CPUs (thread-count settings alone are not enough: XLA's matrix products
use every core); ``--heap hugepage`` starts both on glibc's huge-page heap, as the
``smallsample`` command runs. Memory is not measured here (all processes are resident at once):
``smallsample bench`` and ``l2l_peer.py NAME`` measure it one process at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _env(threads: int) -> dict:
    """The workers' environment: ``threads`` threads each (0: the libraries' defaults)."""
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "")
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
        env["L2L_PEER_THREADS"] = str(threads)
        if threads == 1:
            flags += " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        else:
            flags += f" intra_op_parallelism_threads={threads}"
    env["XLA_FLAGS"] = flags.strip()
    env["JAX_PLATFORMS"] = env.get("JAX_PLATFORMS", "cpu")
    return env


def _cpu() -> dict:
    """This machine's CPU (:func:`smallsample.bench.cpu_info`), printed as a header line, for the
    JSON: the ratios differ between AVX2 and AVX-512 machines."""
    from smallsample.bench import cpu_info  # noqa: PLC0415

    cpu = cpu_info()
    print(f"# {cpu['cpu_model']} ({' '.join(cpu['cpu_vector_isa'] or [])})", flush=True)
    return cpu


def _pin(threads: int):
    """``preexec_fn`` confining the child to ``threads`` CPUs (None: no pinning)."""
    if not threads or not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    return lambda: os.sched_setaffinity(0, cpus)


def serve(step, info: dict, loss=float) -> int:
    """A worker's side of the lockstep protocol: prints ``@@ready INFO``, then for each ``step``
    line on stdin times one ``step()`` (which must finish its work before returning) and prints
    ``@@ SECONDS LOSS`` (``loss(step's result)``, after the timing); ``quit`` or end of input
    stops it. ``l2l_peer.py --serve`` runs it with learn2learn's step."""
    print("@@ready", json.dumps(info), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        t0 = time.perf_counter()
        out = step()
        dt = time.perf_counter() - t0
        print(f"@@ {dt!r} {loss(out)!r}", flush=True)
    return 0


def jax_worker(name: str, warmup: int, conv_impl: str, conv_bias: bool, devices: int = 1) -> int:
    """The JAX side: the suite's step (:func:`smallsample.bench.train_step`), in the project's
    Python; its meta-batch split over ``devices`` host devices (the driver sets their number)."""
    import jax  # noqa: PLC0415

    from smallsample.bench import WORKLOADS, train_step, with_settings  # noqa: PLC0415
    from smallsample.bench.suite import resolve  # noqa: PLC0415
    from smallsample.parallel import task_mesh  # noqa: PLC0415

    w = with_settings(WORKLOADS[name], {"conv_impl": conv_impl, "conv_bias": str(conv_bias),
                                        "devices": str(devices)})
    w, devices = resolve(w)
    mesh = task_mesh(jax.devices()[:devices]) if devices > 1 else None
    step, init, data = train_step(w, mesh=mesh)
    state = init()
    compiled = jax.jit(step, donate_argnums=0).lower(state, data).compile()

    def one_step():
        nonlocal state
        state, metrics = compiled(state, data)
        return jax.block_until_ready(metrics)

    for _ in range(warmup):
        one_step()
    info = {"framework": "jax", "meta_batch": w.meta_batch, "chunks": w.config.chunks,
            "conv_impl": conv_impl, "devices": devices, "jax": jax.__version__}
    return serve(one_step, info, loss=lambda m: float(m["loss"].mean()))


class Worker:
    """A lockstep worker process: ``step()`` -> seconds of one step."""

    def __init__(self, label: str, cmd: list[str], env: dict, threads: int, timeout: float):
        self.label, self.timeout = label, timeout
        self.err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, text=True, env=env, cwd=ROOT,
                                     preexec_fn=_pin(threads))
        # a thread reads the worker's lines, so that waiting for one can time out
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.info = json.loads(self._reply("@@ready"))

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")  # end of output: the worker exited

    def _reply(self, prefix: str) -> str:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.proc.kill()
                raise TimeoutError(f"{self.label} worker: no reply in {self.timeout:.0f} s "
                                   "(killed)") from None
            if not line:  # the worker exited
                self.proc.wait()
                self.err.seek(0)
                raise RuntimeError(f"{self.label} worker exited with code "
                                   f"{self.proc.returncode}:\n{self.err.read()[-2000:]}")
            if line.startswith(prefix):
                return line[len(prefix):].strip()

    def step(self) -> tuple[float, float]:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        seconds, loss = self._reply("@@ ").split()
        return float(seconds), float(loss)

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.err.close()


def summarise(jax_s, l2l_s, target: float, seed: int = 0, resamples: int = 10_000) -> dict:
    """Paired ratios ``l2l_s[i] / jax_s[i]``: median, bootstrap 95% interval of the median,
    quartiles, share at or above ``target``, and the ratio of the two medians."""
    jax_s, l2l_s = np.asarray(jax_s, np.float64), np.asarray(l2l_s, np.float64)
    if jax_s.shape != l2l_s.shape or jax_s.size == 0:
        raise ValueError(f"need equal, non-empty step lists, got {jax_s.size} and {l2l_s.size}")
    r = l2l_s / jax_s
    rng = np.random.default_rng(seed)
    boot = np.median(r[rng.integers(0, r.size, (resamples, r.size))], axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    q1, q3 = np.percentile(r, [25, 75])
    return {"pairs": int(r.size), "ratio_median": float(np.median(r)),
            "ratio_median_ci95": [float(lo), float(hi)], "ratio_q1": float(q1),
            "ratio_q3": float(q3), "ratio_min": float(r.min()), "ratio_max": float(r.max()),
            "share_at_target": float((r >= target).mean()), "target": target,
            "ratio_of_medians": float(np.median(l2l_s) / np.median(jax_s)),
            "jax_step_ms_median": 1e3 * float(np.median(jax_s)),
            "l2l_step_ms_median": 1e3 * float(np.median(l2l_s))}


def run_pairs(name: str, args, env: dict) -> dict:
    # imported here: l2l_peer.py loads this file for serve() in the peer's Python, without JAX
    from smallsample.bench import WORKLOADS  # noqa: PLC0415
    from smallsample.parallel import auto_devices, episode_values, split_devices  # noqa: PLC0415

    w = WORKLOADS[name]
    c = w.config
    if args.devices:
        devices = split_devices(w.meta_batch, args.devices)
    else:  # what training does on this many cores (smallsample.runtime.cpu_devices_per_core)
        cores = args.threads or len(os.sched_getaffinity(0))
        values = episode_values(c.effective_train_ways, c.effective_train_shots,
                                c.train_queries, w.image)
        devices = auto_devices(w.meta_batch, values, cores, "cpu")
    worker_args = ["--worker", name, "--warmup", str(args.warmup), "--conv-impl",
                   args.conv_impl, "--devices", str(devices)] + (
                       ["--conv-bias"] if args.conv_bias else [])
    jax_env = dict(env, XLA_FLAGS=" ".join(
        [env["XLA_FLAGS"], f"--xla_force_host_platform_device_count={devices}"]).strip())
    specs = [("jax", [sys.executable, str(Path(__file__).resolve()), *worker_args], jax_env)]
    if args.baseline:
        base = Path(args.baseline).resolve()
        specs.append(("baseline", [sys.executable, str(base / "benchmarks" / "paired_l2l.py"),
                                   *worker_args], dict(jax_env, PYTHONPATH=str(base))))
    specs.append(("learn2learn", [args.peer, str(ROOT / "benchmarks" / "l2l_peer.py"), name,
                                  "--serve", str(args.warmup)], env))
    workers: list[Worker] = []
    try:
        for label, cmd, wenv in specs:
            workers.append(Worker(label, cmd, wenv, args.threads, args.timeout))
        batches = {wk.label: wk.info["meta_batch"] for wk in workers}
        if len(set(batches.values())) != 1:
            raise RuntimeError(f"{name}: different meta-batches {batches}")
        times = {wk.label: [] for wk in workers}
        losses = {wk.label: [] for wk in workers}
        for i in range(args.pairs):
            for wk in workers if i % 2 == 0 else workers[::-1]:
                sec, loss = wk.step()
                times[wk.label].append(sec)
                losses[wk.label].append(loss)
    finally:
        for wk in workers:
            wk.close()
    rec = {"name": name, **summarise(times["jax"], times["learn2learn"], args.target),
           "jax_step_s": times["jax"], "l2l_step_s": times["learn2learn"],
           "jax_loss_last": losses["jax"][-1], "l2l_loss_last": losses["learn2learn"][-1],
           "jax": workers[0].info, "l2l": workers[-1].info,
           "loadavg_after": list(os.getloadavg())}
    if args.baseline:
        rec["baseline"] = {"src": str(args.baseline), "step_s": times["baseline"],
                           **summarise(times["baseline"], times["learn2learn"], args.target),
                           "new_over_baseline": summarise(times["jax"], times["baseline"],
                                                          1.0)}
    return rec


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", default=["maml-omniglot-5w1s"])
    p.add_argument("--peer", default="/tmp/l2lvenv/bin/python", help="the peer venv's python")
    p.add_argument("--pairs", type=int, default=30, help="timed steps of each side")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps of each side first")
    p.add_argument("--threads", type=int, default=0,
                   help="0: both sides' defaults; N: N threads and N CPUs each")
    p.add_argument("--target", type=float, default=2.0, help="ratio to count pairs against")
    p.add_argument("--conv-impl", default="auto")
    p.add_argument("--conv-bias", action="store_true")
    p.add_argument("--heap", choices=["hugepage", "default"], default="hugepage")
    p.add_argument("--timeout", type=float, default=900, help="seconds a worker may take to "
                   "start or to answer")
    p.add_argument("--devices", type=int, default=0,
                   help="the JAX side's meta-batch split over at most this many CPU devices (the "
                        "most that divide it); 0: as training does by default, one device per "
                        "core (--threads N: N cores) for tasks of small episodes "
                        "(smallsample.parallel.auto_devices); 1: not split")
    p.add_argument("--baseline", metavar="DIR", help="also step the JAX side of the checkout in "
                   "DIR (an earlier version), in the same rotation")
    p.add_argument("--json")
    p.add_argument("--worker", metavar="NAME", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return jax_worker(args.worker, args.warmup, args.conv_impl, args.conv_bias, args.devices)
    if args.pairs < 1:
        p.error(f"--pairs must be >= 1, got {args.pairs}")
    env = _env(args.threads)
    if args.heap == "hugepage":
        from smallsample.runtime import hugepage_env  # noqa: PLC0415

        env = hugepage_env(env)
    cpu = _cpu()
    print(f"# load {os.getloadavg()}, threads {args.threads or 'default'}, heap {args.heap}, "
          f"{args.pairs} pairs after {args.warmup} warm-up steps each", flush=True)
    rows = []
    for name in args.names:
        t0 = time.monotonic()
        rec = run_pairs(name, args, env)
        rec["wall_s"] = time.monotonic() - t0
        lo, hi = rec["ratio_median_ci95"]
        print(f"{name:<28} ratio median {rec['ratio_median']:.2f} (95% CI {lo:.2f}-{hi:.2f}, "
              f"quartiles {rec['ratio_q1']:.2f}-{rec['ratio_q3']:.2f}, range "
              f"{rec['ratio_min']:.2f}-{rec['ratio_max']:.2f}), {100 * rec['share_at_target']:.0f}%"
              f" of pairs >= {args.target:g}; step ms JAX {rec['jax_step_ms_median']:.0f}, "
              f"l2l {rec['l2l_step_ms_median']:.0f}; load {rec['loadavg_after'][0]:.1f}",
              flush=True)
        if args.baseline:
            b = rec["baseline"]
            lo, hi = b["ratio_median_ci95"]
            nlo, nhi = b["new_over_baseline"]["ratio_median_ci95"]
            print(f"{'  baseline':<28} ratio median {b['ratio_median']:.2f} (95% CI "
                  f"{lo:.2f}-{hi:.2f}), step ms {b['jax_step_ms_median']:.0f}; this checkout "
                  f"over the baseline {b['new_over_baseline']['ratio_median']:.3f} "
                  f"({nlo:.3f}-{nhi:.3f})", flush=True)
        rows.append(rec)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "threads": args.threads,
            "heap": args.heap, "pairs": args.pairs, "warmup": args.warmup,
            "conv_bias": args.conv_bias, "xla_flags": env["XLA_FLAGS"], "devices": args.devices,
            "statistic": "median of the paired ratios, bootstrap 95% interval",
            **cpu,
            "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
