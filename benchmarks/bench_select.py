"""Selecting k of n embeddings on the JAX device vs NumPy: k-center greedy and importance sampling.

    python benchmarks/bench_select.py --out bench_select.json
    python benchmarks/bench_select.py --n 100000 --d 64 --k 1000 --numpy-steps 100

Prints a table and writes JSON to ``--out``. Times are the best of ``--repeats`` runs after one
warm-up (``--repeats - 2`` for k-center), compilation reported separately; ratio = NumPy time /
JAX time in the same run. k-center is run with both distance formulas, each against a NumPy
version doing the same arithmetic.
NumPy k-center is timed for ``--numpy-steps`` greedy steps and extrapolated linearly to ``k``
(every step costs the same O(n d)); pass ``--numpy-steps k`` to time it in full. The first
``--numpy-steps`` centres of both implementations are compared as a sanity check.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import numpy as np

from smallsample import select as S


def best_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def block(tree):
    return jax.tree.map(lambda a: a.block_until_ready(), tree)


# ------------------------------------------------------------------------------ NumPy peers


def np_k_center_direct(x, steps, first=0):
    """Greedy k-center, distances as sum((x - c)^2): the same arithmetic as the JAX version."""
    d = ((x - x[first]) ** 2).sum(1)
    idx = [first]
    for _ in range(steps - 1):
        c = int(np.argmax(d))
        idx.append(c)
        np.minimum(d, ((x - x[c]) ** 2).sum(1), out=d)
    return np.array(idx)


def np_k_center_matvec(x, steps, first=0):
    """Greedy k-center with precomputed norms, |x|^2 - 2 x.c + |c|^2 (one mat-vec per step)."""
    sq = np.einsum("nd,nd->n", x, x)
    d = sq - 2 * x @ x[first] + sq[first]
    idx = [first]
    for _ in range(steps - 1):
        c = int(np.argmax(d))
        idx.append(c)
        np.minimum(d, sq - 2 * x @ x[c] + sq[c], out=d)
    return np.array(idx)


def np_importance_with_replacement(rng, log_w, k):
    p = np.exp(log_w - log_w.max())
    p /= p.sum()
    idx = rng.choice(len(p), size=k, replace=True, p=p)
    ratio = 1.0 / (len(p) * p[idx])
    return idx, ratio / ratio.sum()


def np_importance_gumbel_top_k(rng, log_w, k):
    log_q = log_w - np.logaddexp.reduce(log_w)
    pert = log_q + rng.gumbel(size=log_q.shape).astype(log_q.dtype)
    top = np.argpartition(-pert, k)[:k + 1]
    top = top[np.argsort(-pert[top])]
    idx, kappa = top[:k], pert[top[k]]
    log_incl = np.log(-np.expm1(-np.exp(log_q[idx] - kappa)))
    log_raw = -np.log(len(log_w)) - log_incl
    w = np.exp(log_raw - log_raw.max())
    return idx, w / w.sum()


# ------------------------------------------------------------------------------------ main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--numpy-steps", type=int, default=100,
                        help="k-center steps timed in NumPy, extrapolated to k")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    n, d, k = args.n, args.d, args.k
    steps = min(args.numpy_steps, k)

    rng = np.random.default_rng(args.seed)
    x_np = rng.normal(size=(n, d)).astype(np.float32)
    log_w_np = rng.normal(size=n).astype(np.float32)
    device = jax.devices()[0]
    x = jax.device_put(x_np, device)
    log_w = jax.device_put(log_w_np, device)
    key = jax.random.key(args.seed)
    rows = []

    # --- k-center greedy: each JAX distance formula against the NumPy one with the same arithmetic
    kc_repeats = max(1, args.repeats - 2)  # the slow rows: warm-up + 1 timed run by default
    for precise, peer_name, peer in ((False, "numpy matvec", np_k_center_matvec),
                                     (True, "numpy direct", np_k_center_direct)):
        kc = jax.jit(lambda x, precise=precise: S.k_center_greedy(x, k=k, precise=precise))
        t = time.perf_counter()
        kc_compiled = kc.lower(x).compile()
        compile_s = time.perf_counter() - t
        jax_s = best_time(lambda c=kc_compiled: block(c(x)), kc_repeats)
        jax_idx = np.asarray(kc_compiled(x).indices)
        np_s = best_time(lambda peer=peer: peer(x_np, steps), kc_repeats) * (k / steps)
        same = int(np.sum(peer(x_np, steps) == jax_idx[:steps]))
        formula = "sum((x-c)^2)" if precise else "|x|^2-2x.c+|c|^2"
        rows.append(dict(task=f"k-center {k} of {n}, d={d}, {formula}", peer=peer_name,
                         jax_ms=jax_s * 1e3, numpy_ms=np_s * 1e3, ratio=np_s / jax_s,
                         jax_compile_s=compile_s,
                         note=(f"numpy timed {steps} steps, x{k / steps:g}" if steps < k
                               else "numpy timed in full") +
                         f"; first {steps} centres equal: {same}/{steps}"))

    # --- importance sampling, with and without replacement
    for replace in (True, False):
        fn = jax.jit(lambda key, lw, replace=replace: S.importance_sample(
            key, lw, k=k, replace=replace))
        t = time.perf_counter()
        compiled = fn.lower(key, log_w).compile()
        compile_s = time.perf_counter() - t
        jax_s = best_time(lambda compiled=compiled: block(compiled(key, log_w)), args.repeats)
        peer = np_importance_with_replacement if replace else np_importance_gumbel_top_k
        np_rng = np.random.default_rng(args.seed)
        np_s = best_time(lambda peer=peer, r=np_rng: peer(r, log_w_np, k), args.repeats)
        rows.append(dict(task=f"importance sample {k} of {n}, "
                              f"{'with' if replace else 'without'} replacement",
                         peer="numpy choice(p=...)" if replace else "numpy Gumbel-top-k",
                         jax_ms=jax_s * 1e3, numpy_ms=np_s * 1e3, ratio=np_s / jax_s,
                         jax_compile_s=compile_s, note="indices + self-normalised weights"))

    header = f"{'task':<56} {'peer':<20} {'jax ms':>9} {'numpy ms':>10} {'ratio':>7}  note"
    print(f"device: {device.device_kind} ({device.platform}); jax {jax.__version__}; "
          f"numpy {np.__version__}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['task']:<56} {r['peer']:<20} {r['jax_ms']:>9.2f} {r['numpy_ms']:>10.2f} "
              f"{r['ratio']:>6.1f}x  compile {r['jax_compile_s']:.2f}s; {r['note']}")
    result = dict(device=str(device), device_kind=device.device_kind, platform=device.platform,
                  jax=jax.__version__, numpy=np.__version__, python=platform.python_version(),
                  n=n, d=d, k=k, numpy_steps=steps, repeats=args.repeats, rows=rows)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
