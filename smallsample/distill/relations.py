"""Relational distillation losses: similarity-preserving KD, relational KD (distance and angle),
contrastive (InfoNCE) distillation, and MiniLM's self-attention and value-relation transfer.

**What the batch losses return.** Similarity-preserving, relational and contrastive losses are
defined over a whole batch (every example is compared with the others), so they cannot be
computed one example at a time. They still return ``[batch]``: the term of each *anchor* example
(its row of the relation matrix), scaled so that ``loss.mean()`` is exactly the paper's batch
loss. This keeps the optax convention (per-example values, mean taken by the caller), lets a
caller mask or weight anchors, and ``vmap`` over an extra leading axis gives ``[n, batch]``.
Unlike per-example losses, an anchor's value depends on the rest of the batch.

MiniLM losses compare relations *within* each example (between its tokens) and return one value
per example, ``[batch]``.

The teacher arguments go through :func:`jax.lax.stop_gradient`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from smallsample.distill.logits import _as_float, _check_positive, _kl_from_log_probs


def _batch_pair(student, teacher, *, what: str = "features", same_width: bool = False):
    s = _as_float(f"student_{what}", student)
    t = _as_float(f"teacher_{what}", teacher)
    if s.ndim < 2 or t.ndim < 2 or s.shape[0] != t.shape[0]:
        raise ValueError(f"student_{what} and teacher_{what} must be [batch, ...] with the same "
                         f"batch size; got {s.shape} and {t.shape}")
    if same_width and s.shape != t.shape:
        raise ValueError(f"student_{what} and teacher_{what} must have the same shape "
                         f"[batch, dim]; got {s.shape} and {t.shape} (project the student "
                         f"first when the widths differ)")
    return s.reshape(s.shape[0], -1), jax.lax.stop_gradient(t).reshape(t.shape[0], -1)


def _huber(x: jax.Array, delta) -> jax.Array:
    """``0.5 x^2`` for ``|x| <= delta``, else ``delta (|x| - 0.5 delta)`` (smooth L1 at 1)."""
    a = jnp.abs(x)
    return jnp.where(a <= delta, 0.5 * jnp.square(x), delta * (a - 0.5 * delta))


def _normalize_rows(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
    return x / jnp.sqrt(jnp.maximum(sq, eps ** 2))


# --------------------------------------------------------------------------- batch relations


def similarity_preserving_loss(student_features: jax.Array,
                               teacher_features: jax.Array) -> jax.Array:
    """Similarity-preserving KD: match the row-normalised batch Gram matrices.

    Each example's features are flattened, ``G = F F^T`` (``[batch, batch]``), each row of ``G``
    is L2-normalised, and the loss is ``||G_t - G_s||_F^2 / b^2``. Feature widths may differ
    between student and teacher.

    Args:
      student_features: ``[batch, ...]`` floating.
      teacher_features: ``[batch, ...]`` floating, same batch size.

    Returns:
      ``[batch]``: anchor ``i``'s term ``sum_j (G_t - G_s)_ij^2 / b``; its mean is the paper's
      loss (see the module docstring).

    References:
      Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019, arXiv:1907.09682.
    """
    s, t = _batch_pair(student_features, teacher_features)
    b = s.shape[0]
    gs = _normalize_rows(s @ s.T)
    gt = _normalize_rows(t @ t.T)
    return jnp.sum(jnp.square(gt - gs), axis=-1) / b


def _pairwise_distances(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Euclidean distances ``[b, b]`` from the Gram matrix (memory ``b^2``), zero diagonal,
    without a NaN gradient at zero distance."""
    sq_norm = jnp.sum(jnp.square(x), axis=-1)
    # full float32 products: TF32 (a GPU default) would lose the small distances to cancellation
    gram = jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST)
    sq = sq_norm[:, None] + sq_norm[None, :] - 2.0 * gram
    off = ~jnp.eye(x.shape[0], dtype=bool)
    return jnp.where(off, jnp.sqrt(jnp.maximum(sq, eps)), 0.0)


def rkd_distance_loss(student_embeddings: jax.Array, teacher_embeddings: jax.Array, *,
                      delta: float | jax.Array = 1.0) -> jax.Array:
    """Relational KD, distance-wise: Huber loss between the pairwise distances of student and
    teacher, each divided by its mean over the pairs ``i != j``.

    Distances come from the Gram matrix, as in the authors' code (memory ``b^2``). The mean
    distance is over distinct pairs ``i != j`` (the authors' code averages the distances that
    are > 0, the same unless two examples coincide). Widths may differ; the loss is invariant to
    rotating, translating and scaling either embedding.

    Args:
      student_embeddings: ``[batch, ...]`` floating, ``batch >= 2``.
      teacher_embeddings: ``[batch, ...]`` floating, same batch size.
      delta: Huber threshold (1 is PyTorch's smooth L1, the paper's choice; may be traced).

    Returns:
      ``[batch]``: anchor ``i``'s term ``mean_j huber(psi_s_ij - psi_t_ij)``; its mean is the
      authors' mean over all ``b^2`` pairs (the zero diagonal included).

    References:
      Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019, arXiv:1904.05068.
    """
    s, t = _batch_pair(student_embeddings, teacher_embeddings, what="embeddings")
    b = s.shape[0]
    if b < 2:
        raise ValueError(f"rkd_distance_loss needs a batch of at least 2, got {s.shape}")
    _check_positive("delta", delta)

    def psi(x):
        d = _pairwise_distances(x)
        return d / jnp.maximum(jnp.sum(d) / (b * (b - 1)), 1e-12)

    return jnp.mean(_huber(psi(s) - psi(t), delta), axis=-1)


def _angles(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``[b, b, b]``: ``angles[j, i, k] = cos of the angle at x_j between x_i and x_k``, zero
    when ``i == j`` or ``k == j`` (zero difference vectors normalise to zero)."""
    e = _normalize_rows(x[None, :, :] - x[:, None, :], eps)  # e[j, i] = unit(x_i - x_j)
    return jnp.einsum("jid,jkd->jik", e, e)


def rkd_angle_loss(student_embeddings: jax.Array, teacher_embeddings: jax.Array, *,
                   delta: float | jax.Array = 1.0) -> jax.Array:
    """Relational KD, angle-wise: Huber loss between the cosines of the angles that triplets of
    examples form, ``cos angle(x_i, x_j, x_k) = <unit(x_i - x_j), unit(x_k - x_j)>``.

    All ``b^3`` triplets are used, as in the authors' code (memory ``b^2 dim`` for the difference
    vectors and ``b^3`` for the cosines; degenerate triplets with ``i == j`` or ``k == j`` give
    zero on both sides). Widths may differ.

    Args:
      student_embeddings: ``[batch, ...]`` floating.
      teacher_embeddings: ``[batch, ...]`` floating, same batch size.
      delta: Huber threshold (may be traced).

    Returns:
      ``[batch]``: the term of each vertex ``j``, ``mean_{i,k} huber(...)``; its mean is the
      authors' mean over all ``b^3`` triplets.

    References:
      Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019.
    """
    s, t = _batch_pair(student_embeddings, teacher_embeddings, what="embeddings")
    _check_positive("delta", delta)
    return jnp.mean(_huber(_angles(s) - _angles(t), delta), axis=(1, 2))


def rkd_loss(student_embeddings: jax.Array, teacher_embeddings: jax.Array, *,
             distance_weight: float | jax.Array = 1.0, angle_weight: float | jax.Array = 2.0,
             delta: float | jax.Array = 1.0) -> jax.Array:
    """``distance_weight * rkd_distance_loss + angle_weight * rkd_angle_loss``, ``[batch]``.

    The default 1:2 ratio is the paper's (25 and 50 in its metric-learning runs; scale both with
    the task loss).

    References:
      Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019.
    """
    return (distance_weight * rkd_distance_loss(student_embeddings, teacher_embeddings,
                                                delta=delta)
            + angle_weight * rkd_angle_loss(student_embeddings, teacher_embeddings, delta=delta))


def contrastive_loss(student_embeddings: jax.Array, teacher_embeddings: jax.Array, *,
                     temperature: float | jax.Array = 0.1, normalize: bool = True) -> jax.Array:
    """InfoNCE between student and teacher embeddings with in-batch negatives.

    For anchor ``i``: ``-log softmax_j(<s_i, t_j> / T)[i]``: the student embedding of example
    ``i`` must pick the teacher embedding of the same example among the batch's teacher
    embeddings. One direction (student anchors, teacher candidates); average with the swapped
    call for a symmetric loss. A lower bound on the student-teacher mutual information, as in
    contrastive representation distillation (CRD), here without CRD's memory bank.

    Args:
      student_embeddings: ``[batch, dim]`` floating.
      teacher_embeddings: ``[batch, dim]`` floating (project the student first when the widths
        differ).
      temperature: ``T > 0`` (may be traced).
      normalize: static bool; L2-normalise both first (cosine similarities).

    Returns:
      ``[batch]`` per-anchor loss (an anchor's value depends on the other examples).

    References:
      van den Oord, Li & Vinyals, "Representation Learning with Contrastive Predictive Coding",
      2018, arXiv:1807.03748 (InfoNCE); Tian, Krishnan & Isola, "Contrastive Representation
      Distillation", ICLR 2020, arXiv:1910.10699.
    """
    s, t = _batch_pair(student_embeddings, teacher_embeddings, what="embeddings",
                       same_width=True)
    if jnp.ndim(student_embeddings) != 2:
        raise ValueError(f"contrastive_loss expects [batch, dim] embeddings, got "
                         f"{jnp.shape(student_embeddings)}")
    _check_positive("temperature", temperature)
    if normalize:
        s, t = _normalize_rows(s), _normalize_rows(t)
    logits = (s @ t.T) / temperature
    return jax.nn.logsumexp(logits, axis=-1) - jnp.diagonal(logits)


# --------------------------------------------------------------------------- MiniLM


def _check_mask(mask, batch: int, seq: int):
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if mask.shape != (batch, seq):
        raise ValueError(f"mask must be [batch, seq] = [{batch}, {seq}] (True/1 for real "
                         f"tokens), got {mask.shape}")
    return mask.astype(bool)


def _masked_mean_kl(kl: jax.Array, mask) -> jax.Array:
    """``kl [batch, heads, q]`` -> ``[batch]``: mean over heads and the real queries."""
    if mask is None:
        return jnp.mean(kl, axis=(1, 2))
    total = jnp.sum(jnp.where(mask[:, None, :], kl, 0.0), axis=(1, 2))
    count = kl.shape[1] * jnp.sum(mask, axis=-1)
    return total / jnp.maximum(count, 1).astype(kl.dtype)


def attention_distribution_loss(student_attention: jax.Array, teacher_attention: jax.Array, *,
                                mask: jax.Array | None = None) -> jax.Array:
    """MiniLM self-attention distribution transfer:
    ``KL(A_t || A_s)`` per head and query, averaged over heads and (real) queries.

    Takes attention *probabilities* (rows sum to 1 over keys), as a model returns them. The head
    counts must be equal; when they differ, build the relations from the queries and keys with
    :func:`relation_loss` and a common number of relation heads (MiniLM-v2). Student
    probabilities are clamped below at the dtype's smallest normal number before the log.

    Args:
      student_attention: ``[batch, heads, seq, seq]`` floating.
      teacher_attention: ``[batch, heads, seq, seq]`` floating (no gradient reaches it).
      mask: optional ``[batch, seq]`` bool (True for real tokens). Padded queries are left out
        of the average, padded keys out of each KL sum; the probabilities are expected to come
        from models that masked the same keys.

    Returns:
      ``[batch]`` per-example loss.

    References:
      Wang, Wei, Dong, Bao, Yang & Zhou, "MiniLM: Deep Self-Attention Distillation for
      Task-Agnostic Compression of Pre-Trained Transformers", NeurIPS 2020, arXiv:2002.10957.
    """
    s = _as_float("student_attention", student_attention)
    t = _as_float("teacher_attention", teacher_attention)
    if s.ndim != 4 or s.shape != t.shape or s.shape[2] != s.shape[3]:
        raise ValueError(f"student_attention and teacher_attention must both be "
                         f"[batch, heads, seq, seq] with the same shape; got {s.shape} and "
                         f"{t.shape} (for different head counts use relation_loss on the "
                         f"queries and keys)")
    mask = _check_mask(mask, s.shape[0], s.shape[2])
    t = jax.lax.stop_gradient(t)
    keep = (t > 0) if mask is None else (t > 0) & mask[:, None, None, :]
    log_s = jnp.log(jnp.maximum(s, jnp.finfo(s.dtype).tiny))
    log_t = jnp.log(jnp.where(keep, t, 1.0))
    kl = jnp.sum(jnp.where(keep, t * (log_t - log_s), 0.0), axis=-1)
    return _masked_mean_kl(kl, mask)


def _relation_log_probs(x: jax.Array, y: jax.Array, heads: int, mask) -> jax.Array:
    """``log softmax(X_r Y_r^T / sqrt(d_r))`` per relation head: ``[b, heads, seq, seq]``."""
    b, seq, width = x.shape
    dr = width // heads
    xr = x.reshape(b, seq, heads, dr)
    yr = y.reshape(b, seq, heads, dr)
    scores = jnp.einsum("bqhd,bkhd->bhqk", xr, yr) / math.sqrt(dr)
    if mask is not None:
        scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
    return jax.nn.log_softmax(scores, axis=-1)


def relation_loss(student_x: jax.Array, teacher_x: jax.Array, *, num_relation_heads: int,
                  student_y: jax.Array | None = None, teacher_y: jax.Array | None = None,
                  mask: jax.Array | None = None) -> jax.Array:
    """MiniLM-v2 multi-head self-attention relation transfer between two vector sets.

    The concatenated per-token vectors (``[batch, seq, hidden]``, heads side by side, as a
    query/key/value projection outputs them) are split into ``num_relation_heads`` relation
    heads of width ``d_r = hidden / num_relation_heads``, chosen independently of the models'
    attention heads so that student and teacher with different head counts (and widths) give
    relations of the same shape. Per relation head ``R = softmax(X_r Y_r^T / sqrt(d_r))``
    (``[seq, seq]``) and the loss is ``KL(R_t || R_s)`` averaged over relation heads and queries.

    - ``y`` omitted: ``Y = X`` (Q-Q, K-K, V-V relations; with the model's own head count on the
      values this is MiniLM-v1's value relation, :func:`value_relation_loss`).
    - ``x`` = queries, ``y`` = keys: the self-attention distributions (MiniLM-v1's attention
      transfer when ``num_relation_heads`` is the model's head count and the model has no extra
      attention bias).

    Args:
      student_x: ``[batch, seq, student_hidden]`` floating.
      teacher_x: ``[batch, seq, teacher_hidden]`` floating (no gradient reaches it).
      num_relation_heads: static int dividing both hidden sizes.
      student_y: optional ``[batch, seq, student_hidden]``, default ``student_x``.
      teacher_y: optional ``[batch, seq, teacher_hidden]``, default ``teacher_x``.
      mask: optional ``[batch, seq]`` bool (True for real tokens): padded keys get no
        probability, padded queries are left out of the average.

    Returns:
      ``[batch]`` per-example loss.

    References:
      Wang, Bao, Huang, Dong & Wei, "MiniLMv2: Multi-Head Self-Attention Relation Distillation
      for Compressing Pretrained Transformers", Findings of ACL 2021, arXiv:2012.15828.
    """
    sx = _as_float("student_x", student_x)
    tx = _as_float("teacher_x", teacher_x)
    sy = sx if student_y is None else _as_float("student_y", student_y)
    ty = tx if teacher_y is None else _as_float("teacher_y", teacher_y)
    if (sx.ndim != 3 or tx.ndim != 3 or sx.shape[:2] != tx.shape[:2] or sy.shape != sx.shape
            or ty.shape != tx.shape):
        raise ValueError(f"student_x/student_y must be [batch, seq, student_hidden] and "
                         f"teacher_x/teacher_y [batch, seq, teacher_hidden] with the same batch "
                         f"and seq; got student {sx.shape}/{sy.shape}, teacher "
                         f"{tx.shape}/{ty.shape}")
    h = num_relation_heads
    if not isinstance(h, int) or isinstance(h, bool) or h < 1:
        raise ValueError(f"num_relation_heads must be a positive static int, got {h!r}")
    if sx.shape[2] % h or tx.shape[2] % h:
        raise ValueError(f"num_relation_heads={h} must divide both hidden sizes, got "
                         f"student {sx.shape[2]} and teacher {tx.shape[2]}")
    mask = _check_mask(mask, sx.shape[0], sx.shape[1])
    log_s = _relation_log_probs(sx, sy, h, mask)
    log_t = _relation_log_probs(jax.lax.stop_gradient(tx), jax.lax.stop_gradient(ty), h, mask)
    return _masked_mean_kl(_kl_from_log_probs(log_t, log_s), mask)


def value_relation_loss(student_values: jax.Array, teacher_values: jax.Array, *,
                        num_heads: int, mask: jax.Array | None = None) -> jax.Array:
    """MiniLM value-relation transfer: ``KL(softmax(V_t V_t^T / sqrt(d)) ||
    softmax(V_s V_s^T / sqrt(d)))`` per head, averaged over heads and queries.

    :func:`relation_loss` with ``Y = X``: ``num_heads`` is the models' common head count
    (MiniLM-v1) or any number of relation heads dividing both widths (MiniLM-v2).

    Args:
      student_values: ``[batch, seq, student_hidden]`` floating (heads concatenated).
      teacher_values: ``[batch, seq, teacher_hidden]`` floating (no gradient reaches it).
      num_heads: static int dividing both hidden sizes.
      mask: optional ``[batch, seq]`` bool (True for real tokens).

    Returns:
      ``[batch]`` per-example loss.

    References:
      Wang et al., "MiniLM", NeurIPS 2020; Wang et al., "MiniLMv2", Findings of ACL 2021.
    """
    return relation_loss(student_values, teacher_values, num_relation_heads=num_heads,
                         mask=mask)


def minilm_v2_loss(student_qkv: tuple[jax.Array, jax.Array, jax.Array],
                   teacher_qkv: tuple[jax.Array, jax.Array, jax.Array], *,
                   num_relation_heads: int, mask: jax.Array | None = None) -> jax.Array:
    """MiniLM-v2's objective for one layer pair: the sum of the Q-Q, K-K and V-V relation losses
    (:func:`relation_loss`), ``[batch]``.

    Args:
      student_qkv: ``(queries, keys, values)``, each ``[batch, seq, student_hidden]``.
      teacher_qkv: ``(queries, keys, values)``, each ``[batch, seq, teacher_hidden]``.
      num_relation_heads: static int dividing both hidden sizes (the paper: 48 for base-size
        teachers, 64 for large).
      mask: optional ``[batch, seq]`` bool (True for real tokens).

    References:
      Wang, Bao, Huang, Dong & Wei, "MiniLMv2", Findings of ACL 2021, arXiv:2012.15828.
    """
    if len(student_qkv) != 3 or len(teacher_qkv) != 3:
        raise ValueError(f"student_qkv and teacher_qkv must be (queries, keys, values); got "
                         f"{len(student_qkv)} and {len(teacher_qkv)} arrays")
    return sum(relation_loss(s, t, num_relation_heads=num_relation_heads, mask=mask)
               for s, t in zip(student_qkv, teacher_qkv, strict=True))
