"""Coresets against float64 NumPy references, step for step, and their defining properties."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import cdist

from smallsample import select as S

# Test-local compile options: a fraction of the default compile time for these small programs
# on a busy CPU, same numbers (no global config is touched).
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0,
                                                   "xla_llvm_disable_expensive_passes": True})

KEY = jax.random.key(3)


# ------------------------------------------------------------------ float64 NumPy references


def ref_k_center(x, k, first=0, initial=None):
    x = np.asarray(x, np.float64)
    if initial is None:
        idx = [first]
        d = ((x - x[first]) ** 2).sum(1)
    else:
        idx = []
        d = cdist(x, np.asarray(initial, np.float64), "sqeuclidean").min(1)
    radii = [np.sqrt(d.max())] if initial is None else []
    while len(idx) < k:
        c = int(np.argmax(d))
        idx.append(c)
        d = np.minimum(d, ((x - x[c]) ** 2).sum(1))
        radii.append(np.sqrt(d.max()))
    return np.array(idx), np.array(radii)


def ref_herding(x, k):
    x = np.asarray(x, np.float64)
    mu, total, idx = x.mean(0), np.zeros(x.shape[1]), []
    for t in range(1, k + 1):
        err = np.linalg.norm(mu - (total + x) / t, axis=1)
        err[idx] = np.inf
        j = int(np.argmin(err))
        idx.append(j)
        total += x[j]
    return np.array(idx)


def ref_kmeans_pp(x, k, gumbels, first):
    x = np.asarray(x, np.float64)
    idx = [first]
    d = ((x - x[first]) ** 2).sum(1)
    for j in range(1, k):
        with np.errstate(divide="ignore"):
            c = int(np.argmax(np.log(d) + gumbels[j]))
        idx.append(c)
        d = np.minimum(d, ((x - x[c]) ** 2).sum(1))
    return np.array(idx)


def ref_facility_location(sim, k):
    sim = np.asarray(sim, np.float64)
    best, idx, gains = np.zeros(sim.shape[0]), [], []
    for _ in range(k):
        g = np.maximum(sim - best[:, None], 0).sum(0)
        g[idx] = -np.inf
        j = int(np.argmax(g))
        idx.append(j)
        gains.append(g[j])
        best = np.maximum(best, sim[:, j])
    return np.array(idx), np.array(gains)


# ------------------------------------------------------------------------------------ tests


def points(n=60, d=5, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d))


def test_k_center_matches_float64_reference_step_for_step():
    x = points()
    lab = points(4, seed=1)
    with jax.enable_x64(True):
        run = jit(lambda x, lab: [
            (S.k_center_greedy(x, k=12, first=7, precise=p),
             S.k_center_greedy(x, k=12, initial_centers=lab, precise=p)) for p in (True, False)])
        out = run(jnp.asarray(x), jnp.asarray(lab))
    for (plain, warm), rtol in zip(out, (1e-12, 1e-9), strict=True):
        idx, radii = ref_k_center(x, 12, first=7)
        np.testing.assert_array_equal(plain.indices, idx)
        np.testing.assert_allclose(plain.radii, radii, rtol=rtol)
        idx, radii = ref_k_center(x, 12, initial=lab)
        np.testing.assert_array_equal(warm.indices, idx)
        np.testing.assert_allclose(warm.radii, radii, rtol=rtol)


def test_k_center_float32_radius_never_increases_and_prefixes_agree():
    x = points(80, 6, seed=2)
    run = jit(lambda x: (S.k_center_greedy(x, k=30), S.k_center_greedy(x, k=9),
                             S.k_center_greedy(x, k=30, precise=True)))
    big, small, precise = run(jnp.asarray(x, jnp.float32))
    ref_idx, ref_radii = ref_k_center(x, 30)
    for res in (big, precise):
        np.testing.assert_array_equal(res.indices, ref_idx)  # no near-ties in this data
        np.testing.assert_allclose(res.radii, ref_radii, rtol=1e-5)
    radii = np.asarray(big.radii)
    assert np.all(np.diff(radii) <= 0)
    np.testing.assert_array_equal(small.indices, big.indices[:9])
    # the reported radius is the true covering radius of the chosen prefix (scipy cdist)
    for j in (0, 8, 29):
        cover = cdist(x, x[np.asarray(big.indices[:j + 1])]).min(1).max()
        assert radii[j] == pytest.approx(cover, rel=1e-5)
    assert len(set(np.asarray(big.indices).tolist())) == 30


def test_herding_matches_float64_reference_and_beats_random_subsets():
    x = points(50, 4, seed=3)
    with jax.enable_x64(True):
        idx, idx_precise = jit(lambda x: (S.herding(x, k=10),
                                              S.herding(x, k=10, precise=True)))(jnp.asarray(x))
    np.testing.assert_array_equal(idx, ref_herding(x, 10))
    np.testing.assert_array_equal(idx_precise, ref_herding(x, 10))
    err = np.linalg.norm(x[np.asarray(idx)].mean(0) - x.mean(0))
    rng = np.random.default_rng(0)
    rand = [np.linalg.norm(x[rng.choice(50, 10, replace=False)].mean(0) - x.mean(0))
            for _ in range(200)]
    assert err < np.min(rand)


def test_kmeans_pp_matches_reference_with_the_same_draws_and_d2_law():
    x = points(40, 3, seed=4)
    n, k = 40, 8
    with jax.enable_x64(True):
        gumbels = np.stack([np.asarray(jax.random.gumbel(jax.random.fold_in(KEY, j), (n,),
                                                         jnp.float64)) for j in range(k)])
        idx, idx_precise = jit(lambda x: (S.kmeans_plus_plus(KEY, x, k=k),
                                              S.kmeans_plus_plus(KEY, x, k=k, precise=True)))(
            jnp.asarray(x))
    first = int(np.argmax(gumbels[0]))
    np.testing.assert_array_equal(idx, ref_kmeans_pp(x, k, gumbels, first))
    np.testing.assert_array_equal(idx_precise, ref_kmeans_pp(x, k, gumbels, first))
    # the second centre follows the D^2 law (chi-square over 4000 keys); a mask is respected
    reps = 4000
    mask = jnp.arange(n) % 3 == 0

    @jit
    def run(key, x):
        keys = jax.random.split(key, reps)
        return (jax.vmap(lambda k: S.kmeans_plus_plus(k, x, k=2, first=0)[1])(keys),
                S.kmeans_plus_plus(key, x, k=10, mask=mask))

    second, masked = map(np.asarray, run(KEY, jnp.asarray(x, jnp.float32)))
    assert (masked % 3 == 0).all() and len(set(masked.tolist())) == 10
    d2 = ((x - x[0]) ** 2).sum(1)
    counts = np.bincount(second, minlength=n)
    assert counts[0] == 0
    expected = reps * d2 / d2.sum()
    keep = expected >= 5  # chi-square validity; pool the rest (index 0 has expectation 0)
    obs, exp = counts[keep], expected[keep]
    if (~keep).sum() > 1:
        obs, exp = np.append(obs, counts[~keep].sum()), np.append(exp, expected[~keep].sum())
    assert stats.chisquare(obs, exp).pvalue > 1e-3


def test_facility_location_matches_reference_and_is_near_optimal():
    x = points(12, 2, seed=6)
    with jax.enable_x64(True):
        run = jit(lambda x: (S.rbf_similarity(x, x, gamma=0.5),
                                 S.facility_location_greedy(
                                     S.rbf_similarity(x, x, gamma=0.5), k=6)))
        sim, res = run(jnp.asarray(x))
    ref_sim = np.exp(-0.5 * cdist(x, x, "sqeuclidean"))
    np.testing.assert_allclose(sim, ref_sim, rtol=1e-10, atol=1e-12)
    idx, gains = ref_facility_location(ref_sim, 6)
    np.testing.assert_array_equal(res.indices, idx)
    np.testing.assert_allclose(res.gains, gains, rtol=1e-10)
    assert np.all(np.diff(gains) <= 1e-12)  # submodular: gains never grow
    # objective = cumulative gains; within (1 - 1/e) of the brute-force optimum for k = 3
    f = lambda s: ref_sim[:, list(s)].max(1).sum()
    assert f(idx[:3]) == pytest.approx(gains[:3].sum())
    best = max(f(s) for s in itertools.combinations(range(12), 3))
    assert f(idx[:3]) >= (1 - 1 / np.e) * best


def test_coreset_errors():
    x = jnp.zeros((5, 2))
    with pytest.raises(ValueError, match="k=6 is larger than the pool of 5"):
        S.k_center_greedy(x, k=6)
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        S.herding(jnp.zeros(5), k=2)
    with pytest.raises(ValueError, match="NaN or inf"):
        S.kmeans_plus_plus(KEY, x.at[1, 1].set(jnp.nan), k=2)
    with pytest.raises(ValueError, match="floating point"):
        S.k_center_greedy(jnp.zeros((5, 2), jnp.int32), k=2)
    with pytest.raises(ValueError, match="3 allowed points"):
        S.kmeans_plus_plus(KEY, x, k=4, mask=jnp.arange(5) < 3)
    with pytest.raises(ValueError, match="non-negative"):
        S.facility_location_greedy(-jnp.ones((3, 3)), k=1)
    with pytest.raises(ValueError, match="candidate set of 3"):
        S.facility_location_greedy(jnp.ones((4, 3)), k=4)
    with pytest.raises(ValueError, match="initial_centers shape"):
        S.k_center_greedy(x, k=2, initial_centers=jnp.zeros((2, 3)))
