"""Meta-training: the pure step (:mod:`~smallsample.train.step`), the host loop
(:mod:`~smallsample.train.loop`, :func:`train_and_evaluate`) and checkpoint I/O
(:mod:`~smallsample.train.checkpoint`)."""

from smallsample.train.checkpoint import (
    load_checkpoint,
    load_params,
    run_checkpoint,
    save_checkpoint,
)
from smallsample.train.loop import RunResult, train_and_evaluate, train_devices
from smallsample.train.step import (
    TrainState,
    default_chunks,
    init_state,
    make_pretrain_step,
    make_sampler,
    make_train_step,
    meta_gradient,
)

__all__ = [
    "RunResult",
    "TrainState",
    "default_chunks",
    "init_state",
    "load_checkpoint",
    "load_params",
    "make_pretrain_step",
    "make_sampler",
    "make_train_step",
    "meta_gradient",
    "run_checkpoint",
    "save_checkpoint",
    "train_and_evaluate",
    "train_devices",
]
