"""smallsample (JAX) vs learn2learn (PyTorch) on the same workloads, interleaved in one run.

Each measurement is a fresh subprocess (so peak RSS is per workload): ``python -m smallsample.bench
--only NAME`` and ``PEER_PYTHON benchmarks/l2l_peer.py NAME``, alternating JAX and learn2learn
``--rounds`` times per workload so that both see the same machine load. Reports, per workload, the
best-of-rounds tasks/s of each, their ratio, achieved GFLOP/s (XLA's cost analysis of the JAX step
divided by each side's step time: the same FLOP count for both), and the peak RSS of each::

    python benchmarks/compare_l2l.py --peer /tmp/l2lvenv/bin/python --threads 1 \\
        --json benchmarks/results/compare.json maml-omniglot-5w1s protonet-omniglot-5w5s-b1

``--threads N`` pins both sides to N threads (torch.set_num_threads / OMP_NUM_THREADS and XLA's
Eigen pool) and N CPUs (``sched_setaffinity``: XLA's YNNPACK matrix products ignore the thread
settings); on a loaded shared machine two-thread runs are dominated by thread contention
(PyTorch's 2-thread conv measured 5x slower than 1-thread at load 8), so 1 thread gives the
steadier ratio. ``--threads 0`` leaves both at their defaults.

``--heap hugepage`` (default) starts both sides with glibc's heap on transparent huge pages, as
the ``smallsample`` command runs (``smallsample.procmem.hugepage_env``); ``--heap default``
starts both as they are.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # smallsample, for the helpers imported where they are used
DEFAULT = ["maml-omniglot-5w1s", "fomaml-omniglot-5w1s", "anil-omniglot-5w1s",
           "maml-omniglot-5w5s", "maml-omniglot-5w1s-5steps", "protonet-omniglot-5w5s-b1",
           "protonet-omniglot-5w5s-b32"]


def _env(threads: int, xla_extra: str) -> dict:
    env = dict(os.environ)
    flags = env.get("XLA_FLAGS", "") + " " + xla_extra
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
    """This machine's CPU (:func:`smallsample.bench.cpu_info`), printed as a header line, for a
    comparison's JSON: the ratios differ between AVX2 and AVX-512 machines."""
    from smallsample.bench import cpu_info  # noqa: PLC0415

    cpu = cpu_info()
    print(f"# {cpu['cpu_model']} ({' '.join(cpu['cpu_vector_isa'] or [])})", flush=True)
    return cpu


def _pin(threads: int):
    """``preexec_fn`` confining the child to ``threads`` CPUs (None: no pinning).

    Thread-count settings are not enough: with ``intra_op_parallelism_threads=1`` XLA still runs
    its matrix products through YNNPACK on every core (measured: 1.9 CPU-seconds per second of a
    "one-thread" MAML step), so the one-thread comparison pins both sides to CPU 0.
    """
    if not threads or not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    return lambda: os.sched_setaffinity(0, cpus)


def _run(cmd: list[str], env: dict, timeout: float, threads: int = 0) -> dict:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "out.json"
        proc = subprocess.run(cmd + ["--json", str(path)], env=env, capture_output=True,
                              text=True, timeout=timeout, cwd=ROOT, preexec_fn=_pin(threads))
        if proc.returncode != 0 or not path.exists():
            return {"error": proc.stderr[-1500:]}
        out = json.loads(path.read_text())
    rec = out["results"][0] if isinstance(out, dict) else out[0]
    return rec


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", default=DEFAULT)
    p.add_argument("--peer", default="/tmp/l2lvenv/bin/python", help="the peer venv's python")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--conv-impl", default="auto")
    p.add_argument("--chunks", type=int, default=0,
                   help="JAX: sequential chunks of the meta-batch (0: the backend's default)")
    p.add_argument("--conv-bias", action="store_true", help="the JAX Conv-4 with a bias on "
                   "each convolution, learn2learn's parameters (default: without; the same "
                   "function, BatchNorm cancels the bias)")
    p.add_argument("--xla-flags", default="", help="extra XLA_FLAGS for the JAX side")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--compile-cache", metavar="DIR",
                   help="JAX side: load the step from JAX's persistent compilation cache at DIR "
                   "(one untimed JAX run per workload fills it first), so that its peak memory "
                   "is a warm start's, without the compiler")
    p.add_argument("--heap", choices=["hugepage", "default"], default="hugepage",
                   help="both sides' glibc heap: on transparent huge pages (default, as the "
                   "smallsample command runs) or as started")
    p.add_argument("--json")
    args = p.parse_args(argv)
    env = _env(args.threads, args.xla_flags)
    if args.heap == "hugepage":
        from smallsample.procmem import hugepage_env  # noqa: PLC0415

        env = hugepage_env(env)
    rows = []
    cpu = _cpu()
    print(f"# load {os.getloadavg()}, threads {args.threads or 'default'}, heap {args.heap}, "
          f"XLA_FLAGS={env['XLA_FLAGS']!r}", flush=True)
    for name in args.names:
        jax_runs, l2l_runs = [], []
        jax_cmd = ([sys.executable, "-m", "smallsample.bench", "--only", name, "--steps",
                    str(args.steps), "--conv-impl", args.conv_impl, "--no-peak"]
                   + (["--chunks", str(args.chunks)] if args.chunks else [])
                   + (["--conv-bias"] if args.conv_bias else [])
                   + (["--compile-cache", args.compile_cache] if args.compile_cache else []))
        if args.compile_cache:
            _run(jax_cmd, env, args.timeout, args.threads)  # fills the cache
        for _ in range(args.rounds):
            jax_runs.append(_run(jax_cmd, env, args.timeout, args.threads))
            l2l_runs.append(_run([args.peer, str(ROOT / "benchmarks" / "l2l_peer.py"), name,
                                  "--steps", str(args.steps)], env, args.timeout, args.threads))
        ok_j = [r for r in jax_runs if "error" not in r]
        ok_l = [r for r in l2l_runs if "error" not in r]
        row = {"name": name, "jax_runs": jax_runs, "l2l_runs": l2l_runs,
               "loadavg_after": list(os.getloadavg())}
        if ok_j and ok_l:
            bj = max(ok_j, key=lambda r: r["tasks_per_s"])
            bl = max(ok_l, key=lambda r: r["tasks_per_s"])
            flop = bj["gflop_per_step"]
            row.update({
                "jax_tasks_per_s": bj["tasks_per_s"], "l2l_tasks_per_s": bl["tasks_per_s"],
                "ratio": bj["tasks_per_s"] / bl["tasks_per_s"],
                "jax_gflop_per_s": flop / (bj["step_ms_median"] / 1e3),
                "l2l_gflop_per_s": flop / (bl["step_ms_median"] / 1e3),
                "jax_rss_mb": max(r["rss_peak_mb"] for r in ok_j),
                "l2l_rss_mb": max(r["rss_peak_mb"] for r in ok_l),
                "jax_rss_run_mb": max(r.get("rss_run_mb", 0) for r in ok_j),
                "l2l_rss_run_mb": max(r.get("rss_run_mb", 0) for r in ok_l),
                "jax_rss_imports_mb": max(r.get("rss_imports_mb", 0) for r in ok_j),
                "l2l_rss_imports_mb": max(r.get("rss_imports_mb", 0) for r in ok_l),
                "jax_compile_s": bj["compile_s"], "conv_impl": bj["conv_impl"],
                "jax_compile_cached": all(r.get("compile_cached", False) for r in ok_j),
                "chunks": bj["chunks"],
            })
            print(f"{name:<28} jax {row['jax_tasks_per_s']:7.2f} tasks/s  l2l "
                  f"{row['l2l_tasks_per_s']:7.2f}  ratio {row['ratio']:5.2f}  GFLOP/s "
                  f"{row['jax_gflop_per_s']:5.1f} vs {row['l2l_gflop_per_s']:5.1f}  RSS MB "
                  f"{row['jax_rss_mb']:.0f} vs {row['l2l_rss_mb']:.0f}, running "
                  f"{row['jax_rss_run_mb']:.0f} vs {row['l2l_rss_run_mb']:.0f}, imports "
                  f"{row['jax_rss_imports_mb']:.0f} vs {row['l2l_rss_imports_mb']:.0f}  load "
                  f"{row['loadavg_after'][0]:.1f}", flush=True)
        else:
            errs = [r["error"][-300:] for r in jax_runs + l2l_runs if "error" in r]
            print(f"{name:<28} FAILED: {errs}", flush=True)
        rows.append(row)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                               "threads": args.threads,
                                               "compile_cache": args.compile_cache,
                                               "heap": args.heap,
                                               "conv_bias": args.conv_bias,
                                               "xla_flags": env["XLA_FLAGS"], **cpu,
                                               "rows": rows},
                                              indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
