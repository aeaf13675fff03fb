"""Conv-4: the backbone of MAML and prototypical networks.

Four blocks of 3x3 convolution (``width`` filters, no bias by default), batch-statistics BatchNorm
and ReLU, then either 2x2 max-pooling (prototypical networks; MAML's mini-ImageNet variant) or
stride-2 convolutions (MAML's Omniglot variant, followed by a spatial mean). With ``num_classes`` a
linear head follows (MAML); without it the module is an embedding (prototypical networks: 64
features for 28x28 input).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import flax.linen as nn
import jax

from smallsample.models.layers import BatchStatNorm, Conv, ConvImpl, max_pool2


def uniform01(key, shape, dtype=float):
    """U(0, 1) initialiser (learn2learn's BatchNorm scale)."""
    return jax.random.uniform(key, shape, dtype)


class Conv4(nn.Module):
    """Conv-4 backbone.

    Attributes:
      width: filters per block (64 for Omniglot, 32 for MAML's mini-ImageNet).
      downsample: ``'pool'`` (conv stride 1 + 2x2 max-pool) or ``'stride'`` (conv stride 2).
      num_classes: if set, a linear head over this many ways; else the flattened (``'pool'``) or
        spatially averaged (``'stride'``) features are returned.
      conv_impl: how convolutions are lowered (see :mod:`smallsample.models.layers`).
      bn_scale_init: ``'ones'`` or ``'uniform'`` (learn2learn's U(0, 1)).
      head_init: ``'normal'`` (learn2learn: N(0, 1)) or ``'lecun'``.
      conv_bias: a bias on each convolution, as in learn2learn's and the MAML paper's models.
        The batch-statistics BatchNorm that follows subtracts it again (the mean moves by the
        bias; the variance does not change), so the network computes the same function without
        it and its true gradient is zero: only rounding noise reaches it, which Adam then scales
        up to full-size steps of a parameter that changes nothing. Off by default: its gradients
        are reductions over every activation, time for nothing (docs/performance.md, "conv4
        without conv biases"). ``True`` gives
        the reference models' parameter tree, e.g. to load their weights.
    """

    #: examples meet only in BatchStatNorm (convolutions, pooling and the head act per example),
    #: so a batch of several concatenated batches can be normalised in segments
    #: (:func:`smallsample.models.layers.segmented_batch_stats`)
    EXAMPLES_MEET_ONLY_IN_BATCH_STAT_NORM: ClassVar[bool] = True

    width: int = 64
    downsample: Literal["pool", "stride"] = "pool"
    num_classes: int | None = None
    conv_impl: ConvImpl = "auto"
    bn_scale_init: Literal["ones", "uniform"] = "ones"
    head_init: Literal["normal", "lecun"] = "normal"
    blocks: int = 4
    conv_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"Conv4 expects a batch of images [n, H, W, C], got shape {x.shape}")
        scale_init = uniform01 if self.bn_scale_init == "uniform" else nn.initializers.ones
        stride = 2 if self.downsample == "stride" else 1
        for _ in range(self.blocks):
            x = Conv(self.width, stride=stride, use_bias=self.conv_bias, impl=self.conv_impl)(x)
            x = BatchStatNorm(scale_init=scale_init)(x)
            x = nn.relu(x)
            if self.downsample == "pool":
                x = max_pool2(x)
        if self.downsample == "stride":
            x = x.mean(axis=(1, 2))
        else:
            x = x.reshape((x.shape[0], -1))
        if self.num_classes is not None:
            init = (nn.initializers.normal(1.0) if self.head_init == "normal"
                    else nn.initializers.lecun_normal())
            x = nn.Dense(self.num_classes, kernel_init=init, name="head")(x)
        return x
