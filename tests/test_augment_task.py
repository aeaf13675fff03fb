"""Task-level augmentation: rotated classes and augmented support sets."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smallsample.augment import augment_support, rotated_classes
from smallsample.episodes import rotate_class, sample_episode

# Test-local compile options: a fraction of the default compile time for these small programs
# (same numbers; the library itself never calls jax.jit).
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0,
                                                   "xla_llvm_disable_expensive_passes": True})


def _data(classes=3, per_class=4, size=5):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (classes, per_class, size, size, 1), dtype=np.uint8)


def test_rotated_classes_numpy_and_jax():
    data = _data()
    out = rotated_classes(data)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == (12, 4, 5, 5, 1)
    for c in range(3):
        for k in range(4):
            np.testing.assert_array_equal(out[4 * c + k], np.rot90(data[c], k, axes=(1, 2)))
    as_jax = rotated_classes(jnp.asarray(data))
    assert isinstance(as_jax, jax.Array)
    np.testing.assert_array_equal(as_jax, out)
    # The same turns as the episode sampler's rotate=True.
    for k in range(4):
        np.testing.assert_array_equal(rotate_class(jnp.asarray(data[1]), jnp.asarray(k)),
                                      out[4 + k])
    with pytest.raises(ValueError, match=r"\(2, 4, 5, 6, 1\)"):
        rotated_classes(np.zeros((2, 4, 5, 6, 1)))


def add_noise(key, x):
    return x + 0.01 * jax.random.normal(key, x.shape, x.dtype)


def test_augment_support():
    data = jnp.asarray(_data(classes=5, per_class=6))
    episode = sample_episode(jax.random.key(0), data, ways=3, shots=2, queries=2)
    grow = jit(lambda k, e: augment_support(k, e, add_noise, copies=2))
    out = grow(jax.random.key(1), episode)
    n = 6
    assert out.support_x.shape == (3 * n,) + episode.support_x.shape[1:]
    assert out.support_x.dtype == episode.support_x.dtype
    np.testing.assert_array_equal(out.support_y, np.repeat(np.asarray(episode.support_y), 3))
    np.testing.assert_array_equal(out.support_x[::3], episode.support_x)  # originals first
    copies = np.asarray(out.support_x).reshape((n, 3) + episode.support_x.shape[1:])
    original = np.asarray(episode.support_x)
    for j in (1, 2):
        diff = copies[:, j] - original
        assert 0.002 < np.abs(diff).mean() < 0.05  # an augmented copy of ITS example
    assert not np.array_equal(copies[:, 1], copies[:, 2])  # one key per copy
    np.testing.assert_array_equal(out.query_x, episode.query_x)
    np.testing.assert_array_equal(out.query_y, episode.query_y)
    np.testing.assert_array_equal(grow(jax.random.key(1), episode).support_x, out.support_x)
    # vmapped over a meta-batch of episodes, without the originals.
    batch = jax.tree.map(lambda a: jnp.stack([a, a]), episode)
    keys = jax.random.split(jax.random.key(2), 2)
    both = jit(jax.vmap(lambda k, e: augment_support(k, e, add_noise, copies=1,
                                                         keep_original=False)))(keys, batch)
    assert both.support_x.shape == (2, n) + episode.support_x.shape[1:]
    assert not np.array_equal(both.support_x[0], batch.support_x[0])
    with pytest.raises(ValueError, match="copies"):
        augment_support(jax.random.key(0), episode, add_noise, copies=0)
