"""mixup and cutmix against direct NumPy reconstructions."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smallsample.augment import cutmix, mixup

# Test-local compile options: a fraction of the default compile time for these small programs
# (same numbers; the library itself never calls jax.jit).
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0,
                                                   "xla_llvm_disable_expensive_passes": True})


def test_mixup_is_the_label_weighted_mix_of_inputs():
    # One example per class: the mixed input must be sum_k label[k] * x[k].
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(5, 4, 4, 2)), jnp.float32)
    labels = jnp.arange(5)
    mix = jit(lambda k: mixup(k, x, labels, alpha=0.4, num_classes=5))
    for seed in range(3):
        mx, my = mix(jax.random.key(seed))
        my64 = np.asarray(my, np.float64)
        np.testing.assert_allclose(my64.sum(1), 1.0, atol=1e-6)
        assert (my64 >= 0).all() and mx.dtype == x.dtype
        ref = np.einsum("bk,khwc->bhwc", my64, np.asarray(x, np.float64))
        np.testing.assert_allclose(mx, ref, atol=1e-5)
        own = my64[np.arange(5), np.arange(5)]
        paired = own < 1 - 1e-6  # mixed with another example
        np.testing.assert_allclose(own[paired], own[paired][:1].repeat(paired.sum()), atol=1e-6)


def test_mixup_accepts_distributions_and_checks_shapes():
    x = jnp.ones((4, 3))
    soft = jax.nn.softmax(jnp.arange(12.0).reshape(4, 3))
    _, my = mixup(jax.random.key(0), x, soft, alpha=1.0)
    np.testing.assert_allclose(np.asarray(my).sum(1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="num_classes"):
        mixup(jax.random.key(0), x, jnp.arange(4))
    with pytest.raises(ValueError, match=r"\(4, 3\) and labels \(3,\)"):
        mixup(jax.random.key(0), x, jnp.arange(3), num_classes=3)


def test_cutmix_pastes_a_box_and_labels_follow_its_area():
    # Image i is constant i + 1, so every output pixel tells where it came from.
    b, h, w = 6, 10, 12
    x = jnp.broadcast_to(jnp.arange(1.0, b + 1)[:, None, None, None], (b, h, w, 1))
    labels = jnp.arange(b)
    mix = jit(lambda k: cutmix(k, x, labels, alpha=1.0, num_classes=b))
    for seed in range(4):
        mx, my = mix(jax.random.key(seed))
        mx, my = np.asarray(mx)[..., 0], np.asarray(my, np.float64)
        np.testing.assert_allclose(my.sum(1), 1.0, atol=1e-6)
        boxes = []
        for i in range(b):
            sources = set(np.unique(mx[i]).astype(int) - 1)
            assert sources <= {i} | set(range(b)) and len(sources) <= 2
            other = (mx[i] != i + 1)
            if other.any():
                j = int(mx[i][other][0]) - 1
                np.testing.assert_allclose(my[i, j], other.mean(), atol=1e-6)
                np.testing.assert_allclose(my[i, i], 1 - other.mean(), atol=1e-6)
                rows, cols = np.nonzero(other)
                assert other[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
                boxes.append(other)
            else:
                assert my[i, i] == pytest.approx(1.0)
        assert all(np.array_equal(boxes[0], bx) for bx in boxes)  # one box for the batch
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        cutmix(jax.random.key(0), jnp.ones((4, 5, 5)), jnp.arange(4), num_classes=4)
