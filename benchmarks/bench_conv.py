"""Conv-4 prototypical-network training step on Omniglot: XLA's convolution vs im2col, one run.

    python benchmarks/bench_conv.py [--ways 20 60]

Prints the first-call time (compile + one step) and the median of five steady steps for each
lowering; the ratio is what `conv_impl='auto'` (im2col on CPU) is based on.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from smallsample.data.omniglot import load_split
from smallsample.learners.protonet import protonet
from smallsample.models.conv4 import Conv4
from smallsample.train import init_state, make_sampler, make_train_step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ways", type=int, nargs="+", default=[20, 60])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    data = jnp.asarray(load_split("vinyals", "train").images)
    for ways in args.ways:
        times = {}
        for impl in ("xla", "im2col"):
            learner = protonet(Conv4(conv_impl=impl), ways)
            opt = optax.adam(1e-3)
            sample = make_sampler(meta_batch=1, ways=ways, shots=1, queries=5)
            step = jax.jit(make_train_step(learner, opt, sample, steps_per_call=1))
            state = init_state(learner, opt, jnp.zeros((2, 28, 28, 1)), 0)
            t = time.perf_counter()
            state, m = step(state, data)
            jax.block_until_ready(m)
            first = time.perf_counter() - t
            steady = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                state, m = step(state, data)
                jax.block_until_ready(m)
                steady.append(time.perf_counter() - t)
            times[impl] = statistics.median(steady)
            print(f"{ways}-way 1-shot 5-query, {impl:6s}: first call {first:6.1f} s, "
                  f"step {times[impl]:.3f} s", flush=True)
        print(f"{ways}-way: im2col is {times['xla'] / times['im2col']:.1f}x faster than xla")


if __name__ == "__main__":
    main()
