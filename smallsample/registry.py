"""From a :class:`~smallsample.config.Config` to data arrays and learners."""

from __future__ import annotations

import numpy as np

from smallsample.config import Config
from smallsample.learners.base import Learner
from smallsample.models.conv4 import Conv4


def load_data(config: Config, root=None) -> dict[str, np.ndarray]:
    """Class-indexed uint8 arrays for the config's ``train`` / ``val`` / ``test`` parts."""
    if config.dataset != "omniglot":
        raise ValueError(f"unknown dataset {config.dataset!r}; available: omniglot")
    from smallsample.data.omniglot import load_split  # noqa: PLC0415

    parts = {"train": config.train_part, "val": config.val_part, "test": config.test_part}
    data = {}
    for role, part in parts.items():
        if part:
            data[role] = load_split(config.split, part, size=config.image_size, root=root).images
    if config.per_class and config.per_class > data["train"].shape[1]:
        raise ValueError(f"per_class={config.per_class} is more than the "
                         f"{data['train'].shape[1]} examples per class")
    return data


def backbone(config: Config, num_classes: int | None = None):
    if config.backbone == "conv4":
        return Conv4(width=config.width, downsample="pool", num_classes=num_classes,
                     conv_impl=config.conv_impl, conv_bias=config.conv_bias)
    if config.backbone == "conv4-stride":
        return Conv4(width=config.width, downsample="stride", num_classes=num_classes,
                     conv_impl=config.conv_impl, bn_scale_init="uniform",
                     conv_bias=config.conv_bias)
    if config.backbone == "resnet12":
        from smallsample.models.resnet12 import ResNet12  # noqa: PLC0415
        return ResNet12(num_classes=num_classes, conv_impl=config.conv_impl)
    raise ValueError(f"unknown backbone {config.backbone!r}; use conv4, conv4-stride, resnet12")


def build_learner(config: Config, *, ways: int, test: bool = False) -> Learner:
    """The learner named by ``config.learner`` for ``ways``-way episodes.

    ``test=True`` gives the evaluation variant (e.g. MAML with ``test_inner_steps``).
    """
    name = config.learner
    steps = config.effective_test_inner_steps if test else config.inner_steps
    if name == "protonet":
        from smallsample.learners.protonet import protonet  # noqa: PLC0415
        return protonet(backbone(config), ways, norm=config.norm)
    if name in MAML_VARIANTS:
        from smallsample.learners.maml import maml  # noqa: PLC0415
        return maml(backbone(config, num_classes=ways), ways, inner_steps=steps,
                    inner_lr=config.inner_lr, remat=config.remat, **MAML_VARIANTS[name])
    if name == "reptile":
        from smallsample.learners.maml import reptile  # noqa: PLC0415
        return reptile(backbone(config, num_classes=ways), ways, inner_steps=steps,
                       inner_lr=config.inner_lr)
    if name == "imaml":
        from smallsample.learners.maml import imaml  # noqa: PLC0415
        return imaml(backbone(config, num_classes=ways), ways, inner_steps=steps,
                     inner_lr=config.inner_lr)
    if name == "matching":
        from smallsample.learners.metric import matching_net  # noqa: PLC0415
        return matching_net(backbone(config), ways)
    if name == "r2d2":
        from smallsample.learners.closed_form import r2d2  # noqa: PLC0415
        return r2d2(backbone(config), ways)
    if name in ("baseline", "baseline++"):
        from smallsample.learners.finetune import finetune  # noqa: PLC0415
        return finetune(backbone(config), ways, head="cosine" if name == "baseline++" else "linear")
    raise ValueError(f"unknown learner {name!r}; choose from {', '.join(LEARNERS)}")


MAML_VARIANTS = {"maml": {}, "fomaml": {"first_order": True}, "anil": {"head_only": True},
                 "metasgd": {"learn_inner_lr": True}}
LEARNERS = ("protonet", *MAML_VARIANTS, "reptile", "imaml", "matching", "r2d2", "baseline",
            "baseline++")


def is_pretrained(config: Config) -> bool:
    """Whether the learner is trained by supervised pre-training over all training classes."""
    return config.learner in ("baseline", "baseline++")


def build_pretrainer(config: Config, num_classes: int):
    from smallsample.learners.finetune import pretrainer  # noqa: PLC0415
    return pretrainer(backbone(config), num_classes,
                      head="cosine" if config.learner == "baseline++" else "linear")
