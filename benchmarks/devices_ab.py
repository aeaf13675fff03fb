"""The suite's workloads on one CPU device against their meta-batch split over several, A/B in
one process: the process gets ``--devices`` CPU devices (``jax_num_cpu_devices``, one per core
by default, as the ``smallsample`` command sets up), each workload's step is compiled once on
device 0 alone and once split over the most devices that divide its meta-batch, and the calls
alternate (the order flipped every round). Prints each one's median and minimum step time and
the median over rounds of the one-device time over the split one's::

    python benchmarks/devices_ab.py maml-omniglot-5w1s protonet-omniglot-5w5s-b32 --rounds 12

Workloads with a meta-batch of 1 are skipped (nothing to split).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from maml_model_ab import alternate  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="+", help="workloads of smallsample bench --list")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--devices", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--conv-impl", default="auto")
    args = p.parse_args(argv)
    jax.config.update("jax_num_cpu_devices", args.devices)  # a script: before JAX starts

    from smallsample.bench import WORKLOADS, train_step  # noqa: PLC0415
    from smallsample.parallel import split_devices, task_mesh  # noqa: PLC0415

    print(f"# {jax.device_count()} CPU devices, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    for name in args.names:
        w = WORKLOADS[name]
        n = split_devices(w.meta_batch, args.devices)
        if n == 1:
            print(f"{name}: meta-batch {w.meta_batch}, nothing to split; skipped", flush=True)
            continue
        steps = {}
        for label, mesh in (("one", None), (f"split{n}", task_mesh(jax.devices()[:n]))):
            # chunks: the default, one task per device at a time
            step, init, data = train_step(w, conv_impl=args.conv_impl, mesh=mesh)
            state = init()
            compiled = jax.jit(step).lower(state, data).compile()
            jax.block_until_ready(compiled(state, data))  # warm-up
            steps[label] = (compiled, state)
        print(f"{name} (meta-batch {w.meta_batch}):", flush=True)
        alternate(steps, data, rounds=args.rounds, batch=w.meta_batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
