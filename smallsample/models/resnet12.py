"""ResNet-12 as used by MetaOptNet (Lee et al. 2019) and TADAM (Oreshkin et al. 2018).

Four residual blocks; each is three 3x3 convolutions (no bias) with BatchNorm, leaky ReLU (slope
0.1) after the first two, a 1x1 convolution + BatchNorm shortcut added after the third, a leaky
ReLU, and a 2x2 max-pool. Widths default to MetaOptNet's 64-160-320-640 (12.4M parameters). For
84x84 input the output is 5x5x640, flattened (16000 features, as MetaOptNet) or averaged over space
(``pool='avg'``: 640 features).

Differences from MetaOptNet: BatchNorm is :class:`~smallsample.models.layers.BatchStatNorm` (the
statistics of the batch at hand, no running averages, so the module is a pure function and works
inside MAML's inner loop); DropBlock and dropout are not implemented.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import flax.linen as nn
import jax

from smallsample.models.layers import BatchStatNorm, Conv, ConvImpl, max_pool2

#: PyTorch's ``kaiming_normal_(mode='fan_out', nonlinearity='leaky_relu')`` (MetaOptNet's init).
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def leaky_relu(x: jax.Array) -> jax.Array:
    """Leaky ReLU with slope 0.1 (MetaOptNet)."""
    return nn.leaky_relu(x, negative_slope=0.1)


class ResBlock(nn.Module):
    """One ResNet-12 block: ``[n, H, W, Cin] -> [n, H // 2, W // 2, features]``."""

    features: int
    conv_impl: ConvImpl = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = lambda name: Conv(self.features, use_bias=False, impl=self.conv_impl,
                                 kernel_init=kaiming_fan_out, name=name)
        y = leaky_relu(BatchStatNorm(name="bn1")(conv("conv1")(x)))
        y = leaky_relu(BatchStatNorm(name="bn2")(conv("conv2")(y)))
        y = BatchStatNorm(name="bn3")(conv("conv3")(y))
        shortcut = Conv(self.features, kernel_size=1, padding=0, use_bias=False,
                        impl=self.conv_impl, kernel_init=kaiming_fan_out, name="shortcut_conv")(x)
        shortcut = BatchStatNorm(name="shortcut_bn")(shortcut)
        return max_pool2(leaky_relu(y + shortcut))


class ResNet12(nn.Module):
    """ResNet-12 backbone.

    Attributes:
      widths: filters of the four blocks (MetaOptNet: 64, 160, 320, 640; TADAM: 64, 128, 256, 512).
      pool: ``'flatten'`` (MetaOptNet) or ``'avg'`` (mean over the remaining spatial positions).
      num_classes: if set, a linear head named ``head`` over this many classes (for MAML/ANIL).
      conv_impl: how convolutions are lowered (see :mod:`smallsample.models.layers`).
    """

    #: examples meet only in BatchStatNorm (convolutions, pooling and the head act per example),
    #: so a batch of several concatenated batches can be normalised in segments
    #: (:func:`smallsample.models.layers.segmented_batch_stats`)
    EXAMPLES_MEET_ONLY_IN_BATCH_STAT_NORM: ClassVar[bool] = True

    widths: Sequence[int] = (64, 160, 320, 640)
    pool: Literal["flatten", "avg"] = "flatten"
    num_classes: int | None = None
    conv_impl: ConvImpl = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``x [n, H, W, C]`` -> features ``[n, d]`` (or logits ``[n, num_classes]``)."""
        if x.ndim != 4:
            raise ValueError(f"ResNet12 expects a batch of images [n, H, W, C], got shape "
                             f"{x.shape}")
        if self.pool not in ("flatten", "avg"):
            raise ValueError(f"pool must be 'flatten' or 'avg', got {self.pool!r}")
        if min(x.shape[1:3]) < 2 ** len(self.widths):
            raise ValueError(f"{len(self.widths)} blocks halve the image {len(self.widths)} times; "
                             f"an image of {x.shape[1]}x{x.shape[2]} is too small")
        for i, width in enumerate(self.widths):
            x = ResBlock(width, conv_impl=self.conv_impl, name=f"block{i + 1}")(x)
        x = x.mean(axis=(1, 2)) if self.pool == "avg" else x.reshape((x.shape[0], -1))
        if self.num_classes is not None:
            x = nn.Dense(self.num_classes, name="head")(x)
        return x
