"""Networks in flax: the few-shot backbones, the layers whose lowering matters for
meta-learning, and pretrained text encoders loaded from local weight files.

- :class:`Conv4`, :class:`ResNet12`: the standard few-shot backbones;
- :mod:`~smallsample.models.layers`: convolution lowering (chosen in one place), BatchNorm on
  the batch at hand, the 2x2 max-pool;
- :mod:`~smallsample.models.onednn`: oneDNN's CPU convolutions as JAX primitives (an optional
  extra, built explicitly: ``smallsample onednn build``);
- :mod:`~smallsample.models.bert`, :mod:`~smallsample.models.mpnet`: pretrained sentence
  encoders (MiniLM, all-mpnet-base-v2) on :mod:`~smallsample.models.transformer`;
  :mod:`~smallsample.models.pretrained` loads either by name or folder.
"""

from smallsample.models.conv4 import Conv4
from smallsample.models.layers import (
    BatchStatNorm,
    Conv,
    conv2d,
    default_conv_impl,
    max_pool2,
)
from smallsample.models.resnet12 import ResNet12

__all__ = ["BatchStatNorm", "Conv", "Conv4", "ResNet12", "conv2d", "default_conv_impl",
           "max_pool2"]
