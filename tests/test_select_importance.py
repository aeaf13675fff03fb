"""Importance sampling: frequencies (chi-square), distinctness, unbiasedness of the estimators,
effective sample size, weighted losses, and the per-example weight sources against references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import special, stats

from smallsample import select as S

# Test-local compile options: a fraction of the default compile time for these small programs
# on a busy CPU, same numbers (no global config is touched).
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0,
                                                   "xla_llvm_disable_expensive_passes": True})

KEY = jax.random.key(42)
P = np.array([0.05, 0.1, 0.2, 0.0, 0.3, 0.15, 0.12, 0.08])  # one zero weight
LOGP = jnp.log(jnp.asarray(P, jnp.float32) * 7.0)  # unnormalised on purpose


def test_with_replacement_frequencies_match_weights():
    idx = np.asarray(jit(lambda key: S.sample_with_replacement(key, LOGP, k=40000))(KEY))
    counts = np.bincount(idx, minlength=len(P))
    assert counts[3] == 0  # zero weight never drawn
    nz = P > 0
    res = stats.chisquare(counts[nz], 40000 * P[nz])
    assert res.pvalue > 1e-3, res


def test_gumbel_top_k_distinct_and_successive_sampling_law():
    reps = 20000
    draws = np.asarray(jit(jax.vmap(lambda k: S.sample_without_replacement(k, LOGP, k=2)))(
        jax.random.split(KEY, reps)))
    assert (draws[:, 0] != draws[:, 1]).all()
    # first draw ~ p; second ~ sum_j p_j p_i / (1 - p_j) (successive sampling)
    first = np.bincount(draws[:, 0], minlength=len(P))
    second = np.bincount(draws[:, 1], minlength=len(P))
    p2 = np.array([sum(P[j] * P[i] / (1 - P[j]) for j in range(len(P)) if j != i)
                   for i in range(len(P))])
    nz = P > 0
    assert stats.chisquare(first[nz], reps * P[nz]).pvalue > 1e-3
    assert stats.chisquare(second[nz], reps * p2[nz] / p2.sum()).pvalue > 1e-3
    assert first[3] == second[3] == 0
    many = np.asarray(S.sample_without_replacement(KEY, LOGP, k=7))
    assert sorted(many.tolist()) == [0, 1, 2, 4, 5, 6, 7]


def test_importance_estimators_unbiased_within_standard_error():
    # The raw weights give an exactly unbiased estimator; the self-normalised one has a bias of
    # order 1/k, which at this k is well inside the Monte Carlo standard error of 500 repeats.
    n, k, reps = 1000, 300, 500
    rng = np.random.default_rng(1)
    f = rng.gamma(2.0, size=n)
    target = rng.uniform(0.5, 2.0, size=n)  # a non-uniform target as well
    proposal = np.log(f + 0.5)  # correlated with f, as a good proposal is
    true_uniform, true_target = f.mean(), (target * f).sum() / target.sum()
    fj = jnp.asarray(f, jnp.float32)

    def estimates(key):
        out = []
        for replace in (True, False):
            s = S.importance_sample(key, jnp.asarray(proposal, jnp.float32), k=k, replace=replace)
            t = S.importance_sample(key, jnp.asarray(proposal, jnp.float32), k=k, replace=replace,
                                    log_target=jnp.log(jnp.asarray(target, jnp.float32)))
            out += [jnp.sum(s.raw_weights * fj[s.indices]), jnp.sum(s.weights * fj[s.indices]),
                    jnp.sum(t.raw_weights * fj[t.indices]), jnp.sum(t.weights * fj[t.indices])]
        return jnp.stack(out)

    est = np.asarray(jit(jax.vmap(estimates))(jax.random.split(KEY, reps)), np.float64)
    truth = np.array([true_uniform, true_uniform, true_target, true_target] * 2)
    se = est.std(0, ddof=1) / np.sqrt(reps)
    assert np.all(np.abs(est.mean(0) - truth) < 4 * se + 1e-4), (est.mean(0), truth, se)


def test_importance_sample_weights_normalised_and_exact_when_k_equals_n():
    @jit
    def run(key):
        return (S.importance_sample(key, LOGP, k=5, replace=False),
                S.importance_sample(key, jnp.log(jnp.arange(1.0, 7.0)), k=6, replace=False),
                S.importance_sample(key, jnp.zeros(9), k=4, replace=True))

    s, full, uni = run(KEY)
    np.testing.assert_allclose(float(s.weights.sum()), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(full.raw_weights), np.full(6, 1 / 6), rtol=1e-6)
    # proposal == target: all weights equal
    np.testing.assert_allclose(np.asarray(uni.weights), np.full(4, 0.25), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(uni.raw_weights), np.full(4, 0.25), rtol=1e-6)


def test_effective_sample_size_and_weighted_losses():
    rng = np.random.default_rng(2)
    w = rng.exponential(size=30)
    logits = rng.normal(size=(30, 4)).astype(np.float32)
    labels = rng.integers(0, 4, size=30)
    vals = rng.normal(size=(30, 3))

    @jit
    def run(w, lw, logits, labels, vals, ce):
        return dict(
            flat=S.effective_sample_size(jnp.full(17, 0.3)),
            one_hot=S.effective_sample_size(jnp.eye(9)[4]),
            random=S.effective_sample_size(w),
            from_log=S.effective_sample_size_from_log(lw),  # would underflow outside log space
            flat_log=S.effective_sample_size_from_log(jnp.zeros(12)),
            one_hot_log=S.effective_sample_size_from_log(jnp.array([-jnp.inf, 3.0, -jnp.inf])),
            wce=S.weighted_cross_entropy(logits, labels, w),
            wloss=S.weighted_loss(ce, w, normalize=False),
            wmean=S.weighted_mean(vals, w))

    ce = -(logits[np.arange(30), labels] - special.logsumexp(logits.astype(np.float64), axis=1))
    out = run(jnp.asarray(w, jnp.float32), jnp.asarray(np.log(w) - 500.0, jnp.float32), logits,
              labels, jnp.asarray(vals, jnp.float32), jnp.asarray(ce, jnp.float32))
    ess = w.sum() ** 2 / (w ** 2).sum()
    assert float(out["flat"]) == pytest.approx(17, rel=1e-6)
    assert float(out["one_hot"]) == pytest.approx(1.0)
    assert float(out["random"]) == pytest.approx(ess, rel=1e-5)
    assert float(out["from_log"]) == pytest.approx(ess, rel=1e-4)
    assert float(out["flat_log"]) == pytest.approx(12, rel=1e-6)
    assert float(out["one_hot_log"]) == pytest.approx(1.0)
    assert float(out["wce"]) == pytest.approx((w * ce).sum() / w.sum(), rel=1e-5)
    assert float(out["wloss"]) == pytest.approx((w * ce).sum(), rel=1e-5)
    np.testing.assert_allclose(out["wmean"], (w[:, None] * vals).sum(0) / w.sum(), rtol=1e-5,
                               atol=1e-6)


def test_scores_against_references():
    rng = np.random.default_rng(4)
    n, c, d = 7, 5, 3
    logits = rng.normal(size=(n, c)).astype(np.float32) * 2
    labels = rng.integers(0, c, size=n)
    feats = rng.normal(size=(n, d)).astype(np.float32)
    ens = rng.normal(size=(3, n, c)).astype(np.float32)
    W = jnp.asarray(rng.normal(size=(d, c)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(c,)), jnp.float32)

    def ce(w, f, y):
        return optax.softmax_cross_entropy_with_integer_labels(f @ w + b, y)

    @jit
    def run(L, Y, F, E):
        return dict(
            loss=S.loss_scores(L, Y), entropy=S.entropy_scores(L),
            margin=S.prediction_margin(L), margin_s=S.margin_scores(L),
            least=S.least_confidence_scores(L), el2n_ens=S.el2n_scores(E, Y),
            el2n=S.el2n_scores(L, Y), gn=S.grad_norm_scores(F @ W + b, Y, F),
            # reference for the gradient-norm score: the exact per-example dCE/dW by autodiff
            grads=jax.vmap(jax.grad(ce), in_axes=(None, 0, 0))(W, F, Y))

    out = {k: np.asarray(v, np.float64) for k, v in run(logits, labels, feats, ens).items()}
    p = special.softmax(logits.astype(np.float64), axis=1)
    onehot = np.eye(c)[labels]
    ps = np.sort(p, axis=1)
    np.testing.assert_allclose(out["loss"], -np.log(p[np.arange(n), labels]), rtol=1e-5)
    np.testing.assert_allclose(out["entropy"], stats.entropy(p, axis=1), rtol=1e-5)
    np.testing.assert_allclose(out["margin"], ps[:, -1] - ps[:, -2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["margin_s"], 1 - ps[:, -1] + ps[:, -2], rtol=1e-5)
    np.testing.assert_allclose(out["least"], 1 - ps[:, -1], rtol=1e-5, atol=1e-6)
    pe = special.softmax(ens.astype(np.float64), axis=-1)
    np.testing.assert_allclose(out["el2n_ens"], np.linalg.norm(pe - onehot, axis=-1).mean(0),
                               rtol=1e-5)
    np.testing.assert_allclose(out["el2n"], np.linalg.norm(p - onehot, axis=1), rtol=1e-5)
    np.testing.assert_allclose(out["gn"], np.linalg.norm(out["grads"].reshape(n, -1), axis=1),
                               rtol=1e-5)


def test_log_weights_from_scores():
    s = np.array([0.0, 1.0, 3.0, 4.0])

    @jit
    def run(s):
        return (S.log_weights_from_scores(s, power=2.0, mix=0.2),
                S.log_weights_from_scores(jnp.zeros(4)), S.log_weights_from_scores(s))

    mixed, zeros, pure = (np.exp(np.asarray(v, np.float64)) for v in run(jnp.asarray(s)))
    np.testing.assert_allclose(mixed, 0.8 * s ** 2 / (s ** 2).sum() + 0.2 / 4, rtol=1e-6)
    np.testing.assert_allclose(zeros, np.full(4, 0.25), rtol=1e-6)  # all-zero: uniform
    np.testing.assert_allclose(pure, s / s.sum(), rtol=1e-6)


@pytest.mark.parametrize("bad, match", [
    (jnp.array([0.0, jnp.nan, 1.0]), "NaN"),
    (jnp.array([0.0, jnp.inf]), r"\+inf"),
    (jnp.array([-jnp.inf, -jnp.inf]), "all -inf"),
])
def test_bad_log_weights_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        S.importance_sample(KEY, bad, k=1)
    with pytest.raises(ValueError, match=match):
        S.sample_without_replacement(KEY, bad, k=1)


def test_bad_weights_and_sizes_raise():
    with pytest.raises(ValueError, match="non-negative"):
        S.effective_sample_size(jnp.array([1.0, -0.5]))
    with pytest.raises(ValueError, match="finite"):
        S.weighted_loss(jnp.ones(2), jnp.array([1.0, jnp.nan]))
    with pytest.raises(ValueError, match="non-negative"):
        S.log_weights_from_scores(jnp.array([1.0, -2.0]))
    with pytest.raises(ValueError, match="k=9 is larger than the pool of 8"):
        S.importance_sample(KEY, LOGP, k=9, replace=False)
    with pytest.raises(ValueError, match="7 examples with non-zero weight"):
        S.importance_sample(KEY, LOGP, k=8, replace=False)
    with pytest.raises(ValueError, match="static Python int"):
        S.sample_with_replacement(KEY, LOGP, k=2.0)
    with pytest.raises(ValueError, match=r"shape \[n\]"):
        S.importance_sample(KEY, jnp.zeros((2, 3)), k=1)


def test_value_checks_are_skipped_under_jit():
    # Documented behaviour: traced values cannot raise; NaN weights propagate instead.
    out = jit(lambda lw: S.importance_sample(KEY, lw, k=2).weights)(
        jnp.array([0.0, jnp.nan, 1.0]))
    assert out.shape == (2,)
