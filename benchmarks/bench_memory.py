"""Resident memory of a long training run: does the host loop leak?

Runs ``train_and_evaluate`` (the command line's loop: metrics, validation, checkpoints, all of it)
on a small synthetic Omniglot-shaped problem for ``--steps`` steps, samples the process's resident
set size every ``--every`` seconds from a thread, and reports the RSS after the warm-up (the first
``--warmup`` fraction of the run: compilation, first validation, first checkpoint), at the end,
and the least-squares slope over the rest, in MB per 1,000 steps::

    python benchmarks/bench_memory.py --steps 5000 [--learner maml] [--json out.json]

The run passes when the RSS after the warm-up grows by less than ``--bound`` MB (default 20) to
the end; the exit status says so (a benchmark, not a test: CI does not run it).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from smallsample.bench.memory import current_rss_mb
from smallsample.config import make_config
from smallsample.train import train_and_evaluate


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--learner", default="protonet")
    p.add_argument("--every", type=float, default=0.25, help="seconds between RSS samples")
    p.add_argument("--warmup", type=float, default=0.3, help="fraction of the run not judged")
    p.add_argument("--bound", type=float, default=20.0, help="allowed growth after warm-up, MB")
    p.add_argument("--json")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    data = {k: rng.integers(0, 256, (n, 20, 28, 28, 1), dtype=np.uint8)
            for k, n in (("train", 100), ("val", 30), ("test", 30))}
    backbone = "conv4-stride" if args.learner != "protonet" else "conv4"
    config = make_config("quickstart", [
        f"learner={args.learner}", f"backbone={backbone}", "width=16", "train_ways=5",
        "train_queries=5", "meta_batch=2", f"steps={args.steps}", "steps_per_call=10",
        "log_every=10", "eval_every=100", "checkpoint_every=100", "val_episodes=20",
        "test_episodes=0", "inner_lr=0.1"])  # no final test: the loop alone
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample():
        while not done.is_set():
            samples.append((time.perf_counter(), current_rss_mb()))
            time.sleep(args.every)

    thread = threading.Thread(target=sample, daemon=True)
    t0 = time.perf_counter()
    thread.start()
    with tempfile.TemporaryDirectory() as d:
        res = train_and_evaluate(config, Path(d) / "run", progress=False, data=data,
                                 log=lambda s: None)
    done.set()
    thread.join()
    t = np.array([s[0] - t0 for s in samples])
    rss = np.array([s[1] for s in samples])
    # steps happen at a steady rate after compiling; time stands in for steps
    start = t[0] + args.warmup * (t[-1] - t[0])
    after = t >= start
    slope_per_s = np.polyfit(t[after], rss[after], 1)[0] if after.sum() > 2 else float("nan")
    steps_per_s = args.steps / res.seconds
    growth = float(rss[after][-1] - rss[after][0])
    out = {"steps": args.steps, "learner": args.learner, "seconds": res.seconds,
           "rss_after_warmup_mb": float(rss[after][0]), "rss_end_mb": float(rss[-1]),
           "rss_peak_mb": float(rss.max()), "growth_after_warmup_mb": growth,
           "slope_mb_per_1000_steps": float(slope_per_s / steps_per_s * 1000),
           "bound_mb": args.bound, "samples": len(samples),
           "rss_by_tenth_mb": [float(rss[min(len(rss) - 1, int(i * len(rss) / 10))])
                               for i in range(11)]}
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0 if growth < args.bound else 1


if __name__ == "__main__":
    raise SystemExit(main())
