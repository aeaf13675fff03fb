"""Max-pool derivatives side by side: ``lax.reduce_window`` (rw), an ``x == max(x)`` mask
(eq, as JAX's reshape-max derivative does), and the library's argmax ``custom_jvp`` (lib).

    python benchmarks/bench_pool.py gcheck 20   # jit vs eager gradients of one 20-way step
    python benchmarks/bench_pool.py time 20     # 20-way 1-shot protonet steps, interleaved

``gcheck`` shows the eq derivative going wrong under ``jit`` (relative error ~1) while rw and lib
agree with eager rw; ``time`` prints the median step time of each and the ratio rw / lib.
"""

import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import smallsample.models.conv4 as c4
from smallsample.config import make_config
from smallsample.models.layers import max_pool2 as lib_pool
from smallsample.registry import build_learner, load_data
from smallsample.train import init_state, make_sampler, make_train_step, meta_gradient


def rw_pool(x):
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def _window(x):
    n, h, w, c = x.shape
    return x[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)


@jax.custom_vjp
def eq_pool(x):
    return _window(x).max(axis=(2, 4))

def _fwd(x):
    y = eq_pool(x)
    return y, (x, y)

def _bwd(res, g):
    x, y = res
    n, h, w, c = x.shape
    xr = _window(x)
    hit = (xr == y[:, :, None, :, None, :])
    # first maximum of each window only (row-major in the window), like select_and_scatter
    hit = hit.transpose(0, 1, 3, 2, 4, 5).reshape(n, h // 2, w // 2, 4, c)
    first = hit & (jnp.cumsum(hit, axis=3) == 1)
    gx = jnp.where(first, g[:, :, :, None, :], 0).reshape(n, h // 2, w // 2, 2, 2, c)
    gx = gx.transpose(0, 1, 3, 2, 4, 5).reshape(n, h // 2 * 2, w // 2 * 2, c)
    gx = jnp.pad(gx, ((0, 0), (0, h - h // 2 * 2), (0, w - w // 2 * 2), (0, 0)))
    return (gx,)

eq_pool.defvjp(_fwd, _bwd)


POOLS = {"rw": rw_pool, "eq": eq_pool, "lib": lib_pool}


def setup(ways):
    cfg = make_config("omniglot-protonet-20w1s", [f"train_ways={ways}"])
    return cfg, jnp.asarray(load_data(cfg)["train"])


def gcheck(ways):
    cfg, d = setup(ways)
    eps = make_sampler(meta_batch=1, ways=ways, shots=1, queries=5)(jax.random.key(3), d)
    out = {}
    for name, pool in POOLS.items():
        c4.max_pool2 = pool
        learner = build_learner(cfg, ways=ways)
        params = learner.init(jax.random.key(1), eps.support_x[0])

        def f(p, learner=learner):
            return meta_gradient(learner, p, eps, jax.random.key(0))

        for jit in (False, True):
            out[name, jit] = jax.tree.map(np.asarray, (jax.jit(f) if jit else f)(params))
    ref = out["rw", False]
    for k, v in out.items():
        diffs = [float(np.abs(a - b).max() / (np.abs(a).max() + 1e-30))
                 for a, b in zip(jax.tree.leaves(ref[2]), jax.tree.leaves(v[2]), strict=True)]
        print(k, "max relative gradient difference from eager rw:", f"{max(diffs):.2e}")


def timing(ways, rounds=4, per_call=5):
    cfg, d = setup(ways)
    steps = {}
    for name in ("rw", "lib"):
        c4.max_pool2 = POOLS[name]
        learner = build_learner(cfg, ways=ways)
        opt = optax.adam(1e-3)
        sample = make_sampler(meta_batch=1, ways=ways, shots=1, queries=5)
        step = jax.jit(make_train_step(learner, opt, sample, steps_per_call=per_call))
        state = init_state(learner, opt, jnp.zeros((2, 28, 28, 1)), 0)
        jax.block_until_ready(step(state, d))
        steps[name] = (step, state)
    times = {k: [] for k in steps}
    for _ in range(rounds):
        for name, (step, state) in steps.items():
            t = time.perf_counter()
            jax.block_until_ready(step(state, d))
            times[name].append((time.perf_counter() - t) / per_call)
    for k, v in times.items():
        print(k, f"median {1000 * np.median(v):.0f} ms/step")
    print(f"ratio rw / lib: {np.median(times['rw']) / np.median(times['lib']):.2f}")


if __name__ == "__main__":
    mode, ways = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 20
    gcheck(ways) if mode == "gcheck" else timing(ways)
