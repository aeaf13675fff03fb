"""MAML Omniglot 5w1s (second order) meta-training step under several conv lowerings, A/B in one
process: each lowering is compiled once, then the calls alternate six times (fair under a load that
changes), and each lowering's median and minimum step time are printed::

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
        python benchmarks/maml_lowering_ab.py 8 im2col shift

Arguments: the meta-batch, then the lowerings (``conv2d`` ``impl`` values).
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from smallsample.learners.maml import maml
from smallsample.models.conv4 import Conv4
from smallsample.train import init_state, make_sampler, make_train_step


def main(argv):
    batch, impls = int(argv[0]), argv[1:]
    rng = np.random.default_rng(0)
    data = jnp.asarray(rng.integers(0, 256, (50, 20, 28, 28, 1), dtype=np.uint8))
    opt = optax.adam(1e-3)
    fns = {}
    for impl in impls:
        model = Conv4(downsample="stride", num_classes=5, conv_impl=impl, bn_scale_init="uniform")
        learner = maml(model, 5, inner_steps=1, inner_lr=0.4)
        sample = make_sampler(meta_batch=batch, ways=5, shots=1, queries=15)
        state = init_state(learner, opt, jnp.zeros((2, 28, 28, 1)), 0)
        step = jax.jit(make_train_step(learner, opt, sample, batch=batch))
        compiled = step.lower(state, data).compile()
        _, m = jax.block_until_ready(compiled(state, data))
        temp = compiled.memory_analysis().temp_size_in_bytes / 2**20
        print(f"{impl}: loss {float(m['loss'][0]):.6f}, XLA temp {temp:.0f} MB", flush=True)
        fns[impl] = (compiled, state)
    times = {k: [] for k in fns}
    for _ in range(6):
        for k, (compiled, state) in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(state, data))
            times[k].append(time.perf_counter() - t0)
    for k, v in times.items():
        med = float(np.median(v))
        print(f"{k}: median {med * 1e3:.0f} ms, min {min(v) * 1e3:.0f} ms, "
              f"{batch / med:.1f} tasks/s")


if __name__ == "__main__":
    main(sys.argv[1:])
