"""The benchmark suite's workloads: each is a training preset plus overrides, built through the
registry exactly as ``smallsample train`` builds it, on synthetic class-indexed data of the right
shape (speed does not depend on pixel values).

The Omniglot MAML workloads follow Finn et al. (2017): Conv-4 with stride-2 convolutions,
meta-batch 32 (5-way) / 16 (20-way), inner rate 0.4 / 0.1. The mini-ImageNet MAML workload: width
32 with max-pooling, 5 inner steps at 0.01. ProtoNet: Conv-4 with max-pooling. Every workload
uses Adam at a constant 1e-3, as learn2learn's side of the comparison does.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from smallsample.config import Config, make_config
from smallsample.registry import build_learner, build_optimizer, validate
from smallsample.train.step import init_state, make_sampler, make_train_step


@dataclass(frozen=True)
class Workload:
    """One benchmark configuration: a meta-training step of ``config`` on synthetic uint8 data
    ``[num_classes, per_class, *image]``."""

    name: str
    config: Config
    image: tuple[int, int, int]  # H, W, C
    num_classes: int = 64
    per_class: int = 20

    @property
    def meta_batch(self) -> int:
        return self.config.meta_batch

    def replace(self, **settings) -> Workload:
        """This workload with config settings changed (``conv_impl='im2col'``...)."""
        return dataclasses.replace(self, config=validate(self.config.replace(**settings)))

    def describe(self) -> str:
        c = self.config
        return (f"{c.learner} {c.backbone} {self.image} {c.effective_train_ways}w"
                f"{c.effective_train_shots}s {c.train_queries}q batch {c.meta_batch} "
                f"inner {c.inner_steps}")


OMNI = (28, 28, 1)
MINI = (84, 84, 3)
#: What every workload sets: a constant learning rate, no class rotation, and the training
#: episodes equal to the evaluation ones unless a workload says otherwise.
_COMMON = ("lr=1e-3", "lr_decay_every=0", "train_ways=0", "train_shots=0", "rotate=false")


def workload(name: str, preset: str, *overrides: str, image=OMNI, num_classes: int = 64,
             per_class: int = 20) -> Workload:
    """A workload named ``name``: ``preset`` with the suite's common settings and
    ``overrides`` (``key=value``)."""
    config = validate(make_config(preset, [*_COMMON, *overrides]))
    return Workload(name, config, image, num_classes, per_class)


def _maml5(name: str, *overrides: str) -> Workload:
    return workload(name, "omniglot-maml-5w1s", *overrides)


def _protonet(name: str, preset: str, *overrides: str, **kw) -> Workload:
    return workload(name, preset, "train_queries=15", *overrides, **kw)


#: The standard workloads.
WORKLOADS: dict[str, Workload] = {w.name: w for w in [
    _maml5("maml-omniglot-5w1s"),
    _maml5("fomaml-omniglot-5w1s", "learner=fomaml"),
    _maml5("anil-omniglot-5w1s", "learner=anil"),
    workload("maml-omniglot-5w5s", "omniglot-maml-5w5s"),
    _maml5("maml-omniglot-5w1s-5steps", "inner_steps=5"),
    workload("maml-omniglot-20w1s", "omniglot-maml-20w1s"),
    _protonet("protonet-omniglot-5w5s-b1", "omniglot-protonet-5w5s"),
    _protonet("protonet-omniglot-5w5s-b32", "omniglot-protonet-5w5s", "meta_batch=32"),
    _protonet("protonet-omniglot-20w1s", "omniglot-protonet-20w1s"),
    workload("maml-mini-5w5s", "omniglot-maml-5w5s", "backbone=conv4", "width=32",
             "meta_batch=2", "inner_steps=5", "inner_lr=0.01", "image_size=84",
             image=MINI, per_class=25),
    _protonet("protonet-mini-5w5s", "omniglot-protonet-5w5s", "image_size=84", image=MINI,
              per_class=25),
    _protonet("protonet-mini-5w5s-resnet12", "omniglot-protonet-5w5s", "backbone=resnet12",
              "image_size=84", image=MINI, per_class=25),
]}

#: The default suite (the 84x84 ResNet-12 workload is left to ``--only``: minutes on a laptop CPU).
DEFAULT = [n for n in WORKLOADS if not n.endswith("resnet12")]

#: ``--quick``: tiny shapes, for a smoke test of the whole path.
QUICK = {w.name: w for w in [
    workload("quick-maml", "omniglot-maml-5w1s", "ways=3", "train_queries=2", "meta_batch=2",
             "width=8", "image_size=12", image=(12, 12, 1), num_classes=6,
             per_class=4),
    workload("quick-protonet", "omniglot-protonet-5w1s", "ways=3", "train_queries=2",
             "meta_batch=2", "width=8", "image_size=12", image=(12, 12, 1), num_classes=6,
             per_class=4),
]}


def synthetic_data(w: Workload) -> np.ndarray:
    """Seeded uint8 ``[num_classes, per_class, H, W, C]`` data for ``w``."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (w.num_classes, w.per_class) + w.image, dtype=np.uint8)


def train_step(w: Workload, *, mesh=None, unroll: int | bool = 1):
    """``(step, init, data)`` for ``w``: its meta-training step (not jitted), ``init()`` -> the
    initial state, and its synthetic data on the device. ``unroll``: the MAML family's
    inner-loop unrolling (the same numbers; used to count FLOPs)."""
    c = w.config
    learner = build_learner(c, ways=c.effective_train_ways, unroll=unroll)
    sample = make_sampler(meta_batch=c.meta_batch, ways=c.effective_train_ways,
                          shots=c.effective_train_shots, queries=c.train_queries,
                          rotate=c.rotate)
    optimizer = build_optimizer(c)
    init = functools.partial(init_state, learner, optimizer,
                             jnp.zeros((2,) + w.image, jnp.float32), 0)
    step = make_train_step(learner, optimizer, sample, mesh=mesh, batch=c.meta_batch,
                           chunks=c.chunks)
    return step, init, jnp.asarray(synthetic_data(w))


def ab_variants(specs: list[str]) -> list[dict[str, str]]:
    """``['devices=1,2', 'conv_bias=false,true']`` -> every combination as settings dicts, in
    order (``[{'devices': '1', 'conv_bias': 'false'}, ...]``); keys are config settings."""
    variants: list[dict[str, str]] = [{}]
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not values:
            raise ValueError(f"--ab {spec!r}: expected SETTING=V1,V2")
        variants = [{**v, key.strip(): x.strip()} for v in variants for x in values.split(",")]
    return variants


def with_settings(w: Workload, settings: dict[str, str]) -> Workload:
    """``w`` with ``key=value`` strings applied to its config (parsed as ``smallsample train``
    parses them)."""
    config = make_config(None, [f"{k}={v}" for k, v in settings.items()], base=w.config)
    return dataclasses.replace(w, config=validate(config))
