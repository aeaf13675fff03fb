"""Active selection: uncertainty rankings, BADGE gradient embeddings and k-means++, core-set."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import special, stats
from scipy.spatial.distance import cdist

from smallsample import select as S

# Test-local compile options: a fraction of the default compile time for these small programs
# on a busy CPU, same numbers (no global config is touched).
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0,
                                                   "xla_llvm_disable_expensive_passes": True})

KEY = jax.random.key(5)
RNG = np.random.default_rng(7)
N, C, D = 30, 4, 3
LOGITS = (RNG.normal(size=(N, C)) * 2).astype(np.float32)
FEATS = RNG.normal(size=(N, D)).astype(np.float32)
LABELED = np.zeros(N, bool)
LABELED[[0, 5, 9, 17, 22]] = True


def test_uncertainty_select_matches_numpy_rankings_and_skips_labeled():
    @jit
    def run(logits, labeled):
        return {m: (S.uncertainty_select(logits, k=6, method=m),
                    S.uncertainty_select(logits, k=6, method=m, labeled=labeled))
                for m in ("entropy", "margin", "least_confidence")}

    out = run(LOGITS, LABELED)
    p = special.softmax(LOGITS.astype(np.float64), axis=1)
    ps = np.sort(p, axis=1)
    ref = {"entropy": stats.entropy(p, axis=1), "margin": -(ps[:, -1] - ps[:, -2]),
           "least_confidence": -ps[:, -1]}
    for m, score in ref.items():
        plain, masked = out[m]
        np.testing.assert_array_equal(plain.indices, np.argsort(-score, kind="stable")[:6])
        order = [i for i in np.argsort(-score, kind="stable") if not LABELED[i]]
        np.testing.assert_array_equal(masked.indices, order[:6])
        assert bool(masked.valid.all())


def test_badge_embeddings_are_last_layer_gradients_at_the_predicted_label():
    W = jnp.asarray(RNG.normal(size=(D, C)), jnp.float32)

    def ce(w, f):
        logits = f @ w
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.argmax(logits))

    @jit
    def run(feats):
        return (S.badge_embeddings(feats @ W, feats),
                jax.vmap(jax.grad(ce), in_axes=(None, 0))(W, feats))  # [N, D, C]

    emb, grads = map(np.asarray, run(FEATS))
    # class-major layout: emb[:, c*D:(c+1)*D] = dCE/dW[:, c]
    np.testing.assert_allclose(emb, grads.transpose(0, 2, 1).reshape(N, -1), rtol=1e-5,
                               atol=1e-6)


def test_badge_select_is_kmeans_pp_from_the_largest_unlabelled_gradient():
    @jit
    def run(key, logits, feats, labeled):
        g = S.badge_embeddings(logits, feats)
        norms = jnp.sum(g * g, -1)
        first = jnp.argmax(jnp.where(labeled, -jnp.inf, norms))
        ref = S.kmeans_plus_plus(key, g, k=8, first=first, mask=~labeled)
        return S.badge_select(key, logits, feats, k=8, labeled=labeled), ref, norms

    sel, ref, norms = run(KEY, LOGITS, FEATS, LABELED)
    idx = np.asarray(sel.indices)
    assert bool(sel.valid.all()) and not LABELED[idx].any()
    assert len(set(idx.tolist())) == 8
    np.testing.assert_array_equal(idx, ref)
    assert idx[0] == np.argmax(np.where(LABELED, -np.inf, np.asarray(norms)))


def test_coreset_select_starts_from_the_labelled_set():
    pool = RNG.normal(size=(25, 2))
    lab = RNG.normal(size=(3, 2))
    res = jit(lambda p, q: S.coreset_select(p, q, k=4))(jnp.asarray(pool, jnp.float32),
                                                             jnp.asarray(lab, jnp.float32))
    assert int(res.indices[0]) == int(np.argmax(cdist(pool, lab).min(1)))
    chosen = np.asarray(res.indices)
    cover = cdist(pool, np.vstack([lab, pool[chosen]])).min(1).max()
    assert float(res.radii[-1]) == pytest.approx(cover, rel=1e-5)


def test_active_errors():
    with pytest.raises(ValueError, match="method must be one of"):
        S.uncertainty_select(jnp.asarray(LOGITS), k=2, method="variance")
    with pytest.raises(ValueError, match="k=31 is larger than the pool of 30"):
        S.uncertainty_select(jnp.asarray(LOGITS), k=31)
    with pytest.raises(ValueError, match="labeled shape"):
        S.uncertainty_select(jnp.asarray(LOGITS), k=2, labeled=jnp.zeros(5, bool))
    with pytest.raises(ValueError, match="25 allowed points"):
        S.badge_select(KEY, jnp.asarray(LOGITS), jnp.asarray(FEATS), k=26,
                       labeled=jnp.asarray(LABELED))
