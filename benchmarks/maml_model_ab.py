"""MAML Omniglot 5w1s (second order, meta-batch 32) meta-training steps of Conv-4 variants, A/B in
one process: each variant is compiled once, then the calls alternate (the order flipped every
round, fair under a load that changes), and each variant's median and minimum step time and its
median paired ratio to the first variant are printed::

    python benchmarks/maml_model_ab.py default conv-bias --rounds 20
    python benchmarks/maml_model_ab.py default no-norm --rounds 12

Variants:
  default    ``Conv4(downsample='stride', bn_scale_init='uniform')``, what the suite runs;
  conv-bias  with a bias on each convolution (learn2learn's parameters; the same function);
  no-norm    BatchNorm replaced by its scale and shift alone: a different network, the bound on
             what any faster BatchNorm could gain.
"""

from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import smallsample.models.conv4 as conv4
from smallsample.learners.maml import maml
from smallsample.train import init_state, make_sampler, make_train_step


class ScaleShift(nn.Module):
    """BatchStatNorm's parameters without the normalisation (``no-norm``)."""

    scale_init: object = nn.initializers.ones

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", self.scale_init, (x.shape[-1],), x.dtype)
        return x * scale + self.param("bias", nn.initializers.zeros, (x.shape[-1],), x.dtype)


def build(variant: str, batch: int, data, *, conv_impl: str = "auto", label: str | None = None):
    """The compiled step and its state for ``variant`` (see module docstring) with
    ``conv_impl``; prints the first step's loss and XLA's temporaries under ``label``."""
    norm = conv4.BatchStatNorm
    if variant == "no-norm":
        conv4.BatchStatNorm = ScaleShift
    elif variant not in ("default", "conv-bias"):
        raise SystemExit(f"unknown variant {variant!r}: default, conv-bias, no-norm")
    try:
        model = conv4.Conv4(downsample="stride", num_classes=5, bn_scale_init="uniform",
                            conv_impl=conv_impl, conv_bias=variant == "conv-bias")
        learner = maml(model, 5, inner_steps=1, inner_lr=0.4)
        opt = optax.adam(1e-3)
        sample = make_sampler(meta_batch=batch, ways=5, shots=1, queries=15)
        state = init_state(learner, opt, jnp.zeros((2, 28, 28, 1)), 0)
        step = jax.jit(make_train_step(learner, opt, sample, batch=batch))
        compiled = step.lower(state, data).compile()
    finally:
        conv4.BatchStatNorm = norm
    _, metrics = jax.block_until_ready(compiled(state, data))
    temp = compiled.memory_analysis().temp_size_in_bytes / 2**20
    print(f"{label or variant}: first loss {float(metrics['loss'][0]):.6f}, XLA temporaries "
          f"{temp:.0f} MB", flush=True)
    return compiled, state


def synthetic_data():
    """50 classes of 20 random 28x28 uint8 images (speed does not depend on pixel values)."""
    return jnp.asarray(np.random.default_rng(0).integers(0, 256, (50, 20, 28, 28, 1),
                                                         dtype=np.uint8))


def alternate(steps: dict, data, *, rounds: int, batch: int) -> None:
    """Calls the compiled ``steps`` (name -> (compiled, state)) in turn, ``rounds`` times, the
    order flipped every round, and prints each one's median and minimum step time and the
    median over rounds of the first one's time over its own."""
    names = list(steps)
    times = {n: [] for n in names}
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            compiled, state = steps[n]
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(state, data))
            times[n].append(time.perf_counter() - t0)
    first = np.array(times[names[0]])
    for n in names:
        t = np.array(times[n])
        print(f"{n:10s} median {np.median(t) * 1e3:6.0f} ms, min {t.min() * 1e3:6.0f} ms, "
              f"{batch / np.median(t):5.1f} tasks/s; {names[0]} time / this time, "
              f"median of rounds: {np.median(first / t):.3f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("variants", nargs="+")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args(argv)
    data = synthetic_data()
    steps = {v: build(v, args.batch, data) for v in args.variants}
    alternate(steps, data, rounds=args.rounds, batch=args.batch)

if __name__ == "__main__":
    main()
