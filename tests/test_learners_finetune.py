"""Baseline / Baseline++: pre-training loss and cosine logits against NumPy, one fine-tuning step
against a hand-written SGD step, fitting a separable support set, key determinism."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from smallsample.learners.finetune import finetune, head_logits, init_head, pretrainer


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


class Embed(nn.Module):
    dim: int = 4

    @nn.compact
    def __call__(self, x):
        return jnp.tanh(nn.Dense(self.dim)(x))


def np_cross_entropy(z, y):
    z = z - z.max(1, keepdims=True)
    return np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y])


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_pretrain_loss_equals_numpy(kind):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 3)), rng.integers(0, 6, 8)
    pre = pretrainer(Embed(), 6, head=kind)
    structure = jax.eval_shape(pre.init, jax.random.key(0), jnp.asarray(x))
    assert structure["head"]["kernel"].shape == (4, 6)
    params = jax.tree.map(lambda s: rng.normal(size=s.shape), structure)
    (loss, acc), grads = jax.jit(jax.value_and_grad(pre.loss, has_aux=True))(params, x, y)
    dense = params["body"]["Dense_0"]
    feats = np.tanh(x @ dense["kernel"] + dense["bias"])
    w = params["head"]["kernel"]
    if kind == "linear":
        z = feats @ w + np.asarray(params["head"]["bias"])
    else:  # Chen et al.'s scale for <= 200 classes is 2
        z = 2.0 * (feats / np.linalg.norm(feats, axis=1, keepdims=True)) @ (
            w / np.linalg.norm(w, axis=0, keepdims=True))
    np.testing.assert_allclose(loss, np_cross_entropy(z, y), rtol=1e-10)
    np.testing.assert_allclose(acc, np.mean(z.argmax(1) == y))
    assert float(jnp.abs(grads["body"]["Dense_0"]["kernel"]).sum()) > 0


def test_one_finetune_step_equals_hand_written_sgd():
    rng = np.random.default_rng(1)
    sx, sy = rng.normal(size=(6, 3)), np.array([0, 1, 2, 0, 1, 2])
    learner = finetune(Embed(), 3, head="linear", steps=1, optimizer=optax.sgd(0.5))
    params = {"body": {"Dense_0": {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=4)}}}
    head, start = jax.jit(lambda p, k: (learner.adapt(p, sx, sy, k),
                                        init_head(k, 4, 3, kind="linear", dtype=jnp.float64)))(
        params, jax.random.key(7))
    dense = params["body"]["Dense_0"]
    feats = np.tanh(sx @ dense["kernel"] + dense["bias"])
    z = feats @ np.asarray(start["kernel"]) + np.asarray(start["bias"])
    p = np.exp(z - z.max(1, keepdims=True))
    g = (p / p.sum(1, keepdims=True) - np.eye(3)[sy]) / len(sy)
    np.testing.assert_allclose(head["kernel"], np.asarray(start["kernel"]) - 0.5 * feats.T @ g,
                               rtol=1e-10)
    np.testing.assert_allclose(head["bias"], np.asarray(start["bias"]) - 0.5 * g.sum(0),
                               rtol=1e-10)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_finetune_fits_a_separable_support_set_and_depends_on_the_key(kind):
    # features = identity body on one-hot-like inputs: the support set is separable
    class Identity(nn.Module):
        @nn.compact
        def __call__(self, x):
            return x

    sx = np.eye(3)[[0, 1, 2, 0, 1, 2]] + 0.05 * np.random.default_rng(2).normal(size=(6, 3))
    sy = np.array([0, 1, 2, 0, 1, 2])
    learner = finetune(Identity(), 3, head=kind, steps=100,
                       optimizer=optax.adam(0.1), scale=10.0)
    params = {"body": {}}
    run = jax.jit(lambda k: learner.predict(params, learner.adapt(params, sx, sy, k), sx))
    logits = run(jax.random.key(0))
    assert float((jnp.argmax(logits, -1) == sy).mean()) == 1.0
    np.testing.assert_array_equal(logits, run(jax.random.key(0)))
    assert not np.allclose(logits, run(jax.random.key(1)))


def test_bad_head_raises():
    with pytest.raises(ValueError, match="'svm'"):
        init_head(jax.random.key(0), 3, 2, kind="svm")
    with pytest.raises(ValueError, match=r"\[n, 3\]"):
        head_logits({"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}, jnp.ones((2, 4)))
