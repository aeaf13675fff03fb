"""Distillation losses: each against an independent float64 NumPy reference (written here, after
the papers' formulas or the authors' code), finite-difference gradients in float64, eager = jit =
vmap, exactly zero gradient to the teacher, identities from the papers, and shape errors."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from smallsample import distill as D

# Test-local compile options: less compile time for these small programs, same numbers.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0,
                                                   "xla_llvm_disable_expensive_passes": True})

B, C = 4, 5
LABELS = np.array([0, 3, 1, 4])
MASK = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=bool)  # second example unpadded


# --------------------------------------------------------------------------- NumPy references


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    m = np.max(np.where(np.isfinite(z), z, -np.inf), axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        e = np.exp(z - m)
        return z - m - np.log(e.sum(-1, keepdims=True))


def np_kl(log_p, log_q):
    """sum p (log p - log q), the p = 0 terms zero."""
    p = np.exp(log_p)
    with np.errstate(invalid="ignore"):
        return np.where(p > 0, p * (log_p - log_q), 0.0).sum(-1)


def ref_kd(s, t, T):
    return T ** 2 * np_kl(np_log_softmax(t / T), np_log_softmax(s / T))


def ref_kd_probs(s, p, T):
    w = p ** (1.0 / T)
    with np.errstate(divide="ignore"):
        return T ** 2 * np_kl(np.log(w / w.sum(-1, keepdims=True)), np_log_softmax(s / T))


def ref_ce(s, y):
    return -np.take_along_axis(np_log_softmax(s), y[..., None], -1)[..., 0]


def ref_reverse(s, t, T):
    return T ** 2 * np_kl(np_log_softmax(s / T), np_log_softmax(t / T))


def ref_dkd(s, t, y, T, alpha, beta):
    """After the authors' code (mdistiller DKD): cat_mask of the softmax and the -1000 trick."""
    gt = np.eye(s.shape[-1], dtype=bool)[y]

    def binary(z):
        p = np.exp(np_log_softmax(z / T))
        return np.stack([(p * gt).sum(-1), (p * ~gt).sum(-1)], -1)

    ps, pt = binary(s), binary(t)
    tckd = (pt * (np.log(pt) - np.log(ps))).sum(-1) * T ** 2
    log_ps2 = np_log_softmax(s / T - 1000.0 * gt)
    log_pt2 = np_log_softmax(t / T - 1000.0 * gt)
    nckd = np_kl(log_pt2, log_ps2) * T ** 2
    return alpha * tckd + beta * nckd


def ref_standardized(s, t, T, ddof=0, eps=1e-7):
    def z(x):
        return (x - x.mean(-1, keepdims=True)) / (x.std(-1, ddof=ddof, keepdims=True) + eps)

    return ref_kd(z(s), z(t), T)


def ref_hint(sf, proj, tf):
    r = sf @ proj["kernel"] + proj["bias"]
    return ((r - tf) ** 2).reshape(len(sf), -1).mean(-1)


def ref_at(sf, tf, p=2.0):
    def at(x):
        q = (np.abs(x) ** p).sum(-1).reshape(len(x), -1)
        return q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)

    return ((at(sf) - at(tf)) ** 2).mean(-1)


def ref_sp_total(sf, tf):
    """Tung & Mori's code: the scalar ||G_t - G_s||_F^2 / b^2."""
    b = len(sf)

    def g(x):
        x = x.reshape(b, -1)
        gm = x @ x.T
        return gm / np.linalg.norm(gm, axis=1, keepdims=True)

    return ((g(tf) - g(sf)) ** 2).sum() / b ** 2


def ref_sp(sf, tf):
    b = len(sf)

    def g(x):
        x = x.reshape(b, -1)
        gm = x @ x.T
        return gm / np.linalg.norm(gm, axis=1, keepdims=True)

    return ((g(tf) - g(sf)) ** 2).sum(-1) / b


def smooth_l1(x):
    a = np.abs(x)
    return np.where(a < 1, 0.5 * x ** 2, a - 0.5)


def ref_rkd_distance_matrix(s, t):
    """After the authors' code: pdist, divided by the mean of the distances > 0."""
    def psi(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return d / d[d > 0].mean()

    return smooth_l1(psi(s) - psi(t))  # [b, b]; the authors' loss is its mean


def ref_rkd_angle_tensor(s, t):
    def ang(x):
        e = x[None, :] - x[:, None]  # e[a, i] = x_i - x_a
        n = np.linalg.norm(e, axis=-1, keepdims=True)
        e = e / np.maximum(n, 1e-12)
        return np.einsum("aid,akd->aik", e, e)

    return smooth_l1(ang(s) - ang(t))  # [b, b, b]; the authors' loss is its mean


def ref_contrastive(s, t, T):
    s = s / np.linalg.norm(s, axis=-1, keepdims=True)
    t = t / np.linalg.norm(t, axis=-1, keepdims=True)
    return -np.diagonal(np_log_softmax(s @ t.T / T))


def ref_attention(sa, ta, mask):
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(ta > 0, ta * (np.log(ta) - np.log(sa)), 0.0)
    terms = np.where(mask[:, None, None, :], terms, 0.0)
    kl = terms.sum(-1)  # [b, h, q]
    return (kl * mask[:, None, :]).sum((1, 2)) / (kl.shape[1] * mask.sum(-1))


def np_relation_log_probs(x, y, h, mask):
    b, n, d = x.shape
    dr = d // h
    xr = x.reshape(b, n, h, dr).transpose(0, 2, 1, 3)
    yr = y.reshape(b, n, h, dr).transpose(0, 2, 1, 3)
    sc = xr @ yr.transpose(0, 1, 3, 2) / np.sqrt(dr)
    if mask is not None:
        sc = np.where(mask[:, None, None, :], sc, -np.inf)
    return np_log_softmax(sc)


def ref_relation(sx, sy, tx, ty, h, mask):
    kl = np_kl(np_relation_log_probs(tx, ty, h, mask), np_relation_log_probs(sx, sy, h, mask))
    if mask is None:
        return kl.mean((1, 2))
    return (kl * mask[:, None, :]).sum((1, 2)) / (h * mask.sum(-1))


def softmax_probs(rng, shape, mask=None):
    z = rng.normal(size=shape) * 1.5
    if mask is not None:
        z = np.where(mask[:, None, None, :], z, -np.inf)
    return np.exp(np_log_softmax(z))


# --------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    fn: Callable[[Any, Any], jax.Array]  # (student pytree, teacher pytree) -> [batch]
    make: Callable[[np.random.Generator], tuple[Any, Any]]  # float64 NumPy inputs
    ref: Callable[[Any, Any], np.ndarray]


def _pair(shape_s, shape_t=None, scale=1.0):
    return lambda rng: (rng.normal(size=shape_s) * scale,
                        rng.normal(size=shape_t or shape_s) * scale)


def _hint_make(rng):
    proj = {"kernel": rng.normal(size=(4, 6)) * 0.5, "bias": rng.normal(size=6) * 0.1}
    return (rng.normal(size=(B, 3, 3, 4)), proj), rng.normal(size=(B, 3, 3, 6))


def _attention_make(rng):
    return softmax_probs(rng, (2, 3, 5, 5), MASK), softmax_probs(rng, (2, 3, 5, 5), MASK)


def _qk_make(rng):
    return ((rng.normal(size=(2, 5, 8)), rng.normal(size=(2, 5, 8))),
            (rng.normal(size=(2, 5, 12)), rng.normal(size=(2, 5, 12))))


def _qkv_make(rng):
    return (tuple(rng.normal(size=(2, 5, 8)) for _ in range(3)),
            tuple(rng.normal(size=(2, 5, 12)) for _ in range(3)))


def _probs_make(rng):
    p = np.exp(np_log_softmax(rng.normal(size=(B, C)) * 2))
    p[0, 2] = 0.0  # a class the teacher rules out
    return rng.normal(size=(B, C)) * 2, p / p.sum(-1, keepdims=True)


CASES = {
    "kd": Case(lambda s, t: D.kd_loss(s, t, temperature=2.5), _pair((B, C), scale=2.0),
               lambda s, t: ref_kd(s, t, 2.5)),
    "kd_probs": Case(lambda s, p: D.kd_loss_from_probs(s, p, temperature=2.0), _probs_make,
                     lambda s, p: ref_kd_probs(s, p, 2.0)),
    "kd_ce": Case(lambda s, t: D.kd_ce_loss(s, t, LABELS, temperature=3.0, alpha=0.7),
                  _pair((B, C), scale=2.0),
                  lambda s, t: 0.7 * ref_kd(s, t, 3.0) + 0.3 * ref_ce(s, LABELS)),
    "reverse_kd": Case(lambda s, t: D.reverse_kd_loss(s, t, temperature=1.5),
                       _pair((B, C), scale=2.0), lambda s, t: ref_reverse(s, t, 1.5)),
    "dkd": Case(lambda s, t: D.dkd_loss(s, t, LABELS, alpha=1.0, beta=8.0, temperature=4.0),
                _pair((B, C), scale=3.0), lambda s, t: ref_dkd(s, t, LABELS, 4.0, 1.0, 8.0)),
    "standardized_kd": Case(lambda s, t: D.standardized_kd_loss(s, t, temperature=2.0),
                            _pair((B, C), scale=2.0), lambda s, t: ref_standardized(s, t, 2.0)),
    "hint": Case(lambda s, t: D.hint_loss(s[0], t, projection=s[1]), _hint_make,
                 lambda s, t: ref_hint(s[0], s[1], t)),
    "attention_transfer": Case(lambda s, t: D.attention_transfer_loss(s, t, p=2.0),
                               _pair((B, 4, 4, 3), (B, 4, 4, 5)), ref_at),
    "embedding_mse": Case(D.embedding_mse_loss, _pair((B, 6)),
                          lambda s, t: ((s - t) ** 2).mean(-1)),
    "cosine_distance": Case(D.cosine_distance_loss, _pair((B, 6)),
                            lambda s, t: 1 - (s * t).sum(-1) / np.linalg.norm(s, axis=-1)
                            / np.linalg.norm(t, axis=-1)),
    "similarity_preserving": Case(D.similarity_preserving_loss, _pair((B, 3, 2), (B, 7)),
                                  ref_sp),
    "rkd_distance": Case(D.rkd_distance_loss, _pair((5, 6), (5, 4)),
                         lambda s, t: ref_rkd_distance_matrix(s, t).mean(-1)),
    "rkd_angle": Case(D.rkd_angle_loss, _pair((5, 6), (5, 4)),
                      lambda s, t: ref_rkd_angle_tensor(s, t).mean((1, 2))),
    "contrastive": Case(lambda s, t: D.contrastive_loss(s, t, temperature=0.2), _pair((B, 6)),
                        lambda s, t: ref_contrastive(s, t, 0.2)),
    "attention_distribution": Case(
        lambda s, t: D.attention_distribution_loss(s, t, mask=MASK), _attention_make,
        lambda s, t: ref_attention(s, t, MASK)),
    "relation_qk": Case(
        lambda s, t: D.relation_loss(s[0], t[0], student_y=s[1], teacher_y=t[1],
                                     num_relation_heads=4, mask=MASK),
        _qk_make, lambda s, t: ref_relation(s[0], s[1], t[0], t[1], 4, MASK)),
    "value_relation": Case(
        lambda s, t: D.value_relation_loss(s, t, num_heads=2), _pair((2, 5, 8), (2, 5, 12)),
        lambda s, t: ref_relation(s, s, t, t, 2, None)),
    "minilm_v2": Case(
        lambda s, t: D.minilm_v2_loss(s, t, num_relation_heads=4, mask=MASK), _qkv_make,
        lambda s, t: sum(ref_relation(a, a, b, b, 4, MASK) for a, b in zip(s, t, strict=True))),
}


def f32(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def inputs(name, seed=0):
    return CASES[name].make(np.random.default_rng(seed))


# --------------------------------------------------------------------------- generic properties


@pytest.mark.parametrize("name", list(CASES))
def test_matches_float64_numpy_reference(name):
    s, t = inputs(name)
    out = CASES[name].fn(f32(s), f32(t))
    ref = CASES[name].ref(s, t)
    assert out.dtype == jnp.float32 and out.shape == ref.shape
    np.testing.assert_allclose(np.asarray(out), ref, rtol=2e-4, atol=2e-6)
    assert np.all(np.isfinite(ref)) and np.any(np.abs(ref) > 1e-4)  # not a vacuous comparison


@pytest.mark.parametrize("name", list(CASES))
def test_eager_jit_vmap_agree(name):
    fn = CASES[name].fn
    pairs = [f32(inputs(name, seed)) for seed in range(3)]
    eager = np.stack([np.asarray(fn(s, t)) for s, t in pairs])
    jitted = np.stack([np.asarray(jit(fn)(s, t)) for s, t in pairs])
    stacked_s = jax.tree.map(lambda *xs: jnp.stack(xs), *[s for s, _ in pairs])
    stacked_t = jax.tree.map(lambda *xs: jnp.stack(xs), *[t for _, t in pairs])
    vmapped = np.asarray(jit(jax.vmap(fn))(stacked_s, stacked_t))
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vmapped, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_teacher_gets_exactly_zero_gradient(name):
    fn = CASES[name].fn
    s, t = f32(inputs(name))
    # differentiated with respect to both, as when the teacher runs inside the training step
    g_s, g_t = jit(jax.grad(lambda ss, tt: jnp.sum(fn(ss, tt)), argnums=(0, 1)))(s, t)
    for leaf in jax.tree.leaves(g_t):
        assert np.all(np.asarray(leaf) == 0.0)
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(g_s))
    assert any(np.any(np.asarray(leaf) != 0) for leaf in jax.tree.leaves(g_s))


@pytest.mark.parametrize("name", list(CASES))
def test_student_gradient_matches_finite_differences(name):
    fn = CASES[name].fn
    s, t = inputs(name)
    rng = np.random.default_rng(7)
    with jax.enable_x64(True):
        s64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), s)
        t64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), t)
        flat, unravel = ravel_pytree(s64)
        n_out = jax.eval_shape(fn, s64, t64).shape[0]
        w = jnp.asarray(rng.uniform(0.5, 1.5, size=n_out))  # weigh the outputs differently

        def f(v):
            return jnp.sum(w * fn(unravel(v), t64))

        # central differences along 3 random directions; one program evaluates the 7 points
        h = 1e-6
        dirs = rng.normal(size=(3,) + flat.shape)
        points = jnp.concatenate([flat[None], flat + h * dirs, flat - h * dirs])
        values, grads = jit(jax.vmap(jax.value_and_grad(f)))(points)
        values, grad = np.asarray(values), np.asarray(grads[0])
        assert grad.dtype == np.float64
        fd = (values[1:4] - values[4:7]) / (2 * h)
        np.testing.assert_allclose(dirs @ grad, fd, rtol=1e-6, atol=1e-8)


def test_options_are_keyword_only():
    for name in D.__all__:
        obj = getattr(D, name)
        if not inspect.isfunction(obj):
            continue
        for p in inspect.signature(obj).parameters.values():
            if p.default is not inspect.Parameter.empty:
                assert p.kind is inspect.Parameter.KEYWORD_ONLY, (name, p.name)


# --------------------------------------------------------------------------- logits


def test_kd_with_one_hot_teacher_is_cross_entropy():
    # A one-hot teacher has infinite logit gaps; two stand-ins: (1) logit gaps of 1e4, whose
    # softmax is exactly one-hot in float32 (exp(-1e4) underflows to 0), and (2) the
    # probability-input variant given the exact one-hot.
    s = np.random.default_rng(1).normal(size=(B, C)) * 2
    one_hot = np.eye(C)[LABELS]
    ce = ref_ce(s, LABELS)
    np.testing.assert_allclose(D.kd_loss(f32(s), f32(1e4 * one_hot), temperature=1.0), ce,
                               rtol=1e-5)
    np.testing.assert_allclose(D.kd_loss_from_probs(f32(s), f32(one_hot), temperature=1.0), ce,
                               rtol=1e-5)
    g = jax.grad(lambda z: D.kd_loss(z, f32(1e4 * one_hot)).sum())(f32(s))
    np.testing.assert_allclose(g, np.exp(np_log_softmax(s)) - one_hot, atol=1e-6)


def test_kd_from_probs_equals_kd_on_logits_and_leading_axes():
    s, t = _pair((2, 3, C), scale=2.0)(np.random.default_rng(2))
    for temp in (1.0, 2.0, 4.0):
        a = D.kd_loss(f32(s), f32(t), temperature=temp)
        b = D.kd_loss_from_probs(f32(s), f32(np.exp(np_log_softmax(t))), temperature=temp)
        assert a.shape == (2, 3)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(a, ref_kd(s, t, temp), rtol=1e-4, atol=1e-6)


def test_temperature_and_weights_may_be_traced():
    s, t = f32(_pair((B, C), scale=2.0)(np.random.default_rng(3)))
    temps = jnp.array([0.5, 1.0, 4.0])
    out = jit(jax.vmap(lambda T: D.kd_loss(s, t, temperature=T)))(temps)
    for i, T in enumerate([0.5, 1.0, 4.0]):
        np.testing.assert_allclose(out[i], ref_kd(np.asarray(s), np.asarray(t), T), rtol=1e-4)
    # a new temperature value does not retrace
    traced = jit(chex.assert_max_traces(lambda T: D.kd_loss(s, t, temperature=T), n=1))
    traced(2.0), traced(3.0)
    dkd = jit(lambda a, b: D.dkd_loss(s, t, LABELS, alpha=a, beta=b))(2.0, 3.0)
    tckd, nckd = D.dkd_terms(s, t, LABELS, temperature=4.0)
    np.testing.assert_allclose(dkd, 2.0 * tckd + 3.0 * nckd, rtol=1e-5)


def test_kd_ce_endpoints():
    s, t = f32(_pair((B, C), scale=2.0)(np.random.default_rng(4)))
    np.testing.assert_allclose(D.kd_ce_loss(s, t, LABELS, temperature=2.0, alpha=1.0),
                               D.kd_loss(s, t, temperature=2.0), rtol=1e-6)
    np.testing.assert_allclose(D.kd_ce_loss(s, t, LABELS, temperature=2.0, alpha=0.0),
                               ref_ce(np.asarray(s), LABELS), rtol=1e-5)


def test_dkd_terms_decompose_classic_kd():
    # Zhao et al. 2022, Eq. 1: KD = TCKD + (1 - p_target^teacher) NCKD, at any temperature.
    s, t = _pair((B, C), scale=3.0)(np.random.default_rng(5))
    for temp in (1.0, 4.0):
        tckd, nckd = D.dkd_terms(f32(s), f32(t), LABELS, temperature=temp)
        p_target = np.exp(np_log_softmax(t / temp))[np.arange(B), LABELS]
        np.testing.assert_allclose(tckd + (1 - p_target) * nckd, ref_kd(s, t, temp), rtol=1e-4)


def test_standardized_kd_invariant_to_student_affine_maps_and_ddof():
    s, t = _pair((B, C), scale=2.0)(np.random.default_rng(6))
    a = D.standardized_kd_loss(f32(s), f32(t), temperature=2.0)
    b = D.standardized_kd_loss(f32(3.0 * s - 2.0), f32(t), temperature=2.0)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # ddof=1 is ddof=0 at temperature * sqrt(K / (K - 1)); T^2 scales the loss with it
    one = D.standardized_kd_loss(f32(s), f32(t), temperature=2.0, ddof=1, eps=0.0)
    t0 = 2.0 * np.sqrt(C / (C - 1))
    zero = D.standardized_kd_loss(f32(s), f32(t), temperature=t0, eps=0.0)
    np.testing.assert_allclose(one, zero * (2.0 / t0) ** 2, rtol=1e-4)
    np.testing.assert_allclose(one, ref_standardized(s, t, 2.0, ddof=1, eps=0.0), rtol=1e-4)


# --------------------------------------------------------------------------- features


def test_hint_projection_is_trained_and_matches_flax_dense():
    rng = np.random.default_rng(8)
    sf, tf = f32(rng.normal(size=(B, 3, 3, 4))), f32(rng.normal(size=(B, 3, 3, 6)))
    proj = D.init_hint_projection(jax.random.key(0), 4, 6)
    assert proj["kernel"].shape == (4, 6) and np.all(np.asarray(proj["bias"]) == 0)
    g = jit(jax.grad(lambda p: D.hint_loss(sf, tf, projection=p).mean()))(proj)
    assert np.abs(np.asarray(g["kernel"])).min() > 0 and np.abs(np.asarray(g["bias"])).min() > 0
    dense = nn.Dense(6)
    params = jit(dense.init)(jax.random.key(1), sf)["params"]
    expected = ((jit(dense.apply)({"params": params}, sf) - tf) ** 2).mean((1, 2, 3))
    np.testing.assert_allclose(jit(D.hint_loss)(sf, tf, projection=dict(params)), expected,
                               rtol=1e-5)
    assert D.hint_loss(sf, sf).tolist() == [0.0] * B  # no projection: equal channels


def test_attention_transfer_scale_invariant_and_other_exponent():
    sf, tf = _pair((B, 4, 4, 3), (B, 4, 4, 5))(np.random.default_rng(9))
    a = D.attention_transfer_loss(f32(sf), f32(tf))
    np.testing.assert_allclose(D.attention_transfer_loss(f32(5.0 * sf), f32(tf)), a, rtol=1e-5)
    np.testing.assert_allclose(D.attention_transfer_loss(f32(sf), f32(tf), p=3.0),
                               ref_at(sf, tf, p=3.0), rtol=1e-4)
    m = D.attention_map(f32(sf))
    assert m.shape == (B, 16)
    np.testing.assert_allclose(np.linalg.norm(m, axis=-1), 1.0, rtol=1e-6)
    # transformer tokens [batch, tokens, C] work as one spatial axis
    assert D.attention_transfer_loss(f32(sf.reshape(B, 16, 3)), f32(tf.reshape(B, 16, 5))
                                     ).shape == (B,)


def test_cosine_distance_of_zero_embedding_has_finite_gradient():
    z = jnp.zeros((2, 3))
    g = jit(jax.grad(lambda x: D.cosine_distance_loss(x, jnp.ones((2, 3))).sum()))(z)
    assert np.all(np.isfinite(np.asarray(g)))


# --------------------------------------------------------------------------- relations


def test_batch_losses_mean_is_the_papers_batch_loss():
    rng = np.random.default_rng(10)
    sf, tf = rng.normal(size=(B, 3, 2)), rng.normal(size=(B, 7))
    np.testing.assert_allclose(D.similarity_preserving_loss(f32(sf), f32(tf)).mean(),
                               ref_sp_total(sf, tf), rtol=1e-4)
    s, t = rng.normal(size=(5, 6)), rng.normal(size=(5, 4))
    np.testing.assert_allclose(D.rkd_distance_loss(f32(s), f32(t)).mean(),
                               ref_rkd_distance_matrix(s, t).mean(), rtol=1e-4)
    np.testing.assert_allclose(D.rkd_angle_loss(f32(s), f32(t)).mean(),
                               ref_rkd_angle_tensor(s, t).mean(), rtol=1e-4)
    np.testing.assert_allclose(
        D.rkd_loss(f32(s), f32(t), distance_weight=25.0, angle_weight=50.0),
        25 * ref_rkd_distance_matrix(s, t).mean(-1) + 50 * ref_rkd_angle_tensor(s, t).mean((1, 2)),
        rtol=1e-4)


def test_relational_losses_vanish_for_a_similar_student():
    # the student is the teacher rotated into a wider space, scaled and shifted
    rng = np.random.default_rng(11)
    t = rng.normal(size=(6, 4))
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    s = 3.0 * t @ q[:4] + rng.normal(size=8)
    rkd, sp = jit(D.rkd_loss), jit(D.similarity_preserving_loss)
    assert float(rkd(f32(s), f32(t)).max()) < 1e-5
    assert float(rkd(f32(s + 1.0), f32(t)).max()) < 1e-5
    assert float(sp(f32(3.0 * t @ q[:4]), f32(t)).max()) < 1e-6
    assert float(rkd(f32(rng.normal(size=(6, 8))), f32(t)).max()) > 1e-2


def test_contrastive_prefers_matching_pairs():
    rng = np.random.default_rng(12)
    t = rng.normal(size=(B, 6))
    matched = D.contrastive_loss(f32(t + 0.01 * rng.normal(size=t.shape)), f32(t),
                                 temperature=0.05)
    shuffled = D.contrastive_loss(f32(t[::-1]), f32(t), temperature=0.05)
    assert float(matched.max()) < 1e-3 < float(shuffled.min())
    raw = D.contrastive_loss(f32(t), f32(2 * t), temperature=1.0, normalize=False)
    np.testing.assert_allclose(raw, -np.diagonal(np_log_softmax(t @ (2 * t).T)), rtol=1e-4,
                               atol=1e-6)


def test_relation_of_queries_and_keys_is_minilm_attention_transfer():
    # With the models' own head count, relations of Q and K are the attention distributions:
    # relation_loss on Q, K equals attention_distribution_loss on softmax(Q K^T / sqrt(d)).
    (sq, sk), (tq, tk) = _qk_make(np.random.default_rng(13))
    heads = 2
    s_att = np.exp(np_relation_log_probs(sq, sk, heads, MASK))
    t_att = np.exp(np_relation_log_probs(tq, tk, heads, MASK))
    a = D.attention_distribution_loss(f32(s_att), f32(t_att), mask=MASK)
    b = D.relation_loss(f32(sq), f32(tq), student_y=f32(sk), teacher_y=f32(tk),
                        num_relation_heads=heads, mask=MASK)
    np.testing.assert_allclose(a, b, rtol=1e-4)


def test_mask_ignores_padding_and_equals_truncated_sequence():
    (sq, sk), (tq, tk) = _qk_make(np.random.default_rng(14))
    rel = jit(functools.partial(D.relation_loss, num_relation_heads=4))
    loss = rel(f32(sq), f32(tq), student_y=f32(sk), teacher_y=f32(tk), mask=MASK)
    # changing the padded token of example 0 changes nothing
    sq2, tk2 = sq.copy(), tk.copy()
    sq2[0, 4] += 10.0
    tk2[0, 4] -= 7.0
    loss2 = rel(f32(sq2), f32(tq), student_y=f32(sk), teacher_y=f32(tk2), mask=MASK)
    np.testing.assert_allclose(loss2, loss, rtol=1e-6)
    short = rel(f32(sq[:1, :4]), f32(tq[:1, :4]), student_y=f32(sk[:1, :4]),
                teacher_y=f32(tk[:1, :4]))
    np.testing.assert_allclose(loss[0], short[0], rtol=1e-5)
    # an example with no real token gives 0, not NaN, and finite gradients
    empty = np.zeros_like(MASK)
    out, g = jit(jax.value_and_grad(lambda x: D.relation_loss(
        x, f32(tq), num_relation_heads=4, mask=empty).sum()))(f32(sq))
    assert float(out) == 0.0 and np.all(np.isfinite(np.asarray(g)))


def test_relation_heads_bridge_different_head_counts():
    # student hidden 8 (say 2 heads of 4), teacher hidden 12 (3 heads of 4): 4 relation heads
    # of widths 2 and 3 give relations of the same shape; 3 does not divide 8.
    s, t = _pair((2, 5, 8), (2, 5, 12))(np.random.default_rng(15))
    out = D.value_relation_loss(f32(s), f32(t), num_heads=4)
    np.testing.assert_allclose(out, ref_relation(s, s, t, t, 4, None), rtol=1e-4)
    with pytest.raises(ValueError, match="must divide both hidden sizes, got student 8 and "
                                         "teacher 12"):
        D.value_relation_loss(f32(s), f32(t), num_heads=3)


# --------------------------------------------------------------------------- errors

Z = jnp.zeros


@pytest.mark.parametrize("call, match", [
    (lambda: D.kd_loss(Z((4, 5)), Z((4, 6))), r"\(4, 5\) and \(4, 6\)"),
    (lambda: D.kd_loss(jnp.zeros((4, 5), jnp.int32), Z((4, 5))), r"floating.*int32.*\(4, 5\)"),
    (lambda: D.kd_loss(Z((4, 5)), Z((4, 5)), temperature=0.0), "temperature must be > 0"),
    (lambda: D.kd_loss_from_probs(Z((4, 5)), Z((5,))), r"\(4, 5\) and \(5,\)"),
    (lambda: D.kd_ce_loss(Z((4, 5)), Z((4, 5)), jnp.zeros((3,), int)),
     r"labels must have shape \(4,\).*got \(3,\)"),
    (lambda: D.kd_ce_loss(Z((4, 5)), Z((4, 5)), jnp.array([0, 1, 2, 5])), r"\[0, 5\)"),
    (lambda: D.dkd_loss(Z((4, 1)), Z((4, 1)), jnp.zeros(4, int)), r"at least 2 classes.*\(4, 1\)"),
    (lambda: D.standardized_kd_loss(Z((4, 5)), Z((4, 5)), ddof=5), "ddof"),
    (lambda: D.hint_loss(Z((4, 3, 3, 2)), Z((4, 2, 2, 6))), r"\(4, 3, 3, 2\) and \(4, 2, 2, 6\)"),
    (lambda: D.hint_loss(Z((4, 3, 3, 2)), Z((4, 3, 3, 6)),
                         projection={"kernel": Z((3, 6)), "bias": Z((6,))}),
     r"\[2, 6\].*\(3, 6\)"),
    (lambda: D.attention_transfer_loss(Z((4, 8)), Z((4, 8))), r"\(4, 8\)"),
    (lambda: D.attention_transfer_loss(Z((4, 3, 3, 2)), Z((4, 2, 2, 2))),
     r"\(4, 3, 3, 2\) and \(4, 2, 2, 2\)"),
    (lambda: D.embedding_mse_loss(Z((4, 6)), Z((4, 7))), r"\(4, 6\) and \(4, 7\)"),
    (lambda: D.similarity_preserving_loss(Z((4, 6)), Z((3, 6))), r"\(4, 6\) and \(3, 6\)"),
    (lambda: D.rkd_distance_loss(Z((1, 6)), Z((1, 6))), r"at least 2.*\(1, 6\)"),
    (lambda: D.contrastive_loss(Z((4, 6)), Z((4, 5))), r"\(4, 6\) and \(4, 5\)"),
    (lambda: D.attention_distribution_loss(Z((2, 3, 5, 5)), Z((2, 4, 5, 5))),
     r"\(2, 3, 5, 5\) and \(2, 4, 5, 5\).*relation_loss"),
    (lambda: D.relation_loss(Z((2, 5, 8)), Z((2, 4, 8)), num_relation_heads=2),
     r"\(2, 5, 8\).*\(2, 4, 8\)"),
    (lambda: D.relation_loss(Z((2, 5, 8)), Z((2, 5, 8)), num_relation_heads=2,
                             mask=jnp.ones((2, 4), bool)), r"\[2, 5\].*\(2, 4\)"),
    (lambda: D.minilm_v2_loss((Z((2, 5, 8)),) * 2, (Z((2, 5, 8)),) * 3, num_relation_heads=2),
     "queries, keys, values"),
])
def test_bad_inputs_raise_value_error_naming_them(call, match):
    with pytest.raises(ValueError, match=match):
        call()
