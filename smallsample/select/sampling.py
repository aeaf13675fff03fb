"""Uniform, stratified (per-class) and class-balanced sampling of example indices."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from smallsample.select._checks import check_k, check_labels, check_size
from smallsample.select.filtering import Selection
from smallsample.select.importance import ImportanceSample, importance_sample


def uniform(key: jax.Array, n: int, *, k: int, replace: bool = False) -> jax.Array:
    """``k`` indices drawn uniformly from ``range(n)``, with or without replacement.

    Args:
      key: a PRNG key.
      n: static pool size.
      k: static sample size (``k <= n`` without replacement).
      replace: with replacement (i.i.d.) or without (distinct indices).

    Returns:
      ``[k]`` int32 indices.
    """
    n = check_size("n", n)
    k = check_k(k, n, replace=replace)
    return jax.random.choice(key, n, (k,), replace=replace).astype(jnp.int32)


def stratified(key: jax.Array, labels: jax.Array, *, num_classes: int, per_class: int,
               replace: bool = False) -> Selection:
    """``per_class`` indices from every class (equal allocation), grouped class by class.

    Without replacement the indices within a class are distinct (a uniform random subset, in
    random order); with replacement they are i.i.d. uniform within the class.

    When ``labels`` are concrete, a class with too few examples (fewer than ``per_class`` without
    replacement, none with) or a label outside ``range(num_classes)`` raises ``ValueError``.
    Under ``jit`` that cannot be checked; the slots that could not be filled are marked
    ``valid = False`` instead (their indices are arbitrary).

    Args:
      key: a PRNG key.
      labels: ``[n]`` int class labels.
      num_classes: static number of classes ``C``.
      per_class: static number of examples per class.
      replace: with or without replacement within each class.

    Returns:
      A :class:`Selection` of size ``C * per_class``: slots ``[c * per_class, (c+1) * per_class)``
      belong to class ``c``.
    """
    counts = check_labels(labels, num_classes)
    per_class = check_size("per_class", per_class)
    if counts is not None:
        need = 1 if replace else per_class
        short = [int(c) for c in range(num_classes) if counts[c] < need]
        if short:
            raise ValueError(
                f"classes {short[:10]} have fewer than {need} examples (counts "
                f"{[int(counts[c]) for c in short[:10]]}); cannot draw per_class={per_class} "
                f"{'with' if replace else 'without'} replacement")
    n = labels.shape[0]
    if not replace and per_class > n:
        raise ValueError(f"per_class={per_class} is larger than the pool of {n} examples")
    classes = jnp.arange(num_classes)
    in_class = labels[None, :] == classes[:, None]  # [C, n]
    count = jnp.sum(in_class, axis=1)  # [C]
    keys = jax.random.split(key, num_classes)

    def one_class(k_c, member):
        if replace:
            u = jax.random.uniform(k_c, (per_class,))
            cdf = jnp.cumsum(member.astype(jnp.float32))
            idx = jnp.searchsorted(cdf, u * cdf[-1], side="right")
            return jnp.minimum(idx, n - 1)
        g = jax.random.gumbel(k_c, (n,))
        _, idx = jax.lax.top_k(jnp.where(member, g, -jnp.inf), per_class)
        return idx

    idx = jax.vmap(one_class)(keys, in_class)  # [C, per_class]
    if replace:
        valid = jnp.broadcast_to((count > 0)[:, None], idx.shape)
    else:
        valid = jnp.arange(per_class)[None, :] < count[:, None]
    return Selection(idx.reshape(-1).astype(jnp.int32), valid.reshape(-1))


def class_balanced_log_weights(labels: jax.Array, *, num_classes: int) -> jax.Array:
    """Log-weights ``[n]``, ``-log(count of the example's class)``: every class present gets the
    same total weight."""
    check_labels(labels, num_classes)
    counts = jnp.bincount(labels, length=num_classes)
    return -jnp.log(counts[labels].astype(jnp.float32))


def class_balanced(key: jax.Array, labels: jax.Array, *, num_classes: int, k: int,
                   replace: bool = True) -> ImportanceSample:
    """``k`` indices with every class equally likely (uniform within a class), with importance
    weights back to the pool's own (uniform-over-examples) distribution.

    Args:
      key: a PRNG key.
      labels: ``[n]`` int class labels.
      num_classes: static number of classes.
      k: static sample size.
      replace: with replacement (i.i.d.) or without (Gumbel-top-k).

    Returns:
      An :class:`ImportanceSample` (see :func:`importance_sample`).
    """
    return importance_sample(key, class_balanced_log_weights(labels, num_classes=num_classes),
                             k=k, replace=replace)
