"""Prototypical networks against NumPy class means and distances; matching networks against a
NumPy float64 cosine attention."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smallsample.learners.metric import matching_net
from smallsample.learners.protonet import class_means, protonet
from smallsample.models.layers import BatchStatNorm


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


class Embed(nn.Module):
    dim: int = 5

    @nn.compact
    def __call__(self, x):
        return jnp.tanh(nn.Dense(self.dim)(x.reshape((x.shape[0], -1))))


def data(seed, ways=3, shots=2, queries=4):
    rng = np.random.default_rng(seed)
    sx, qx = rng.normal(size=(ways * shots, 4)), rng.normal(size=(ways * queries, 4))
    sy = rng.permutation(np.repeat(np.arange(ways), shots))
    return jnp.asarray(sx), jnp.asarray(sy), jnp.asarray(qx)


def run(learner, params, sx, sy, qx):
    """adapt + predict + the embeddings, under one jit."""
    def f(params, sx, sy, qx):
        return learner.predict(params, learner.adapt(params, sx, sy, jax.random.key(0)), qx)
    return np.asarray(jax.jit(f)(params, sx, sy, qx))


def draw_params(learner, x, seed=0):
    """float64 parameters drawn in NumPy on the structure of ``learner.init`` (no compile)."""
    rng = np.random.default_rng(seed)
    structure = jax.eval_shape(learner.init, jax.random.key(0), x)
    return jax.tree.map(lambda s: rng.normal(size=s.shape), structure)


def np_embed(params, x):
    """``Embed`` in NumPy."""
    return np.tanh(np.asarray(x) @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])


def test_class_means_equal_numpy():
    rng = np.random.default_rng(0)
    emb, labels = rng.normal(size=(7, 3)), np.array([0, 2, 1, 0, 2, 2, 1])
    ref = np.stack([emb[labels == k].mean(0) for k in range(3)])
    np.testing.assert_allclose(jax.jit(class_means, static_argnums=2)(emb, labels, 3), ref,
                               rtol=1e-12)


def test_protonet_logits_are_negative_squared_distances_to_numpy_means():
    sx, sy, qx = data(1)
    learner = protonet(Embed(), 3)
    params = draw_params(learner, sx)
    logits = run(learner, params, sx, sy, qx)
    es, eq = np_embed(params, sx), np_embed(params, qx)
    protos = np.stack([es[np.asarray(sy) == k].mean(0) for k in range(3)])
    ref = -((eq[:, None, :] - protos[None]) ** 2).sum(-1)
    np.testing.assert_allclose(logits, ref, rtol=1e-10, atol=1e-12)


class NormEmbed(nn.Module):
    """Dense -> batch-statistics norm -> tanh: the embedding whose statistics ``norm`` chooses."""

    @nn.compact
    def __call__(self, x):
        return jnp.tanh(BatchStatNorm()(nn.Dense(5)(x)))


def np_norm_embed(params, x, stats_of):
    h, hs = np.asarray(x) @ params["Dense_0"]["kernel"], np.asarray(stats_of) @ \
        params["Dense_0"]["kernel"]
    h, hs = h + params["Dense_0"]["bias"], hs + params["Dense_0"]["bias"]
    y = (h - hs.mean(0)) / np.sqrt(hs.var(0) + 1e-5)
    return np.tanh(y * params["BatchStatNorm_0"]["scale"] + params["BatchStatNorm_0"]["bias"])


@pytest.mark.parametrize("norm", ["separate", "support", "joint"])
def test_protonet_norm_modes_equal_numpy(norm):
    """Which batch the normalisation statistics come from: each set its own, the support set's for
    both, or support and queries together."""
    sx, sy, qx = data(3)
    learner = protonet(NormEmbed(), 3, norm=norm)
    params = draw_params(learner, sx)
    # init keeps no statistics (applying its variables must still use the batch's own)
    assert set(NormEmbed().init(jax.random.key(0), sx)) == {"params"}
    logits = run(learner, params, sx, sy, qx)
    both = np.concatenate([sx, qx])
    stats_s, stats_q = {"separate": (sx, qx), "support": (sx, sx), "joint": (both, both)}[norm]
    es, eq = np_norm_embed(params, sx, stats_s), np_norm_embed(params, qx, stats_q)
    protos = np.stack([es[np.asarray(sy) == k].mean(0) for k in range(3)])
    ref = -((eq[:, None, :] - protos[None]) ** 2).sum(-1)
    np.testing.assert_allclose(logits, ref, rtol=1e-10, atol=1e-12)
    if norm == "support":  # one query at a time gives the same logits as the whole query set
        single = np.concatenate([run(learner, params, sx, sy, qx[i:i + 1])
                                 for i in range(len(qx))])
        np.testing.assert_allclose(single, logits, rtol=1e-10, atol=1e-12)


class OnePassNormEmbed(NormEmbed):
    EXAMPLES_MEET_ONLY_IN_BATCH_STAT_NORM = True


def test_one_pass_training_gradient_equals_embedding_apart():
    """``task_grad`` (support and queries embedded as one batch, normalised in segments) gives the
    loss of the NumPy 'separate' reference and the gradient of adapt + predict."""
    from smallsample.episodes import Episode
    from smallsample.learners.base import episode_loss

    sx, sy, qx = data(5)
    qy = jnp.asarray(np.repeat(np.arange(3), 4))
    ep = Episode(sx, sy, qx, qy)
    one = protonet(OnePassNormEmbed(), 3)
    apart = protonet(OnePassNormEmbed(), 3, one_pass=False)
    assert one.task_grad is not None and apart.task_grad is None
    assert protonet(NormEmbed(), 3).task_grad is None  # a model that does not say so
    params = draw_params(one, sx)
    loss, acc, grads = jax.jit(one.task_grad)(params, ep, jax.random.key(0))
    (loss2, acc2), grads2 = jax.jit(jax.value_and_grad(
        lambda p: episode_loss(apart, p, ep, jax.random.key(0)), has_aux=True))(params)
    es, eq = np_norm_embed(params, sx, sx), np_norm_embed(params, qx, qx)
    protos = np.stack([es[np.asarray(sy) == k].mean(0) for k in range(3)])
    logits = -((eq[:, None, :] - protos[None]) ** 2).sum(-1)
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    np.testing.assert_allclose(loss, -logp[np.arange(12), np.asarray(qy)].mean(), rtol=1e-12)
    np.testing.assert_allclose(acc, (logits.argmax(1) == np.asarray(qy)).mean())
    np.testing.assert_allclose(loss2, loss, rtol=1e-12)
    assert acc2 == acc
    for g, g2 in zip(jax.tree.leaves(grads), jax.tree.leaves(grads2), strict=True):
        np.testing.assert_allclose(g, g2, rtol=1e-10, atol=1e-13)
    with pytest.raises(ValueError, match="norm='joint'"):
        protonet(OnePassNormEmbed(), 3, norm="joint", one_pass=True)


def test_protonet_rejects_unknown_norm():
    with pytest.raises(ValueError, match="unknown norm 'batch'"):
        protonet(NormEmbed(), 3, norm="batch")


@pytest.mark.parametrize("learn_scale", [False, True])
def test_matching_net_equals_numpy_cosine_attention(learn_scale):
    sx, sy, qx = data(2)
    learner = matching_net(Embed(), 3, scale=3.0, learn_scale=learn_scale)
    params = draw_params(learner, sx)
    if learn_scale:
        params["scale"] = np.float64(3.0)
    model_params = params["model"] if learn_scale else params
    logits = run(learner, params, sx, sy, qx)
    es, eq = np_embed(model_params, sx), np_embed(model_params, qx)
    cos = (eq / np.linalg.norm(eq, axis=1, keepdims=True)) @ (
        es / np.linalg.norm(es, axis=1, keepdims=True)).T
    att = np.exp(3.0 * cos)
    att /= att.sum(1, keepdims=True)
    probs = att @ np.eye(3)[np.asarray(sy)]
    np.testing.assert_allclose(logits, np.log(probs), rtol=1e-10)
    np.testing.assert_allclose(np.exp(logits).sum(1), 1.0, rtol=1e-12)


def test_matching_net_rejects_mismatched_embeddings():
    from smallsample.learners.metric import MatchingState, attention_log_probs
    state = MatchingState(jnp.ones((4, 3)), jnp.eye(2)[jnp.array([0, 1, 0, 1])])
    with pytest.raises(ValueError, match=r"\[n, 3\]"):
        attention_log_probs(jnp.ones((2, 5)), state, 1.0)
