"""MAML Omniglot 5w1s (second order) meta-training step under several conv lowerings, A/B in one
process: each lowering is compiled once, then the calls alternate six times (the order flipped
every round; fair under a load that changes), and each lowering's median and minimum step time are
printed::

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
        python benchmarks/maml_lowering_ab.py 8 im2col shift

Arguments: the meta-batch, then the lowerings (``conv2d`` ``impl`` values). The step and the timing
loop are :mod:`maml_model_ab`'s (its ``default`` Conv-4).
"""

import sys

from maml_model_ab import alternate, build, synthetic_data


def main(argv):
    batch, impls = int(argv[0]), argv[1:]
    data = synthetic_data()
    steps = {impl: build("default", batch, data, conv_impl=impl, label=impl) for impl in impls}
    alternate(steps, data, rounds=6, batch=batch)


if __name__ == "__main__":
    main(sys.argv[1:])
