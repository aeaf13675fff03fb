"""Kernel micro-benchmarks: the layers whose lowering the meta-learning step depends on, each
variant compiled once and the calls alternated in one process (the order flipped every round),
so the variants see the same machine load::

    python benchmarks/kernels.py conv [--impls im2col onednn xla shift] [--shapes N,HW,CIN,S ...]
    python benchmarks/kernels.py norm      # BatchNorm moments: two passes vs one
    python benchmarks/kernels.py pool      # 2x2 max-pool derivative: argmax custom_jvp vs others

``conv`` times forward + backward (both operands) of one 3x3, 64-filter layer per lowering and
shape, printing each median and the speed over im2col; the oneDNN rows need the extra built
(``smallsample onednn build``). Whole training steps are ``smallsample bench --ab``'s job.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from smallsample.models.layers import batch_moments, conv2d, max_pool2

# (n, H=W, Cin, stride): the Omniglot Conv-4 layers at 5-way 1-shot 15-query (80 images), and
# the sizes around oneDNN's threshold (ONEDNN_MIN_POSITIONS)
CONV_SHAPES = [(80, 28, 1, 1), (80, 14, 64, 1), (80, 7, 64, 1), (80, 28, 64, 2), (80, 14, 64, 2),
               (20, 7, 64, 1), (5, 14, 64, 2)]


def alternate(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, calls alternated (order flipped each round)."""
    for f in fns.values():  # compile and warm up
        jax.block_until_ready(f())
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for i in range(rounds):
        for k in names if i % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            jax.block_until_ready(fns[k]())
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_conv(impls: list[str], shapes: list[tuple[int, int, int, int]], rounds: int) -> None:
    rng = np.random.default_rng(0)
    print(f"{'n,hw,cin,stride':<18} positions " + " ".join(f"{i:>14}" for i in impls))
    for n, hw, cin, stride in shapes:
        x = jnp.asarray(rng.normal(size=(n, hw, hw, cin)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(3, 3, cin, 64)), jnp.float32)

        def make(impl, x=x, w=w, stride=stride):
            f = jax.jit(jax.value_and_grad(
                lambda x, w: jnp.sum(conv2d(x, w, stride=stride, padding=1, impl=impl) ** 2),
                argnums=(0, 1)))
            return lambda: f(x, w)

        med = alternate({i: make(i) for i in impls}, rounds)
        ho = (hw + 2 - 3) // stride + 1
        base = med.get("im2col", next(iter(med.values())))
        cells = " ".join(f"{1e3 * med[i]:7.2f}ms {base / med[i]:4.2f}x" for i in impls)
        print(f"{n},{hw},{cin},{stride:<8} {n * ho * ho:>9} {cells}", flush=True)


def _two_pass(x):
    mean = x.mean((0, 1, 2))
    return mean, ((x - mean) ** 2).mean((0, 1, 2))


def bench_norm(rounds: int) -> None:
    rng = np.random.default_rng(0)
    for shape in [(80, 28, 28, 64), (80, 14, 14, 64), (400, 14, 14, 64)]:
        x = jnp.asarray(rng.normal(size=shape), jnp.float32)
        two = jax.jit(jax.grad(lambda x: sum(jnp.sum(m) for m in _two_pass(x))))
        one = jax.jit(jax.grad(lambda x: sum(jnp.sum(m) for m in batch_moments(x))))
        med = alternate({"two passes": lambda two=two, x=x: two(x),
                         "one pass": lambda one=one, x=x: one(x)}, rounds)
        print(f"{shape}: " + ", ".join(f"{k} {1e3 * v:.2f} ms" for k, v in med.items()),
              flush=True)


def _reduce_window_pool(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def _reshape_max_pool(x):
    n, h, w, c = x.shape
    return x[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c).max((2, 4))


def bench_pool(rounds: int) -> None:
    rng = np.random.default_rng(0)
    for shape in [(80, 28, 28, 64), (80, 14, 14, 64), (1200, 7, 7, 64)]:
        x = jnp.asarray(rng.normal(size=shape), jnp.float32)
        fns = {}
        for name, pool in [("argmax custom_jvp", max_pool2), ("reduce_window", _reduce_window_pool),
                           ("reshape-max", _reshape_max_pool)]:
            g = jax.jit(jax.grad(lambda x, pool=pool: jnp.sum(pool(x) ** 2)))
            fns[name] = lambda g=g, x=x: g(x)
        med = alternate(fns, rounds)
        print(f"{shape}: " + ", ".join(f"{k} {1e3 * v:.2f} ms" for k, v in med.items()),
              flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kernel", choices=["conv", "norm", "pool"])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--impls", nargs="+", default=["im2col", "onednn", "xla"],
                   choices=["im2col", "onednn", "xla", "shift"])
    p.add_argument("--shapes", nargs="+", metavar="N,HW,CIN,STRIDE",
                   help="conv shapes (default: Conv-4's Omniglot layers and a few small ones)")
    args = p.parse_args(argv)
    if args.kernel == "conv":
        shapes = ([tuple(int(v) for v in s.split(",")) for s in args.shapes] if args.shapes
                  else CONV_SHAPES)
        if "onednn" in args.impls:
            from smallsample.models import onednn  # noqa: PLC0415

            if not onednn.available():
                print(f"# skipping onednn: {onednn.status()[1]}")
                args.impls = [i for i in args.impls if i != "onednn"]
        bench_conv(args.impls, shapes, args.rounds)
    elif args.kernel == "norm":
        bench_norm(args.rounds)
    else:
        bench_pool(args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
