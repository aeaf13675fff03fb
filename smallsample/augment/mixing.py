"""Batch-level mixing: mixup and cutmix, returning mixed inputs and mixed label distributions.

Both act on a whole batch (e.g. the support set of one episode) and pair example ``i`` with
example ``perm[i]`` of a random permutation of the same batch, with one mixing weight ``lam`` for
the batch, as in the papers. Labels may be integer classes ``[B]`` (with a static
``num_classes``) or distributions ``[B, K]``; the result is always distributions ``[B, K]`` whose
rows sum to one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["cutmix", "mixup"]


def _distributions(labels: jax.Array, num_classes: int | None, dtype, where: str) -> jax.Array:
    if labels.ndim == 1:
        if not isinstance(num_classes, int) or num_classes <= 0:
            raise ValueError(f"{where}: integer labels {labels.shape} need a static positive "
                             f"num_classes, got {num_classes!r}")
        return jax.nn.one_hot(labels, num_classes, dtype=dtype)
    if labels.ndim == 2:
        if num_classes is not None and labels.shape[1] != num_classes:
            raise ValueError(f"{where}: label distributions {labels.shape} do not have "
                             f"num_classes={num_classes} columns")
        return labels.astype(dtype)
    raise ValueError(f"{where}: labels must be [B] ints or [B, K] distributions, got shape "
                     f"{labels.shape}")


def _check_batch(x: jax.Array, labels: jax.Array, where: str) -> None:
    if x.ndim < 1 or labels.shape[:1] != x.shape[:1]:
        raise ValueError(f"{where}: inputs {x.shape} and labels {labels.shape} must share the "
                         "leading batch axis")


def mixup(key: jax.Array, x: jax.Array, labels: jax.Array, *, alpha: float | jax.Array = 0.2,
          num_classes: int | None = None) -> tuple[jax.Array, jax.Array]:
    """mixup (Zhang et al. 2018): ``lam * x + (1 - lam) * x[perm]`` with ``lam ~ Beta(alpha,
    alpha)``, labels mixed with the same weight.

    Args:
      key: a PRNG key.
      x: ``[B, ...]`` float inputs.
      labels: ``[B]`` int classes (then ``num_classes`` is needed) or ``[B, K]`` distributions.
      alpha: Beta concentration (> 0); small values keep ``lam`` near 0 or 1.
      num_classes: static ``K`` for integer labels.

    Returns:
      ``(mixed_x [B, ...], mixed_labels [B, K])``, same dtype as ``x``.
    """
    _check_batch(x, labels, "mixup")
    if isinstance(alpha, (int, float)) and alpha <= 0:
        raise ValueError(f"mixup: alpha must be positive, got {alpha!r}")
    y = _distributions(labels, num_classes, x.dtype, "mixup")
    k_lam, k_perm = jax.random.split(key)
    lam = jax.random.beta(k_lam, alpha, alpha).astype(x.dtype)
    perm = jax.random.permutation(k_perm, x.shape[0])
    return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]


def cutmix(key: jax.Array, x: jax.Array, labels: jax.Array, *, alpha: float | jax.Array = 1.0,
           num_classes: int | None = None) -> tuple[jax.Array, jax.Array]:
    """CutMix (Yun et al. 2019): a box of area ``(1 - lam) * H * W`` (``lam ~ Beta(alpha,
    alpha)``, centre uniform, clipped at the border) is pasted from ``x[perm]`` into every image;
    labels are mixed by the area actually pasted.

    Args:
      key: a PRNG key.
      x: ``[B, H, W, C]`` images.
      labels: ``[B]`` int classes (then ``num_classes`` is needed) or ``[B, K]`` distributions.
      alpha: Beta concentration (> 0).
      num_classes: static ``K`` for integer labels.

    Returns:
      ``(mixed_x [B, H, W, C], mixed_labels [B, K])``.
    """
    if x.ndim != 4:
        raise ValueError(f"cutmix: expected images [B, H, W, C], got shape {x.shape}")
    _check_batch(x, labels, "cutmix")
    if isinstance(alpha, (int, float)) and alpha <= 0:
        raise ValueError(f"cutmix: alpha must be positive, got {alpha!r}")
    y = _distributions(labels, num_classes, x.dtype, "cutmix")
    _, h, w, _ = x.shape
    k_lam, k_perm, k_r, k_c = jax.random.split(key, 4)
    lam = jax.random.beta(k_lam, alpha, alpha)
    cut = jnp.sqrt(1.0 - lam)
    bh, bw = jnp.round(cut * h).astype(jnp.int32), jnp.round(cut * w).astype(jnp.int32)
    cr = jax.random.randint(k_r, (), 0, h)
    cc = jax.random.randint(k_c, (), 0, w)
    top, bottom = jnp.clip(cr - bh // 2, 0, h), jnp.clip(cr - bh // 2 + bh, 0, h)
    left, right = jnp.clip(cc - bw // 2, 0, w), jnp.clip(cc - bw // 2 + bw, 0, w)
    rows = jnp.arange(h)[:, None]
    cols = jnp.arange(w)[None, :]
    box = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)  # [H, W]
    perm = jax.random.permutation(k_perm, x.shape[0])
    mixed = jnp.where(box[None, :, :, None], x[perm], x)
    pasted = (jnp.sum(box) / (h * w)).astype(x.dtype)
    return mixed, (1 - pasted) * y + pasted * y[perm]
