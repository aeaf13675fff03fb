"""Distillation losses on intermediate features: FitNets hints through a learned projection,
attention transfer, and embedding MSE / cosine distance.

Feature-map losses take ``[batch, *spatial, channels]`` arrays (``[batch, H, W, C]`` from a CNN,
``[batch, tokens, C]`` from a transformer) and return ``[batch]``; embedding losses take
``[..., dim]`` and return ``[...]``. No reduction over the batch; the teacher argument goes
through :func:`jax.lax.stop_gradient`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from smallsample.distill.logits import _as_float, _check_positive

HintProjection = dict[str, jax.Array]  # {"kernel": [student_channels, teacher_channels], "bias"}


def init_hint_projection(key: jax.Array, student_channels: int, teacher_channels: int, *,
                         dtype: Any = jnp.float32) -> HintProjection:
    """Parameters of the FitNets regressor, a linear map (a 1x1 convolution on feature maps)
    from the student's channels to the teacher's.

    The layout is that of :class:`flax.linen.Dense` (``kernel [student_channels,
    teacher_channels]`` LeCun-normal, ``bias [teacher_channels]`` zeros), so
    ``nn.Dense(teacher_channels).init(key, x)["params"]`` works as well. These parameters are
    trained with the student.

    Args:
      key: PRNG key.
      student_channels: static int.
      teacher_channels: static int.
      dtype: parameter dtype.

    Returns:
      ``{"kernel": [student_channels, teacher_channels], "bias": [teacher_channels]}``.
    """
    for name, n in (("student_channels", student_channels),
                    ("teacher_channels", teacher_channels)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"{name} must be a positive static int, got {n!r}")
    kernel = jax.nn.initializers.lecun_normal()(key, (student_channels, teacher_channels), dtype)
    return {"kernel": kernel, "bias": jnp.zeros((teacher_channels,), dtype)}


def apply_hint_projection(projection: HintProjection, student_features: jax.Array) -> jax.Array:
    """``student_features [..., student_channels] @ kernel + bias -> [..., teacher_channels]``."""
    kernel, bias = _projection_arrays(projection)
    x = _as_float("student_features", student_features)
    if x.ndim < 1 or x.shape[-1] != kernel.shape[0]:
        raise ValueError(f"student_features [..., {kernel.shape[0]}] expected by the projection "
                         f"kernel of shape {kernel.shape}, got {x.shape}")
    return x @ kernel + bias


def _projection_arrays(projection: HintProjection) -> tuple[jax.Array, jax.Array]:
    if not isinstance(projection, dict) or set(projection) != {"kernel", "bias"}:
        keys = sorted(projection) if isinstance(projection, dict) else type(projection).__name__
        raise ValueError(f"projection must be a dict with 'kernel' and 'bias', got {keys}")
    kernel = _as_float("projection['kernel']", projection["kernel"])
    bias = _as_float("projection['bias']", projection["bias"])
    if kernel.ndim != 2 or bias.shape != (kernel.shape[1],):
        raise ValueError(f"projection kernel must be [student_channels, teacher_channels] and "
                         f"bias [teacher_channels]; got {kernel.shape} and {bias.shape}")
    return kernel, bias


def hint_loss(student_features: jax.Array, teacher_features: jax.Array, *,
              projection: HintProjection | None = None) -> jax.Array:
    """FitNets hint loss: mean squared error between the teacher's hint features and the
    student's guided features mapped by a learned regressor.

    The regressor is the linear map of :func:`init_hint_projection` applied on the channel axis
    (a 1x1 convolution), so the spatial shapes must already agree (pool or resize before);
    ``projection=None`` compares the features directly (equal channels). The projection's
    gradient flows; the teacher's does not. The per-example value is the *mean* over the
    feature's elements; the paper's ``1/2 ||u_h - r(v_g)||^2`` is ``0.5 * num_elements`` times
    it.

    Args:
      student_features: ``[batch, ..., student_channels]`` floating.
      teacher_features: ``[batch, ..., teacher_channels]`` floating, same leading axes.
      projection: regressor params (trained), or None.

    Returns:
      ``[batch]`` per-example loss.

    References:
      Romero, Ballas, Kahou, Chassang, Gatta & Bengio, "FitNets: Hints for Thin Deep Nets",
      ICLR 2015, arXiv:1412.6550.
    """
    s = _as_float("student_features", student_features)
    t = _as_float("teacher_features", teacher_features)
    if s.ndim < 2 or t.ndim != s.ndim or s.shape[:-1] != t.shape[:-1]:
        raise ValueError(f"student_features [batch, ..., Cs] and teacher_features "
                         f"[batch, ..., Ct] must agree on all but the channel axis; got "
                         f"{s.shape} and {t.shape}")
    if projection is not None:
        kernel, _ = _projection_arrays(projection)
        if kernel.shape != (s.shape[-1], t.shape[-1]):
            raise ValueError(f"projection kernel must be [{s.shape[-1]}, {t.shape[-1]}] for "
                             f"features {s.shape} -> {t.shape}, got {kernel.shape}")
        s = apply_hint_projection(projection, s)
    elif s.shape != t.shape:
        raise ValueError(f"without a projection, student_features and teacher_features must "
                         f"have the same shape; got {s.shape} and {t.shape}")
    d = s - jax.lax.stop_gradient(t)
    return jnp.mean(jnp.square(d).reshape(d.shape[0], -1), axis=-1)


def attention_map(features: jax.Array, *, p: float | jax.Array = 2.0,
                  eps: float = 1e-12) -> jax.Array:
    """Spatial attention map of attention transfer: ``sum_c |a_c|^p`` at each position,
    flattened and L2-normalised per example.

    Args:
      features: ``[batch, *spatial, channels]`` floating, at least one spatial axis.
      p: exponent, ``p > 0`` (may be traced; the paper uses 2).
      eps: the norm is clamped below at ``eps`` (as ``torch.nn.functional.normalize``).

    Returns:
      ``[batch, prod(spatial)]``, each row of unit L2 norm (or zero).
    """
    a = _as_float("features", features)
    if a.ndim < 3:
        raise ValueError(f"features must be [batch, *spatial, channels] with at least one "
                         f"spatial axis, got shape {a.shape}")
    _check_positive("p", p)
    q = jnp.sum(jnp.abs(a) ** p, axis=-1).reshape(a.shape[0], -1)
    # max(|q|, eps) as sqrt(max(|q|^2, eps^2)): no NaN gradient at q = 0
    norm = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(q), axis=-1, keepdims=True), eps ** 2))
    return q / norm


def attention_transfer_loss(student_features: jax.Array, teacher_features: jax.Array, *,
                            p: float | jax.Array = 2.0) -> jax.Array:
    """Activation-based attention transfer: squared distance between the normalised spatial
    attention maps (:func:`attention_map`) of student and teacher.

    The per-example value is the mean over positions of ``(Q_s - Q_t)^2``, as in the authors'
    code (``(at(x) - at(y)).pow(2).mean()``, there also averaged over the batch); the paper's
    formula writes the un-squared ``p``-norm with a weight ``beta / 2``. Channel counts may
    differ; the spatial shapes must agree. Sum the loss over the layer pairs you match.

    Args:
      student_features: ``[batch, *spatial, student_channels]`` floating.
      teacher_features: ``[batch, *spatial, teacher_channels]`` floating.
      p: exponent of the attention map (may be traced).

    Returns:
      ``[batch]`` per-example loss.

    References:
      Zagoruyko & Komodakis, "Paying More Attention to Attention: Improving the Performance of
      Convolutional Neural Networks via Attention Transfer", ICLR 2017, arXiv:1612.03928.
    """
    s = _as_float("student_features", student_features)
    t = _as_float("teacher_features", teacher_features)
    if s.ndim < 3 or t.ndim != s.ndim or s.shape[:-1] != t.shape[:-1]:
        raise ValueError(f"student_features and teacher_features must be [batch, *spatial, C] "
                         f"with the same batch and spatial axes; got {s.shape} and {t.shape}")
    qs = attention_map(s, p=p)
    qt = attention_map(jax.lax.stop_gradient(t), p=p)
    return jnp.mean(jnp.square(qs - qt), axis=-1)


def _embedding_pair(student, teacher):
    s = _as_float("student_embeddings", student)
    t = _as_float("teacher_embeddings", teacher)
    if s.ndim < 1 or s.shape != t.shape:
        raise ValueError(f"student_embeddings and teacher_embeddings must have the same shape "
                         f"[..., dim]; got {s.shape} and {t.shape} (project the student first "
                         f"when the widths differ)")
    return s, jax.lax.stop_gradient(t)


def embedding_mse_loss(student_embeddings: jax.Array,
                       teacher_embeddings: jax.Array) -> jax.Array:
    """Mean squared error over the embedding axis.

    Args:
      student_embeddings: ``[..., dim]`` floating.
      teacher_embeddings: ``[..., dim]`` floating (no gradient reaches it).

    Returns:
      ``[...]``: ``mean((s - t)^2)`` over ``dim``.

    References:
      Sanh, Debut, Chaumond & Wolf, "DistilBERT, a distilled version of BERT", 2019 (hidden-state
      matching); Jiao et al., "TinyBERT", 2020.
    """
    s, t = _embedding_pair(student_embeddings, teacher_embeddings)
    return jnp.mean(jnp.square(s - t), axis=-1)


def cosine_distance_loss(student_embeddings: jax.Array, teacher_embeddings: jax.Array, *,
                         eps: float = 1e-8) -> jax.Array:
    """Cosine distance ``1 - <s, t> / (max(|s|, eps) max(|t|, eps))`` over the embedding axis.

    Args:
      student_embeddings: ``[..., dim]`` floating.
      teacher_embeddings: ``[..., dim]`` floating (no gradient reaches it).
      eps: each norm is clamped below at ``eps``.

    Returns:
      ``[...]`` in ``[0, 2]``.

    References:
      Sanh, Debut, Chaumond & Wolf, "DistilBERT, a distilled version of BERT", 2019 (the cosine
      embedding loss on hidden states).
    """
    s, t = _embedding_pair(student_embeddings, teacher_embeddings)
    ns = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(s), axis=-1), eps ** 2))
    nt = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(t), axis=-1), eps ** 2))
    return 1.0 - jnp.sum(s * t, axis=-1) / (ns * nt)
