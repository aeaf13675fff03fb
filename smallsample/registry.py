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
                     conv_impl=config.conv_impl)
    if config.backbone == "conv4-stride":
        return Conv4(width=config.width, downsample="stride", num_classes=num_classes,
                     conv_impl=config.conv_impl, bn_scale_init="uniform")
    if config.backbone == "resnet12":
        from smallsample.models.resnet12 import ResNet12  # noqa: PLC0415
        return ResNet12(num_classes=num_classes)
    raise ValueError(f"unknown backbone {config.backbone!r}; use conv4, conv4-stride, resnet12")


def build_learner(config: Config, *, ways: int, test: bool = False) -> Learner:
    """The learner named by ``config.learner`` for ``ways``-way episodes.

    ``test=True`` gives the evaluation variant (e.g. MAML with ``test_inner_steps``).
    """
    name = config.learner
    if name == "protonet":
        from smallsample.learners.protonet import protonet  # noqa: PLC0415
        return protonet(backbone(config), ways)
    raise ValueError(f"unknown learner {name!r}")
