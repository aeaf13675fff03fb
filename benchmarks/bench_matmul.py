"""Where the encoder's CPU time goes: one transformer layer's matrix products alone, and the whole
layer, in XLA (jax) and in PyTorch (``--peer PYTHON``), side by side.

The layer is written here with the ops of :class:`smallsample.models.transformer.TransformerLayer`
(einsum attention, erf GELU, post-LayerNorm) but without its biases or MPNet's position bias, so
that both implementations run the same arithmetic; PyTorch's attention is its fused kernel.

The encoders spend most of their time in six matrix products per layer (query, key, value, output,
the two feed-forward ones); if XLA's products are slower than PyTorch's by about what the whole
encoder is (``bench_encoder.py``), the gap is the products', not the rest of the layer's (attention,
softmax, GELU, LayerNorm). Shapes are MPNet's (hidden 768, 12 heads, intermediate 3072) or
MiniLM's (``--hidden 384 --heads 12 --intermediate 1536``) on ``--batch`` sequences of
``--length`` tokens. Each implementation runs in its own process, alternately ``--rounds`` times;
each time is the best of ``--repeats`` calls, in float32 on all cores.

    python benchmarks/bench_matmul.py --peer /tmp/stvenv/bin/python

Prints one JSON line per (implementation, round) and the ratios (PyTorch's time over XLA's: above
1 means XLA is faster). Results and their machine belong in ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

# One script for both implementations, so both time the same shapes the same way; ``IMPL`` picks.
WORKER = r"""
import json, sys, time
import numpy as np
impl, batch, length, hidden, heads, inter, repeats = sys.argv[1], *map(int, sys.argv[2:8])
tokens = batch * length
rng = np.random.default_rng(0)
x = rng.standard_normal((batch, length, hidden), dtype=np.float32)
w = {name: (rng.standard_normal(shape, dtype=np.float32) / np.sqrt(shape[0])).astype(np.float32)
     for name, shape in [("q", (hidden, hidden)), ("k", (hidden, hidden)), ("v", (hidden, hidden)),
                         ("o", (hidden, hidden)), ("i", (hidden, inter)), ("f", (inter, hidden))]}
flops = 2 * tokens * (4 * hidden * hidden + 2 * hidden * inter)

def best(fn):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
    return min(times)

if impl == "xla":
    import jax, jax.numpy as jnp
    W = {k: jnp.asarray(v) for k, v in w.items()}
    X = jnp.asarray(x)

    @jax.jit
    def products(X, W):
        h = X.reshape(tokens, hidden)
        return [h @ W["q"], h @ W["k"], h @ W["v"], h @ W["o"], (h @ W["i"]) @ W["f"]]

    def ln(t):
        m = t.mean(-1, keepdims=True)
        return (t - m) * jax.lax.rsqrt(((t - m) ** 2).mean(-1, keepdims=True) + 1e-5)

    @jax.jit
    def layer(X, W):
        def split(t):
            return t.reshape(batch, length, heads, hidden // heads).transpose(0, 2, 1, 3)
        q, k, v = split(X @ W["q"]), split(X @ W["k"]), split(X @ W["v"])
        s = jnp.einsum("nhqc,nhkc->nhqk", q, k) / np.float32(np.sqrt(hidden // heads))
        ctx = jnp.einsum("nhqk,nhkc->nhqc", jax.nn.softmax(s, -1), v)
        ctx = ctx.transpose(0, 2, 1, 3).reshape(batch, length, hidden)
        a = ln(X + ctx @ W["o"])
        return ln(a + jax.nn.gelu(a @ W["i"], approximate=False) @ W["f"])

    run_p = lambda: jax.block_until_ready(products(X, W))
    run_l = lambda: jax.block_until_ready(layer(X, W))
else:
    import torch
    W = {k: torch.from_numpy(v) for k, v in w.items()}
    X = torch.from_numpy(x)
    ln = lambda t: torch.nn.functional.layer_norm(t, (hidden,), eps=1e-5)

    def run_p():
        with torch.inference_mode():
            h = X.reshape(tokens, hidden)
            return [h @ W["q"], h @ W["k"], h @ W["v"], h @ W["o"], (h @ W["i"]) @ W["f"]]

    def run_l():
        with torch.inference_mode():
            def split(t):
                return t.reshape(batch, length, heads, hidden // heads).transpose(1, 2)
            q, k, v = split(X @ W["q"]), split(X @ W["k"]), split(X @ W["v"])
            ctx = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            ctx = ctx.transpose(1, 2).reshape(batch, length, hidden)
            a = ln(X + ctx @ W["o"])
            return ln(a + torch.nn.functional.gelu(a @ W["i"]) @ W["f"])

tp, tl = best(run_p), best(run_l)
print(json.dumps({"impl": impl, "products_s": tp, "layer_s": tl,
                  "products_gflops": flops / tp / 1e9, "products_share": tp / tl}))
"""


def run(python: str, impl: str, args) -> dict:
    cmd = [python, "-c", WORKER, impl, *map(str, (args.batch, args.length, args.hidden,
                                                 args.heads, args.intermediate, args.repeats))]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peer", required=True, help="a Python with torch (never this project's)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--length", type=int, default=16)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--intermediate", type=int, default=3072)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    rows = []
    for _ in range(args.rounds):
        for impl, python in (("xla", sys.executable), ("torch", args.peer)):
            rows.append(run(python, impl, args))
            print(json.dumps(rows[-1]), flush=True)
    for key in ("products_s", "layer_s"):
        ratios = [t[key] / x[key] for x, t in zip(rows[::2], rows[1::2])]
        print(f"{key}: torch / xla per round {', '.join(f'{r:.2f}' for r in ratios)} "
              f"(median {statistics.median(ratios):.2f})")


if __name__ == "__main__":
    main()
