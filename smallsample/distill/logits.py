"""Distillation losses on logits: Hinton KD, its mix with the label cross-entropy, reverse KL,
decoupled KD (DKD) and KD on standardised logits.

Every loss takes ``student_logits [..., num_classes]`` and ``teacher_logits [..., num_classes]``
(any leading axes: ``[batch]``, ``[batch, seq]`` for token-level KD...) and returns one value per
example, ``[...]``, with no reduction: the caller takes the mean (or a masked mean). Teacher
outputs go through :func:`jax.lax.stop_gradient` inside each loss, so a teacher that is computed in
the same differentiated function never receives a gradient. Temperatures and weights may be traced
values (vmapped over, scheduled); they are checked to be positive only when they are concrete.

The KL terms are computed as ``sum_c p_c (log p_c - log q_c)`` with the ``p_c = 0`` terms set to
zero, so a teacher with ``-inf`` logits (masked classes) or very large logit gaps gives finite,
exact values.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# --------------------------------------------------------------------------- shared checks
# (used by the feature and relation losses as well)


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _as_float(name: str, x) -> jax.Array:
    """``x`` as an array that must have a floating dtype (ValueError naming dtype and shape)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating-point array, got dtype {x.dtype} with "
                         f"shape {x.shape}")
    return x


def _check_positive(name: str, value) -> None:
    """Scalar hyperparameter > 0 when concrete (traced values are not checked)."""
    if _is_concrete(value):
        v = np.asarray(value, dtype=np.float64)
        if not np.all(v > 0):
            raise ValueError(f"{name} must be > 0, got {value!r}")


def _check_int_labels(labels, logits_shape: tuple[int, ...], num_classes: int) -> jax.Array:
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype} with "
                         f"shape {labels.shape}")
    if labels.shape != logits_shape[:-1]:
        raise ValueError(f"labels must have shape {logits_shape[:-1]} (the logits' shape "
                         f"{logits_shape} without its class axis), got {labels.shape}")
    if _is_concrete(labels) and labels.size:
        values = np.asarray(labels)  # on the host: no op traced when jitted with a constant
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"labels must be in [0, {num_classes}), got values in [{lo}, {hi}]")
    return labels


def _logit_pair(student_logits, teacher_logits, *, min_classes: int = 1):
    s = _as_float("student_logits", student_logits)
    t = _as_float("teacher_logits", teacher_logits)
    if s.ndim < 1 or s.shape != t.shape:
        raise ValueError(f"student_logits and teacher_logits must have the same shape "
                         f"[..., num_classes]; got {s.shape} and {t.shape}")
    if s.shape[-1] < min_classes:
        raise ValueError(f"need at least {min_classes} classes on the last axis; got logits "
                         f"of shape {s.shape}")
    return s, jax.lax.stop_gradient(t)


def _kl_from_log_probs(log_p: jax.Array, log_q: jax.Array, axis: int = -1) -> jax.Array:
    """``sum p (log p - log q)`` over ``axis``, with the ``p = 0`` terms exactly zero."""
    p = jnp.exp(log_p)
    return jnp.sum(jnp.where(p > 0, p * (log_p - log_q), 0.0), axis=axis)


# --------------------------------------------------------------------------- losses


def kd_loss(student_logits: jax.Array, teacher_logits: jax.Array, *,
            temperature: float | jax.Array = 1.0) -> jax.Array:
    """Hinton knowledge distillation: ``T^2 KL(softmax(t / T) || softmax(s / T))``.

    The KL divergence from the teacher's softened distribution to the student's; it differs from
    the soft-target cross-entropy of the paper only by the teacher's entropy, a constant for the
    student, so the gradient is the same and the loss is zero when the student matches. The
    ``T^2`` factor keeps the gradient's scale independent of ``T`` (the paper's Section 2).

    Args:
      student_logits: ``[..., num_classes]`` floating.
      teacher_logits: ``[..., num_classes]`` floating (no gradient reaches it).
      temperature: ``T > 0``, scalar (may be traced).

    Returns:
      ``[...]`` per-example loss.

    References:
      Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015,
      arXiv:1503.02531.
    """
    s, t = _logit_pair(student_logits, teacher_logits)
    _check_positive("temperature", temperature)
    log_q = jax.nn.log_softmax(s / temperature, axis=-1)
    log_p = jax.nn.log_softmax(t / temperature, axis=-1)
    return temperature ** 2 * _kl_from_log_probs(log_p, log_q)


def kd_loss_from_probs(student_logits: jax.Array, teacher_probs: jax.Array, *,
                       temperature: float | jax.Array = 1.0) -> jax.Array:
    """:func:`kd_loss` for a teacher given as probabilities (an ensemble average, a one-hot or
    smoothed label, a served model's softmax output).

    The teacher is softened as ``p^(1/T) / sum p^(1/T)`` (``softmax(log p / T)``), which equals
    ``softmax(t / T)`` when ``p = softmax(t)``; zero probabilities stay exactly zero, so a one-hot
    teacher at ``T = 1`` gives the cross-entropy with its labels.

    Args:
      student_logits: ``[..., num_classes]`` floating.
      teacher_probs: ``[..., num_classes]`` non-negative, summing to 1 on the last axis.
      temperature: ``T > 0``, scalar (may be traced).

    Returns:
      ``[...]`` per-example loss ``T^2 KL(p_T || softmax(s / T))``.
    """
    s = _as_float("student_logits", student_logits)
    p = _as_float("teacher_probs", teacher_probs)
    if s.ndim < 1 or s.shape != p.shape:
        raise ValueError(f"student_logits and teacher_probs must have the same shape "
                         f"[..., num_classes]; got {s.shape} and {p.shape}")
    _check_positive("temperature", temperature)
    if _is_concrete(p) and p.size and float(np.min(np.asarray(p))) < 0:
        raise ValueError(f"teacher_probs must be non-negative, got a minimum of "
                         f"{float(np.min(np.asarray(p)))}")
    p = jax.lax.stop_gradient(p)
    log_p = jax.nn.log_softmax(jnp.log(p) / temperature, axis=-1)
    log_q = jax.nn.log_softmax(s / temperature, axis=-1)
    return temperature ** 2 * _kl_from_log_probs(log_p, log_q)


def kd_ce_loss(student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array, *,
               temperature: float | jax.Array = 1.0,
               alpha: float | jax.Array = 0.5) -> jax.Array:
    """Hinton's mix of distillation and hard labels:
    ``alpha * kd_loss(s, t, T) + (1 - alpha) * CE(softmax(s), labels)``.

    The cross-entropy uses the student at temperature 1; the KD term carries its ``T^2`` factor,
    as in the paper, so ``alpha`` weighs terms of comparable gradient scale.

    Args:
      student_logits: ``[..., num_classes]`` floating.
      teacher_logits: ``[..., num_classes]`` floating (no gradient reaches it).
      labels: ``[...]`` integer class indices in ``[0, num_classes)``.
      temperature: ``T > 0`` (may be traced).
      alpha: weight of the KD term, usually in ``[0, 1]`` (may be traced).

    Returns:
      ``[...]`` per-example loss.

    References:
      Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
    """
    s, _ = _logit_pair(student_logits, teacher_logits)
    labels = _check_int_labels(labels, s.shape, s.shape[-1])
    log_q1 = jax.nn.log_softmax(s, axis=-1)
    ce = -jnp.take_along_axis(log_q1, labels[..., None], axis=-1)[..., 0]
    return alpha * kd_loss(s, teacher_logits, temperature=temperature) + (1 - alpha) * ce


def reverse_kd_loss(student_logits: jax.Array, teacher_logits: jax.Array, *,
                    temperature: float | jax.Array = 1.0) -> jax.Array:
    """Reverse-KL distillation: ``T^2 KL(softmax(s / T) || softmax(t / T))``.

    Mode-seeking: the student is penalised for mass where the teacher has little, rather than for
    missing the teacher's mass (the forward KL of :func:`kd_loss`). Infinite where the student
    puts mass on a class with a ``-inf`` teacher logit.

    Args:
      student_logits: ``[..., num_classes]`` floating.
      teacher_logits: ``[..., num_classes]`` floating (no gradient reaches it).
      temperature: ``T > 0`` (may be traced).

    Returns:
      ``[...]`` per-example loss.

    References:
      Gu, Dong, Wei & Huang, "MiniLLM: Knowledge Distillation of Large Language Models", ICLR
      2024 (reverse KL for generative students); Minka, "Divergence measures and message
      passing", 2005 (forward vs reverse KL).
    """
    s, t = _logit_pair(student_logits, teacher_logits)
    _check_positive("temperature", temperature)
    log_q = jax.nn.log_softmax(s / temperature, axis=-1)
    log_p = jax.nn.log_softmax(t / temperature, axis=-1)
    return temperature ** 2 * _kl_from_log_probs(log_q, log_p)


def dkd_terms(student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array, *,
              temperature: float | jax.Array = 4.0) -> tuple[jax.Array, jax.Array]:
    """The two terms of decoupled KD: ``(TCKD, NCKD)``, each ``[...]`` and scaled by ``T^2``.

    - TCKD: KL between the binary distributions ``(p_target, 1 - p_target)`` of teacher and
      student at temperature ``T``.
    - NCKD: KL between the teacher's and the student's distributions over the non-target
      classes only (renormalised among themselves).

    Classic KD decomposes as ``KD = TCKD + (1 - p_target^teacher) NCKD`` (the paper's Eq. 1);
    DKD reweighs the two terms independently (:func:`dkd_loss`). The non-target distributions
    exclude the target class exactly (the authors' code subtracts 1000 from its logit instead).

    Args:
      student_logits: ``[..., num_classes]`` floating, ``num_classes >= 2``.
      teacher_logits: ``[..., num_classes]`` floating (no gradient reaches it).
      labels: ``[...]`` integer target classes.
      temperature: ``T > 0`` (may be traced).

    Returns:
      ``(tckd, nckd)``, each ``[...]``.

    References:
      Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022,
      arXiv:2203.08679.
    """
    s, t = _logit_pair(student_logits, teacher_logits, min_classes=2)
    labels = _check_int_labels(labels, s.shape, s.shape[-1])
    _check_positive("temperature", temperature)
    target = jax.nn.one_hot(labels, s.shape[-1], dtype=bool)

    def split(z):
        z = z / temperature
        lse_all = jax.nn.logsumexp(z, axis=-1)
        lse_other = jax.nn.logsumexp(jnp.where(target, -jnp.inf, z), axis=-1)
        z_target = jnp.sum(jnp.where(target, z, 0.0), axis=-1)
        binary = jnp.stack([z_target - lse_all, lse_other - lse_all], axis=-1)
        non_target = jnp.where(target, -jnp.inf, z - lse_other[..., None])
        return binary, non_target

    bin_s, other_s = split(s)
    bin_t, other_t = split(t)
    tckd = _kl_from_log_probs(bin_t, bin_s)
    nckd = _kl_from_log_probs(other_t, jnp.where(target, 0.0, other_s))
    return temperature ** 2 * tckd, temperature ** 2 * nckd


def dkd_loss(student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array, *,
             alpha: float | jax.Array = 1.0, beta: float | jax.Array = 8.0,
             temperature: float | jax.Array = 4.0) -> jax.Array:
    """Decoupled knowledge distillation: ``alpha * TCKD + beta * NCKD`` (see :func:`dkd_terms`).

    The paper adds the student's cross-entropy with the labels and ramps the DKD term up over the
    first epochs; both belong to the training loop (``alpha`` and ``beta`` may be traced, so a
    schedule can scale them). The defaults are the paper's CIFAR-100 setting.

    Args:
      student_logits: ``[..., num_classes]`` floating, ``num_classes >= 2``.
      teacher_logits: ``[..., num_classes]`` floating (no gradient reaches it).
      labels: ``[...]`` integer target classes.
      alpha: weight of TCKD (may be traced).
      beta: weight of NCKD (may be traced).
      temperature: ``T > 0`` (may be traced).

    Returns:
      ``[...]`` per-example loss.

    References:
      Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022.
    """
    tckd, nckd = dkd_terms(student_logits, teacher_logits, labels, temperature=temperature)
    return alpha * tckd + beta * nckd


def standardize_logits(logits: jax.Array, *, ddof: int = 0, eps: float = 1e-7) -> jax.Array:
    """Z-score each example's logits: ``(z - mean(z)) / (std(z) + eps)`` over the class axis.

    Args:
      logits: ``[..., num_classes]`` floating.
      ddof: static int, the standard deviation's degrees of freedom (0: population, the paper's
        formula; 1: ``torch.std``'s default, used by the authors' code).
      eps: added to the standard deviation.

    Returns:
      ``[..., num_classes]``.
    """
    mean = jnp.mean(logits, axis=-1, keepdims=True)
    std = jnp.std(logits, axis=-1, keepdims=True, ddof=ddof)
    return (logits - mean) / (std + eps)


def standardized_kd_loss(student_logits: jax.Array, teacher_logits: jax.Array, *,
                         temperature: float | jax.Array = 2.0, ddof: int = 0,
                         eps: float = 1e-7) -> jax.Array:
    """KD on z-scored logits: :func:`kd_loss` of ``standardize_logits(s)`` and
    ``standardize_logits(t)`` at temperature ``T``.

    Standardising removes each example's logit shift and scale, so the student need only match
    the teacher's logit *relations*, not its magnitude (a smaller student cannot match a large
    teacher's logit range); the loss is invariant to ``s -> a s + b`` with ``a > 0``. The ``T^2``
    factor is kept, as in the authors' code. ``ddof=1`` reproduces their ``torch.std``; it equals
    ``ddof=0`` with the temperature multiplied by ``sqrt(K / (K - 1))`` (up to ``eps``).

    Args:
      student_logits: ``[..., num_classes]`` floating, ``num_classes > ddof``.
      teacher_logits: ``[..., num_classes]`` floating (no gradient reaches it).
      temperature: ``T > 0`` (may be traced).
      ddof: static int, see :func:`standardize_logits`.
      eps: added to each standard deviation.

    Returns:
      ``[...]`` per-example loss.

    References:
      Sun, Ren, Li, Wang & Cao, "Logit Standardization in Knowledge Distillation", CVPR 2024,
      arXiv:2403.01427.
    """
    s, t = _logit_pair(student_logits, teacher_logits, min_classes=2)
    if not isinstance(ddof, (int, np.integer)) or isinstance(ddof, bool) or not (
            0 <= ddof < s.shape[-1]):
        raise ValueError(f"ddof must be a static int in [0, num_classes={s.shape[-1]}), "
                         f"got {ddof!r}")
    return kd_loss(standardize_logits(s, ddof=ddof, eps=eps),
                   standardize_logits(t, ddof=ddof, eps=eps), temperature=temperature)
