"""chain / random_apply / random_choice and the pipeline parser."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smallsample import augment
from smallsample.augment import image as A

# Test-local compile options: a fraction of the default compile time for these small programs
# (same numbers; the library itself never calls jax.jit).
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0,
                                                   "xla_llvm_disable_expensive_passes": True})


def add_uniform(key, x):
    return x + jax.random.uniform(key)


def scale_uniform(key, x):
    return x * (1.0 + jax.random.uniform(key))


def test_chain_splits_the_key_once_per_stage():
    key, x = jax.random.key(0), jnp.arange(6.0)
    k1, k2 = jax.random.split(key)
    expected = (np.arange(6.0) + float(jax.random.uniform(k1))) * (1 + float(
        jax.random.uniform(k2)))
    np.testing.assert_allclose(augment.chain(add_uniform, scale_uniform)(key, x), expected,
                               rtol=1e-6)
    np.testing.assert_array_equal(augment.chain()(key, x), x)
    with pytest.raises(ValueError, match="not callable"):
        augment.chain(add_uniform, 3)


def test_random_apply():
    key, x = jax.random.key(1), jnp.ones(3)
    np.testing.assert_array_equal(augment.random_apply(add_uniform, probability=0.0)(key, x), x)
    inner = jax.random.split(key)[1]
    np.testing.assert_allclose(augment.random_apply(add_uniform, probability=1.0)(key, x),
                               add_uniform(inner, x))
    keys = jax.random.split(key, 400)

    @jax.jit
    def share(p):
        out = jax.vmap(lambda k: augment.random_apply(add_uniform, probability=p)(k, x))(keys)
        return jnp.mean(out[:, 0] != 1.0)

    for p in (0.2, 0.7):
        assert abs(float(share(p)) - p) < 4 * np.sqrt(p * (1 - p) / 400)
    with pytest.raises(ValueError, match="probability"):
        augment.random_apply(add_uniform, probability=-0.1)


def test_random_choice_frequencies():
    branches = [lambda k, x, c=c: x + c for c in (0.0, 1.0, 2.0)]
    keys = jax.random.split(jax.random.key(2), 600)
    pick = jit(jax.vmap(lambda k: augment.random_choice(
        *branches, probabilities=[0.2, 0.3, 0.5])(k, jnp.zeros(()))))
    counts = np.bincount(np.asarray(pick(keys)).astype(int), minlength=3) / 600
    for got, p in zip(counts, (0.2, 0.3, 0.5), strict=True):
        assert abs(got - p) < 4 * np.sqrt(p * (1 - p) / 600)
    only_last = augment.random_choice(*branches, probabilities=[0, 0, 1])
    assert float(only_last(jax.random.key(0), jnp.zeros(()))) == 2.0
    with pytest.raises(ValueError, match="2 probabilities for 3"):
        augment.random_choice(*branches, probabilities=[0.5, 0.5])


def test_parse_pipeline_equals_the_hand_written_chain_under_jit_and_vmap():
    spec = "flip_lr,rotate(max_degrees=15),translate(max_pixels=2),noise(std=0.05)"
    pipeline = augment.parse_pipeline(spec)
    by_hand = augment.chain(
        A.random_flip_left_right,
        lambda k, x: A.random_rotate(k, x, max_degrees=15),
        lambda k, x: A.random_translate(k, x, max_pixels=2),
        lambda k, x: A.random_gaussian_noise(k, x, std=0.05))
    images = jnp.asarray(np.random.default_rng(0).uniform(size=(6, 10, 10, 1)), jnp.float32)
    keys = jax.random.split(jax.random.key(3), 6)
    both = jit(lambda k, x: (jax.vmap(pipeline)(k, x), jax.vmap(by_hand)(k, x)))
    out, ref = both(keys, images)
    assert out.shape == images.shape and out.dtype == images.dtype
    np.testing.assert_array_equal(out, ref)
    assert not np.allclose(out, images)
    np.testing.assert_array_equal(augment.parse_pipeline(" ")(keys[0], images[0]), images[0])


@pytest.mark.parametrize("spec,message", [
    ("flip_lr,spin", r"unknown transform 'spin'; known: affine, blur"),
    ("rotate(15)", r"options must be named, as in rotate\(max_degrees=15.0"),
    ("rotate(max_deg=3)", r"rotate has no option 'max_deg'; valid: rotate\(max_degrees"),
    ("noise(std=x)", r"noise\(std=...\) must be a literal, got 'x'"),
    ("rotate(probability=2)", r"probability must be a finite number in \[0.0, 1.0\], got 2"),
    ("scale(min_scale=2, max_scale=1)", r"min_scale=2 is more than max_scale=1"),
    ("flip_lr flip_ud", r"cannot parse"),
    ("flip_lr.x", r"is not `name` or `name\(option=value\)`"),
])
def test_parse_pipeline_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        augment.parse_pipeline(spec)


def test_registered_names():
    names = augment.transform_names()
    assert names == sorted(augment.TRANSFORMS) and {"flip_lr", "rotate", "elastic"} <= set(names)
    with pytest.raises(TypeError):
        augment.TRANSFORMS["mine"] = add_uniform  # read-only registry
