"""Task-level augmentation: rotated classes as new classes, augmented support sets."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from smallsample.episodes import Episode

__all__ = ["augment_support", "rotated_classes"]


def rotated_classes(data):
    """Expands a class-indexed image array with its 90, 180 and 270 degree rotations as new
    classes (the Omniglot standard of Santoro et al. 2016 and Vinyals et al. 2016).

    Args:
      data: ``[C, per_class, H, H, channels]`` (square images), a NumPy or JAX array of any dtype.

    Returns:
      ``[4 * C, per_class, H, H, channels]`` of the same array type and dtype, where class
      ``4 * c + k`` is class ``c`` turned ``k`` quarter turns counter-clockwise (``np.rot90``),
      the order of the Vinyals split files (``rot000, rot090, rot180, rot270`` per character).
    """
    if data.ndim != 5 or data.shape[2] != data.shape[3]:
        raise ValueError("rotated_classes: expected square images [C, per_class, H, H, channels], "
                         f"got shape {data.shape}")
    xp = np if isinstance(data, np.ndarray) else jnp
    turns = [xp.rot90(data, k, axes=(2, 3)) for k in range(4)]
    return xp.stack(turns, axis=1).reshape((4 * data.shape[0],) + data.shape[1:])


def augment_support(key: jax.Array, episode: Episode,
                    transform: Callable[[jax.Array, jax.Array], jax.Array], *, copies: int,
                    keep_original: bool = True) -> Episode:
    """Adds ``copies`` augmented versions of every support example before adaptation.

    Args:
      key: a PRNG key (one key per augmented copy is split from it).
      episode: an :class:`~smallsample.episodes.Episode` with ``support_x [n, ...]``.
      transform: key-first ``transform(key, x) -> x`` on one support example (e.g. a
        :func:`~smallsample.augment.compose.parse_pipeline` pipeline); vmapped here.
      copies: static number of augmented copies per example (>= 1).
      keep_original: keep the original example in front of its copies.

    Returns:
      The episode with support ``[n * (copies + keep_original), ...]``: the versions of example
      ``i`` are adjacent, so a label-major support stays label-major; labels are repeated; the
      query set is unchanged.
    """
    if not isinstance(copies, (int, np.integer)) or copies < 1:
        raise ValueError(f"augment_support: copies must be a static int >= 1, got {copies!r}")
    x, y = episode.support_x, episode.support_y
    n = x.shape[0]
    keys = jax.random.split(key, n * copies)
    repeated = jnp.repeat(x, copies, axis=0)  # [n * copies, ...], copies of i adjacent
    augmented = jax.vmap(transform)(keys, repeated).astype(x.dtype)
    augmented = augmented.reshape((n, copies) + x.shape[1:])
    if keep_original:
        augmented = jnp.concatenate([x[:, None], augmented], axis=1)
    versions = augmented.shape[1]
    return episode._replace(
        support_x=augmented.reshape((n * versions,) + x.shape[1:]),
        support_y=jnp.repeat(y, versions, axis=0),
    )
