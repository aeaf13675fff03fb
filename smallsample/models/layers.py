"""Layers whose lowering matters for meta-learning.

How a convolution is lowered is chosen here, in one place: under ``jax.vmap`` over tasks with
per-task weights (MAML's inner loop), ``lax.conv_general_dilated`` becomes a grouped convolution,
which XLA's CPU backend runs very slowly. ``conv_impl='im2col'`` writes the 3x3 convolution as nine
strided slices concatenated on the channel axis and one matrix product, whose vmapped form is a
batched matrix product. Both give the same values and gradients (tests/test_models.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from smallsample.models import onednn
from smallsample.models.onednn import conv_output_hw

ConvImpl = Literal["auto", "xla", "im2col", "shift", "onednn"]
Initializer = Callable[..., jax.Array]


def default_conv_impl(backend: str | None = None, dtype=None, *, per_task: bool = False) -> str:
    """The lowering ``impl='auto'`` picks.

    On CPU: ``'onednn'`` for float32 where oneDNN's convolution has been built
    (``smallsample onednn build``; :func:`smallsample.models.onednn.available`), else
    ``'im2col'``; :func:`conv2d` with
    ``impl='auto'`` then still takes im2col for small convolutions (``ONEDNN_MIN_POSITIONS``).
    On GPUs: ``'xla'`` (cuDNN's convolutions), except ``per_task=True`` (a MAML-family
    learner's network, run with per-task weights in a vmapped, differentiated inner loop; see
    :func:`inner_loop_model`), which takes ``'im2col'``. Elsewhere (TPU): ``'xla'``.

    Why: XLA lowers a convolution whose weights are vmapped (per-task weights) to a grouped
    convolution, slow on CPU and in cuDNN; im2col makes it a batched matrix product, and oneDNN
    convolves NHWC directly on CPU (docs/performance.md, "convolution lowering").
    """
    backend = backend or jax.default_backend()
    if backend == "gpu":
        return "im2col" if per_task else "xla"
    if backend != "cpu":
        return "xla"
    if dtype is None or jnp.dtype(dtype) == jnp.float32:
        if onednn.available():
            return "onednn"
    return "im2col"


def inner_loop_model(model, backend: str | None = None):
    """``model`` as a MAML-family learner runs it: a ``conv_impl='auto'`` model gets the lowering
    ``default_conv_impl(per_task=True)`` where that differs from ``'auto'``'s (on GPUs:
    im2col); any other model, or any explicit ``conv_impl``, is returned as it is."""
    backend = backend or jax.default_backend()
    if getattr(model, "conv_impl", None) != "auto" or backend != "gpu":
        return model
    return model.clone(conv_impl=default_conv_impl(backend, per_task=True))


# ``impl='auto'`` on CPU calls oneDNN only for convolutions with at least this many output
# positions (n * Ho * Wo); below it oneDNN's per-call cost outweighs its speed
# (docs/performance.md, "convolution lowering").
ONEDNN_MIN_POSITIONS = 2048


def conv2d(x: jax.Array, kernel: jax.Array, *, stride: int = 1, padding: int = 1,
           impl: ConvImpl = "xla") -> jax.Array:
    """2-D convolution of NHWC ``x [n, H, W, Cin]`` with ``kernel [kh, kw, Cin, Cout]``.

    Zero padding of ``padding`` on every side (as PyTorch's ``padding=1``, not flax's ``'SAME'``,
    which pads stride-2 convolutions of even sizes as (0, 1)).
    """
    if x.ndim != 4 or kernel.ndim != 4 or x.shape[-1] != kernel.shape[2]:
        raise ValueError(f"conv2d needs x [n, H, W, Cin] and kernel [kh, kw, Cin, Cout], got "
                         f"{x.shape} and {kernel.shape}")
    if impl == "auto":
        impl = default_conv_impl(dtype=jnp.result_type(x, kernel))
        ho, wo = conv_output_hw(x.shape, kernel.shape, stride, padding)
        if impl == "onednn" and x.shape[0] * ho * wo < ONEDNN_MIN_POSITIONS:
            impl = "im2col"
    if impl == "onednn":
        return onednn.conv2d(x, kernel, stride=stride, padding=padding)
    if impl == "xla":
        return jax.lax.conv_general_dilated(
            x, kernel, window_strides=(stride, stride),
            padding=((padding, padding), (padding, padding)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if impl == "im2col":
        kh, kw, cin, cout = kernel.shape
        xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
        n, hp, wp, _ = xp.shape
        ho = (hp - kh) // stride + 1
        wo = (wp - kw) // stride + 1
        cols = [jax.lax.slice(xp, (0, i, j, 0),
                              (n, i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, cin),
                              (1, stride, stride, 1))
                for i in range(kh) for j in range(kw)]
        patches = jnp.concatenate(cols, axis=-1)  # [n, ho, wo, kh*kw*cin], (i, j, c) order
        return jnp.einsum("nhwk,ko->nhwo", patches, kernel.reshape(kh * kw * cin, cout))
    if impl == "shift":
        return _conv_shift(x, kernel, stride=stride, padding=padding)
    raise ValueError(f"unknown conv impl {impl!r}; use 'xla', 'im2col', 'shift', 'onednn' or "
                     "'auto'")


def _conv_shift(x: jax.Array, kernel: jax.Array, *, stride: int, padding: int) -> jax.Array:
    """``impl='shift'``: the convolution as a sum of ``kh * kw`` matrix products, one per tap.

    The padded input is split into its ``stride x stride`` phases by a reshape (no gather), so each
    tap ``(i, j)`` reads a contiguous window of one phase and multiplies it by ``kernel[i, j]``
    (``[Cin, Cout]``). Unlike im2col there is no ``[.., kh*kw*Cin]`` patch tensor, and the gradient
    of each window is a plain pad rather than an interior (strided) pad. ``'auto'`` does not pick
    it: slower than im2col in the whole MAML step (docs/performance.md, "convolution lowering").
    """
    kh, kw, cin, _ = kernel.shape
    n, h, w, _ = x.shape
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (w + 2 * padding - kw) // stride + 1
    hp = max(h + 2 * padding, stride * (ho - 1) + kh)
    wp = max(w + 2 * padding, stride * (wo - 1) + kw)
    hp += -hp % stride
    wp += -wp % stride
    xp = jnp.pad(x, ((0, 0), (padding, hp - h - padding), (padding, wp - w - padding), (0, 0)))
    phases = xp.reshape(n, hp // stride, stride, wp // stride, stride, cin)
    out = None
    for i in range(kh):
        for j in range(kw):
            a, pi = divmod(i, stride)
            b, pj = divmod(j, stride)
            tap = phases[:, a:a + ho, pi, b:b + wo, pj, :]
            y = jnp.einsum("nhwc,co->nhwo", tap, kernel[i, j])
            out = y if out is None else out + y
    return out


class Conv(nn.Module):
    """A square convolution with explicit symmetric padding and a selectable lowering."""

    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: int = 1
    use_bias: bool = True
    impl: ConvImpl = "xla"
    kernel_init: Initializer = nn.initializers.xavier_uniform()
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features),
                            self.dtype or x.dtype)
        y = conv2d(x, kernel.astype(x.dtype), stride=self.stride, padding=self.padding,
                   impl=self.impl)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,),
                               self.dtype or x.dtype).astype(x.dtype)
        return y


class BatchStatNorm(nn.Module):
    """BatchNorm that normalises with the statistics of a batch, never with running averages.

    As in MAML: the layer is a pure function of its input, its learnable scale and shift (which the
    inner loop adapts) and, optionally, statistics computed earlier. Statistics are over every axis
    but the last.

    Statistics can be carried from one batch to another through the ``'norm_stats'`` collection:
    applied with ``mutable=['norm_stats']`` the layer stores the mean and variance of its batch;
    applied with a ``'norm_stats'`` collection in its variables it normalises with those instead of
    its own batch's (e.g. a query set normalised like the support set it is compared with).

    ``segments`` (static sizes summing to the batch) normalises each run of consecutive examples
    with its own statistics: the same numbers as applying the layer to each segment alone, in one
    pass over one batch (:func:`segmented_batch_stats` sets it from outside a model).
    """

    epsilon: float = 1e-5
    scale_init: Initializer = nn.initializers.ones

    @nn.compact
    def __call__(self, x: jax.Array, segments: tuple[int, ...] | None = None) -> jax.Array:
        if segments is not None:
            if sum(segments) != x.shape[0] or min(segments) < 1:
                raise ValueError(f"segments {tuple(segments)} do not split a batch of "
                                 f"{x.shape[0]} examples")
            if self.has_variable("norm_stats", "mean") or self.is_mutable_collection(
                    "norm_stats"):
                raise ValueError("segments normalise with each segment's own statistics; they "
                                 "cannot be combined with carried 'norm_stats'")
            bounds = [int(b) for b in np.cumsum(segments)[:-1]]
            means, variances = zip(*(batch_moments(part) for part in jnp.split(x, bounds)),
                                   strict=True)
            per_example = (1,) * (x.ndim - 2) + (x.shape[-1],)

            def spread(stats):  # [C] per segment -> [n, 1, ..., C], each example its segment's
                return jnp.concatenate([jnp.broadcast_to(s, (n,) + per_example)
                                        for s, n in zip(stats, segments, strict=True)])

            mean, var = spread(means), spread(variances)
        elif self.has_variable("norm_stats", "mean") and not self.is_mutable_collection(
                "norm_stats"):
            mean = self.get_variable("norm_stats", "mean")
            var = self.get_variable("norm_stats", "var")
        else:
            mean, var = batch_moments(x)
            if self.is_mutable_collection("norm_stats") and not self.is_initializing():
                self.put_variable("norm_stats", "mean", mean)
                self.put_variable("norm_stats", "var", var)
        scale = self.param("scale", self.scale_init, (x.shape[-1],), x.dtype)
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],), x.dtype)
        # the per-channel factor first: one subtract and multiply-add per element (not
        # x * factor + (bias - mean * factor), which cancels when the mean is large)
        return (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias


def segmented_batch_stats(segments: tuple[int, ...]):
    """A context (``flax.linen.intercept_methods``) under which every :class:`BatchStatNorm` of a
    model is applied with ``segments``: a model whose examples meet only in those layers then maps
    a batch made of several concatenated batches exactly as it maps each alone, in one pass."""

    def interceptor(next_fun, args, kwargs, context):
        if isinstance(context.module, BatchStatNorm) and context.method_name == "__call__":
            return next_fun(*args, **{**kwargs, "segments": tuple(segments)})
        return next_fun(*args, **kwargs)

    return nn.intercept_methods(interceptor)


def batch_moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and (biased) variance of ``x`` over every axis but the last, from one
    pass over ``x``: the sums of ``x - k`` and its square, ``k`` the first element of each
    channel (a constant for differentiation).

    The textbook two passes (the mean, then the mean of ``(x - mean)^2``) read the activations
    once more, and XLA's CPU fusions of their derivative more than that (docs/performance.md,
    "batchnorm in one pass"). Shifting by a sample of the channel keeps
    ``E[(x-k)^2] - E[x-k]^2`` from cancelling when the mean is large against the spread; the
    variance is clipped at zero against rounding.
    """
    axes = tuple(range(x.ndim - 1))
    k = jax.lax.stop_gradient(x[(0,) * (x.ndim - 1)])
    shifted = x - k
    m = shifted.mean(axes)
    var = jnp.maximum(jnp.square(shifted).mean(axes) - jnp.square(m), 0)
    return m + k, var


def _pool_windows(x: jax.Array) -> jax.Array:
    """The 2x2 windows of ``x [n, H, W, C]`` (floor mode) as ``[n, H//2, W//2, 4, C]``."""
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h // 2, w // 2, 4, c)


@jax.custom_jvp
def max_pool2(x: jax.Array) -> jax.Array:
    """2x2 max-pool with stride 2, floor mode (PyTorch's default), of ``x [n, H, W, C]``.

    The derivative sends each window's tangent (or cotangent) through the position of its first
    maximum, found once by ``argmax``. This is the subgradient ``lax.reduce_window`` gives, at a
    fraction of its cost on XLA's CPU backend (docs/performance.md, "max pool derivative").
    JAX's own derivative of a reshape + ``max`` (and a hand-written one alike) finds the maximum
    by testing ``x == max(x)``; under ``jit`` XLA may recompute ``x`` in another fusion with
    different rounding, the test then fails, and gradient is lost: with the im2col convolution
    it gave wrong gradients, in float64 too (see
    ``tests/test_models.py::test_max_pool2_jit_gradient_equals_reduce_window``).
    """
    n, h, w, c = x.shape
    return x[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


@max_pool2.defjvp
def _max_pool2_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    windows = _pool_windows(x)
    first = jnp.arange(4)[:, None] == jnp.argmax(windows, axis=3)[:, :, :, None, :]
    return windows.max(axis=3), jnp.sum(jnp.where(first, _pool_windows(t), 0), axis=3)
