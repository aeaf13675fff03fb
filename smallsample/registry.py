"""From a :class:`~smallsample.config.Config` to data arrays, backbones and learners.

The catalogue is two tables, :data:`BACKBONES` and :data:`LEARNERS`: a name maps to a function of
the config. Training, evaluation, the command line and the benchmark suite all build through
them, so a model is described once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import flax.linen as nn
import numpy as np
import optax

from smallsample.config import Config
from smallsample.learners import (
    Learner,
    finetune,
    imaml,
    maml,
    matching_net,
    pretrainer,
    protonet,
    r2d2,
    reptile,
)
from smallsample.models import Conv4, ResNet12

#: Image benchmarks read from the user's files (:mod:`smallsample.data.benchmarks`).
BENCHMARKS = ("mini-imagenet", "tiered-imagenet", "cifar-fs", "fc100", "cub")
#: ``config.dataset`` values; ``tfds:NAME`` reads a prepared TensorFlow Datasets set.
DATASETS = ("omniglot", *BENCHMARKS, "folder", "tfds:NAME")


def _check_dataset(config: Config) -> None:
    if config.dataset not in DATASETS and not config.dataset.startswith("tfds:"):
        raise ValueError(f"unknown dataset {config.dataset!r}; available: {', '.join(DATASETS)}")
    if config.dataset == "folder" and not config.data_path:
        raise ValueError("dataset=folder needs data_path=DIR (a folder of class folders)")


def load_part(config: Config, part: str, root=None) -> np.ndarray:
    """The class-indexed uint8 array ``[num_classes, per_class, H, W, C]`` of one part (a split
    name: ``train``, ``val``, ``test``, or the data set's own) of the config's data set."""
    _check_dataset(config)
    name, size, path = config.dataset, config.image_size, config.data_path or None
    if name == "omniglot":
        from smallsample.data.omniglot import load_split  # noqa: PLC0415 (decoding is heavy)

        return load_split(config.split, part, size=size, root=root).images
    if name in BENCHMARKS:
        from smallsample.data.benchmarks import load_benchmark  # noqa: PLC0415

        return load_benchmark(name, part, path=path, root=root, size=size).images
    if name == "folder":
        from smallsample.data.images import folder_split  # noqa: PLC0415

        return folder_split(path, part, size=size).images
    from smallsample.data.tfds import load_tfds  # noqa: PLC0415 (an optional dependency)

    return load_tfds(name.removeprefix("tfds:"), split=part, data_dir=path, size=size).images


def load_data(config: Config, root=None) -> dict[str, np.ndarray]:
    """Class-indexed uint8 arrays for the config's ``train`` / ``val`` / ``test`` parts."""
    parts = {"train": config.train_part, "val": config.val_part, "test": config.test_part}
    data = {role: load_part(config, part, root) for role, part in parts.items() if part}
    if config.per_class and "train" in data and config.per_class > data["train"].shape[1]:
        raise ValueError(f"per_class={config.per_class} is more than the "
                         f"{data['train'].shape[1]} examples per class")
    return data


#: ``name -> (config, num_classes) -> flax module``; ``num_classes`` None: an embedding.
BACKBONES: dict[str, Callable[[Config, int | None], nn.Module]] = {
    "conv4": lambda c, n: Conv4(width=c.width, downsample="pool", num_classes=n,
                                conv_impl=c.conv_impl, conv_bias=c.conv_bias),
    # MAML's Omniglot network: stride-2 convolutions, BatchNorm scales drawn uniformly
    "conv4-stride": lambda c, n: Conv4(width=c.width, downsample="stride", num_classes=n,
                                       conv_impl=c.conv_impl, bn_scale_init="uniform",
                                       conv_bias=c.conv_bias),
    "resnet12": lambda c, n: ResNet12(num_classes=n, conv_impl=c.conv_impl),
}


def backbone(config: Config, num_classes: int | None = None) -> nn.Module:
    """The config's backbone; with ``num_classes``, with a linear head over that many."""
    if config.backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {config.backbone!r}; choose from "
                         f"{', '.join(BACKBONES)}")
    return BACKBONES[config.backbone](config, num_classes)


class LearnerSpec(NamedTuple):
    """How a learner is built: ``build(config, ways, inner_steps, unroll) -> Learner``.

    ``pretrained``: trained by supervised pre-training over all training classes (the
    fine-tuning baselines), not episodically."""

    build: Callable[[Config, int, int, int | bool], Learner]
    pretrained: bool = False


def _maml(**variant) -> LearnerSpec:
    return LearnerSpec(lambda c, ways, steps, unroll: maml(
        backbone(c, ways), ways, inner_steps=steps, inner_lr=c.inner_lr, remat=c.remat,
        unroll=unroll, **variant))


def _finetune(head: str) -> LearnerSpec:
    return LearnerSpec(lambda c, ways, steps, unroll: finetune(backbone(c), ways, head=head),
                       pretrained=True)


#: The learner catalogue: ``config.learner`` names a row.
LEARNERS: dict[str, LearnerSpec] = {
    "protonet": LearnerSpec(lambda c, ways, steps, unroll: protonet(backbone(c), ways,
                                                                    norm=c.norm)),
    "maml": _maml(),
    "fomaml": _maml(first_order=True),
    "anil": _maml(head_only=True),
    "metasgd": _maml(learn_inner_lr=True),
    "reptile": LearnerSpec(lambda c, ways, steps, unroll: reptile(
        backbone(c, ways), ways, inner_steps=steps, inner_lr=c.inner_lr)),
    "imaml": LearnerSpec(lambda c, ways, steps, unroll: imaml(
        backbone(c, ways), ways, inner_steps=steps, inner_lr=c.inner_lr)),
    "matching": LearnerSpec(lambda c, ways, steps, unroll: matching_net(backbone(c), ways)),
    "r2d2": LearnerSpec(lambda c, ways, steps, unroll: r2d2(backbone(c), ways)),
    "baseline": _finetune("linear"),
    "baseline++": _finetune("cosine"),
}


def learner_spec(config: Config) -> LearnerSpec:
    if config.learner not in LEARNERS:
        raise ValueError(f"unknown learner {config.learner!r}; choose from "
                         f"{', '.join(LEARNERS)}")
    return LEARNERS[config.learner]


def build_learner(config: Config, *, ways: int, test: bool = False,
                  unroll: int | bool = 1) -> Learner:
    """The learner named by ``config.learner`` for ``ways``-way episodes.

    ``test=True`` gives the evaluation variant (e.g. MAML with ``test_inner_steps``).
    ``unroll``: the MAML family's inner-loop unrolling (the same numbers; the benchmark suite
    counts FLOPs on the unrolled loop)."""
    steps = config.effective_test_inner_steps if test else config.inner_steps
    return learner_spec(config).build(config, ways, steps, unroll)


def is_pretrained(config: Config) -> bool:
    """Whether the learner is trained by supervised pre-training over all training classes."""
    return learner_spec(config).pretrained


def validate(config: Config) -> Config:
    """The one check of a config, made before anything is built or written: every setting in its
    range (:meth:`Config.check`) and every name in its table. Returns the config."""
    config.check()
    learner_spec(config)
    if config.backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {config.backbone!r}; choose from "
                         f"{', '.join(BACKBONES)}")
    _check_dataset(config)
    if config.teacher:
        teacher_config(config)
    return config


#: Students of distillation: episodic learners whose meta-gradient is the gradient of their
#: query loss, to which the KD term is added (not Reptile and iMAML, not the pre-trained
#: baselines).
DISTILL_STUDENTS = ("protonet", "matching", "r2d2", "maml", "fomaml", "anil", "metasgd")
#: Teachers whose parameters do not depend on the episode's ways (metric and closed-form heads,
#: fine-tuning baselines): built for the student's episodes whatever ways they were trained
#: with. Any other teacher (the MAML family, Reptile, iMAML: a ``ways``-way head) must have been
#: trained with the student's training ways.
WAYS_FREE_TEACHERS = ("protonet", "matching", "r2d2", "baseline", "baseline++")
#: Settings a teacher's run shares with its student: the same images (a teacher trained on
#: another split could have seen the student's test classes).
TEACHER_SHARED = ("dataset", "data_path", "split", "train_part", "image_size")


def teacher_config(config: Config) -> Config:
    """The config of the teacher run ``config.teacher``, checked against the student's: a
    ``ValueError`` naming the folder and the value when the folder is not a run folder (no
    ``config.json``, no readable checkpoint), when it was trained on other images
    (:data:`TEACHER_SHARED`), or when its logits cannot be compared with the student's (a
    learner with a head of other ways, a student that is not in :data:`DISTILL_STUDENTS`)."""
    where = f"teacher={config.teacher!r}"
    if config.learner not in DISTILL_STUDENTS:
        raise ValueError(f"{where}: a {config.learner} student cannot be distilled (its "
                         f"meta-gradient is not its query loss's); students: "
                         f"{', '.join(DISTILL_STUDENTS)}")
    folder = Path(config.teacher)
    if not folder.is_dir():
        raise ValueError(f"{where}: {'not a folder' if folder.exists() else 'no such folder'} "
                         f"(the teacher is a run folder of smallsample train)")
    path = folder / "config.json"
    if not path.is_file():
        raise ValueError(f"{where} is not a run folder: {path} does not exist")
    try:
        teacher = Config.from_json(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{where}: {path} cannot be read ({e})") from None
    except ValueError as e:
        raise ValueError(f"{where}: {path}: {e}") from None
    for name in TEACHER_SHARED:
        if getattr(teacher, name) != getattr(config, name):
            raise ValueError(f"{where} was trained with {name}={getattr(teacher, name)!r}, the "
                             f"student has {name}={getattr(config, name)!r}: the teacher must "
                             f"have seen the same images")
    learner_spec(teacher)
    if teacher.backbone not in BACKBONES:
        raise ValueError(f"{where}: its config ({path}) names the unknown backbone "
                         f"{teacher.backbone!r}")
    ways = config.effective_train_ways
    if teacher.learner not in WAYS_FREE_TEACHERS and teacher.effective_train_ways != ways:
        raise ValueError(f"{where}: a {teacher.learner} teacher has a "
                         f"{teacher.effective_train_ways}-way head, the student trains on "
                         f"{ways}-way episodes: their logits are not comparable (teachers for "
                         f"any ways: {', '.join(WAYS_FREE_TEACHERS)})")
    from smallsample.train.checkpoint import (  # noqa: PLC0415 (train is built on this module)
        read_checkpoint,
        run_checkpoint,
    )

    try:
        checkpoint, _ = run_checkpoint(folder)
    except FileNotFoundError:
        raise ValueError(f"{where}: the run folder has no checkpoint (best.msgpack or "
                         f"checkpoint.msgpack): train the teacher first") from None
    read_checkpoint(checkpoint)  # a CheckpointError (a ValueError) names the file
    return teacher


def build_optimizer(config: Config) -> optax.GradientTransformation:
    """Adam at ``lr``, halved every ``lr_decay_every`` steps when that is set."""
    if config.lr_decay_every:
        return optax.adam(optax.exponential_decay(config.lr, config.lr_decay_every, 0.5,
                                                  staircase=True))
    return optax.adam(config.lr)


def build_pretrainer(config: Config, num_classes: int):
    """The supervised pre-training objective of a fine-tuning baseline."""
    return pretrainer(backbone(config), num_classes,
                      head="cosine" if config.learner == "baseline++" else "linear")
