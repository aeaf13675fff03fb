"""N-way K-shot episodes sampled on the device from a class-indexed array.

A class-indexed set is an array ``[num_classes, per_class, H, W, C]`` (uint8 images or any other
per-example features). An :class:`Episode` holds one task with static shapes, so a meta-batch is the
same pytree with a leading axis and ``jax.vmap`` / ``lax.scan`` / sharding need nothing special.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Episode(NamedTuple):
    """One few-shot task.

    Attributes:
      support_x: ``[ways * shots, ...]`` support examples, grouped by label (label-major).
      support_y: ``[ways * shots]`` int32 labels in ``range(ways)``.
      query_x: ``[ways * queries, ...]`` query examples, grouped by label.
      query_y: ``[ways * queries]`` int32 labels.
    """

    support_x: jax.Array
    support_y: jax.Array
    query_x: jax.Array
    query_y: jax.Array


def check_episode_request(num_classes: int, per_class: int, *, ways: int, shots: int,
                          queries: int) -> None:
    """Raises a ``ValueError`` naming the numbers when an episode cannot be drawn."""
    for name, value in (("ways", ways), ("shots", shots), ("queries", queries)):
        if not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if ways > num_classes:
        raise ValueError(
            f"ways={ways} is more than the {num_classes} classes available")
    if shots + queries > per_class:
        raise ValueError(
            f"shots + queries = {shots} + {queries} = {shots + queries} is more than the "
            f"{per_class} examples per class")


def to_float(x: jax.Array) -> jax.Array:
    """uint8 images to float32 in [0, 1]; other dtypes are returned unchanged."""
    if x.dtype == jnp.uint8:
        return x.astype(jnp.float32) / 255.0
    return x


def sample_episode(key: jax.Array, data: jax.Array, *, ways: int, shots: int, queries: int,
                   rotate: bool = False, per_class: int | None = None) -> Episode:
    """Samples one N-way K-shot Q-query episode on the device.

    Classes are drawn without replacement and get labels ``0..ways-1`` in the random order in
    which they were drawn (so labels are a fresh permutation per episode); within each class,
    ``shots + queries`` distinct examples are drawn, the first ``shots`` for support.

    Args:
      key: a PRNG key.
      data: ``[num_classes, per_class, ...]`` class-indexed examples (uint8 images become float32
        in [0, 1]).
      ways, shots, queries: static episode sizes.
      rotate: rotate each drawn class as a whole by a random multiple of 90 degrees (task
        augmentation: a rotated class is a new class). Needs square images ``[..., H, H, C]``.
      per_class: use only the first ``per_class`` examples of each class (e.g. to simulate fewer
        drawings per class); default all.

    Returns:
      An :class:`Episode`.
    """
    num_classes, available = data.shape[0], data.shape[1]
    per_class = available if per_class is None else per_class
    if per_class > available:
        raise ValueError(f"per_class={per_class} is more than the {available} examples per class")
    check_episode_request(num_classes, per_class, ways=ways, shots=shots, queries=queries)
    k_cls, k_ex, k_rot = jax.random.split(key, 3)
    classes = jax.random.choice(k_cls, num_classes, (ways,), replace=False)
    ex_keys = jax.random.split(k_ex, ways)
    examples = jax.vmap(lambda k: jax.random.permutation(k, per_class)[: shots + queries])(ex_keys)
    x = data[classes[:, None], examples]  # [ways, shots + queries, ...]
    x = to_float(x)
    if rotate:
        if x.ndim != 5 or x.shape[2] != x.shape[3]:
            raise ValueError(f"rotate=True needs square images [.., H, H, C], got {x.shape[2:]}")
        turns = jax.random.randint(k_rot, (ways,), 0, 4)
        x = jax.vmap(rotate_class)(x, turns)
    labels = jnp.arange(ways, dtype=jnp.int32)
    return Episode(
        support_x=x[:, :shots].reshape((ways * shots,) + x.shape[2:]),
        support_y=jnp.repeat(labels, shots),
        query_x=x[:, shots:].reshape((ways * queries,) + x.shape[2:]),
        query_y=jnp.repeat(labels, queries),
    )


def rotate_class(images: jax.Array, turns: jax.Array) -> jax.Array:
    """Rotates ``[n, H, H, C]`` images by ``turns`` x 90 degrees counter-clockwise (traced)."""
    return jax.lax.switch(turns % 4, [lambda im, k=k: jnp.rot90(im, k, axes=(1, 2))
                                      for k in range(4)], images)


def sample_meta_batch(key: jax.Array, data: jax.Array, *, batch: int, ways: int, shots: int,
                      queries: int, rotate: bool = False,
                      per_class: int | None = None) -> Episode:
    """``batch`` episodes as one :class:`Episode` with a leading ``[batch]`` axis."""
    keys = jax.random.split(key, batch)
    return jax.vmap(lambda k: sample_episode(k, data, ways=ways, shots=shots, queries=queries,
                                             rotate=rotate, per_class=per_class))(keys)


def eval_keys(seed: int, num_episodes: int) -> jax.Array:
    """The fixed keys of the evaluation episodes for ``seed``: the same tasks for every learner."""
    return jax.random.split(jax.random.fold_in(jax.random.key(seed), 0x5EED), num_episodes)


def fixed_episodes(data: jax.Array, *, seed: int, num_episodes: int, ways: int, shots: int,
                   queries: int, batch: int = 50):
    """Yields the fixed, seeded evaluation episodes in meta-batches of at most ``batch``.

    Episode ``i`` depends only on ``(seed, i)`` and the data, not on ``batch``.
    """
    keys = eval_keys(seed, num_episodes)
    sample = jax.jit(jax.vmap(
        lambda k, d: sample_episode(k, d, ways=ways, shots=shots, queries=queries),
        in_axes=(0, None)))
    for start in range(0, num_episodes, batch):
        yield sample(keys[start:start + batch], data)


def augment_episodes(key: jax.Array, episodes: Episode, augment) -> Episode:
    """``augment(key, image)`` applied to every support and query image of a meta-batch of
    episodes (``support_x``/``query_x`` ``[batch, n, H, W, C]``), one key per image."""
    ks, kq = jax.random.split(key)

    def apply(k, x):
        keys = jax.random.split(k, x.shape[0] * x.shape[1]).reshape(x.shape[:2])
        return jax.vmap(jax.vmap(augment))(keys, x)

    return episodes._replace(support_x=apply(ks, episodes.support_x),
                             query_x=apply(kq, episodes.query_x))
