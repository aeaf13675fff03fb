"""A Conv-4 block's BatchNorm (batch statistics), ReLU and 2x2 max-pool, forward and backward
(gradients of the input, scale and bias), alternated in one process: the library's
``BatchStatNorm`` (moments from one pass, ``layers.batch_moments``) against the textbook two
passes (the mean, then the mean of the squared deviations), at the activation shapes of the
suite's prototypical-network step (25 support and 75 query images, 64 channels).

    python benchmarks/bench_norm.py
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

from smallsample.models.layers import BatchStatNorm, max_pool2


def two_pass(x, scale, bias):
    mean = x.mean((0, 1, 2))
    var = jnp.square(x - mean).mean((0, 1, 2))
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * scale + bias


def one_pass(x, scale, bias):
    return BatchStatNorm().apply({"params": {"scale": scale, "bias": bias}}, x)


def main(reps=20):
    fs = {name: jax.jit(jax.grad(
        lambda x, s, b, g, norm=norm: jnp.sum(max_pool2(jax.nn.relu(norm(x, s, b))) * g),
        argnums=(0, 1, 2))) for name, norm in [("two-pass", two_pass), ("one-pass", one_pass)]}
    total = dict.fromkeys(fs, 0.0)
    rng = np.random.default_rng(0)
    for shape in [(75, 28, 28, 64), (25, 28, 28, 64), (75, 14, 14, 64), (25, 14, 14, 64),
                  (75, 7, 7, 64), (25, 7, 7, 64)]:
        x = jnp.asarray(rng.standard_normal(shape) * 3 + 1, jnp.float32)
        s = jnp.asarray(rng.uniform(0.5, 1.5, 64), jnp.float32)
        b = jnp.asarray(rng.standard_normal(64), jnp.float32)
        g = jnp.asarray(rng.standard_normal((shape[0], shape[1] // 2, shape[2] // 2, 64)),
                        jnp.float32)
        outs = {k: f(x, s, b, g) for k, f in fs.items()}
        err = max(float(jnp.max(jnp.abs(a - c)) / jnp.max(jnp.abs(a)))
                  for a, c in zip(*outs.values(), strict=True))
        ts = {k: [] for k in fs}
        for _ in range(reps):
            for k, f in fs.items():
                t = time.perf_counter()
                jax.block_until_ready(f(x, s, b, g))
                ts[k].append(time.perf_counter() - t)
        med = {k: float(np.median(v)) * 1e3 for k, v in ts.items()}
        for k in total:
            total[k] += med[k]
        print(f"{'x'.join(map(str, shape)):>12}: " + "  ".join(f"{k} {v:6.2f} ms"
                                                          for k, v in med.items())
              + f"  ratio {med['two-pass'] / med['one-pass']:.2f}  max rel. diff {err:.1e}")
    print("total: " + "  ".join(f"{k} {v:.1f} ms" for k, v in total.items())
          + f"  ratio {total['two-pass'] / total['one-pass']:.2f}")


if __name__ == "__main__":
    main()
