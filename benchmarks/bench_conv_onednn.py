"""One 3x3, 64-filter convolution layer's forward and backward (value_and_grad of a tanh loss),
im2col against oneDNN, alternated in one process, at the layer shapes of the suite's MAML
(stride 2, 5 support and 75 query images) and prototypical-network (stride 1, 25 and 100) steps.
The crossover sets ``smallsample.models.layers.ONEDNN_MIN_POSITIONS``.

    python benchmarks/bench_conv_onednn.py
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

from smallsample.models.layers import conv2d


def run(n, hw, cin, stride, reps=30):
    """Median time of im2col and oneDNN, alternated ``reps`` times; prints their ratio."""
    x = jax.random.normal(jax.random.key(0), (n, hw, hw, cin))
    w = jax.random.normal(jax.random.key(1), (3, 3, cin, 64)) * 0.1
    r = jax.random.normal(jax.random.key(2), conv2d(x, w, stride=stride, impl="im2col").shape)
    argnums = (0, 1) if cin > 1 else (1,)  # the first layer needs no input gradient
    fs = {}
    for impl in ["im2col", "onednn"]:
        loss = lambda x, w, impl=impl: jnp.sum(jnp.tanh(conv2d(x, w, stride=stride,
                                                               impl=impl)) * r)
        fs[impl] = jax.jit(jax.value_and_grad(loss, argnums=argnums))
        jax.block_until_ready(fs[impl](x, w))
    ts = {k: [] for k in fs}
    for _ in range(reps):
        for k, f in fs.items():
            t = time.perf_counter()
            jax.block_until_ready(f(x, w))
            ts[k].append(time.perf_counter() - t)
    a, b = np.median(ts["im2col"]) * 1e3, np.median(ts["onednn"]) * 1e3
    ho = (hw + 2 - 3) // stride + 1
    print(f"n={n:3d} {hw:2d}x{hw:<2d} cin={cin:2d} stride {stride} ({n * ho * ho:6d} positions): "
          f"im2col {a:7.3f} ms  onednn {b:7.3f} ms  im2col/onednn {a / b:5.2f}")


if __name__ == "__main__":
    for n in [75, 5]:
        for hw, cin in [(28, 1), (14, 64), (7, 64), (4, 64)]:
            run(n, hw, cin, 2)
    for n in [100, 25]:
        for hw, cin in [(28, 1), (14, 64), (7, 64), (3, 64)]:
            run(n, hw, cin, 1)
