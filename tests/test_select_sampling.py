"""Filtering, uniform / stratified / class-balanced sampling: NumPy references and statistics.

Each test computes what it needs in one jitted function (one compilation); eager calls are
compared with jitted ones in test_select_api.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from smallsample import select as S

# Test-local compile options: a fraction of the default compile time for these small programs
# on a busy CPU, same numbers (no global config is touched).
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0,
                                                   "xla_llvm_disable_expensive_passes": True})

KEY = jax.random.key(0)


def test_filters_match_numpy():
    mask = np.array([0, 1, 1, 0, 1, 0, 0, 1], bool)
    scores = np.array([0.1, 0.9, np.nan, 0.5, 0.7], np.float32)
    rng = np.random.default_rng(0)
    ranked = rng.normal(size=30).astype(np.float32)
    allowed = np.zeros(30, bool)
    allowed[[3, 8, 11]] = True

    @jit
    def run(mask, scores, threshold, ranked, allowed):
        data = {"x": jnp.arange(10.0), "y": jnp.arange(10) % 3}
        return dict(
            padded=S.filter_mask(mask, size=6, fill_value=-1),
            small=S.filter_mask(mask, size=2),
            above=S.filter_by_score(scores, threshold, size=5),
            below=S.filter_by_score(scores, threshold, size=5, above=False),
            where=S.filter_where(lambda ex: (ex["y"] == 1) & (ex["x"] > 2), data, size=4),
            top=S.top_k(ranked, k=7),
            top_masked=S.top_k(ranked, k=5, mask=allowed),
        )

    out = run(mask, scores, 0.5, ranked, allowed)
    np.testing.assert_array_equal(out["padded"].indices, [1, 2, 4, 7, -1, -1])
    np.testing.assert_array_equal(out["padded"].valid, [1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(out["small"].indices, [1, 2])  # buffer smaller than matches
    assert bool(out["small"].valid.all())
    np.testing.assert_array_equal(out["above"].indices[out["above"].valid], [1, 3, 4])  # no NaN
    np.testing.assert_array_equal(out["below"].indices[out["below"].valid], [0, 3])
    np.testing.assert_array_equal(out["where"].indices[out["where"].valid], [4, 7])
    order = np.argsort(-ranked, kind="stable")
    np.testing.assert_array_equal(out["top"].indices, order[:7])
    np.testing.assert_array_equal(out["top_masked"].indices[:3], [i for i in order if allowed[i]])
    np.testing.assert_array_equal(out["top_masked"].valid, [1, 1, 1, 0, 0])
    assert int(run(mask, scores, 0.8, ranked, allowed)["above"].valid.sum()) == 1  # traced


def test_uniform_without_replacement_distinct_and_with_replacement_uniform():
    @jit
    def run(key):
        perms = jax.vmap(lambda k: S.uniform(k, 10, k=10))(jax.random.split(key, 2000))
        return perms, S.uniform(key, 10, k=20000, replace=True)

    perms, iid = map(np.asarray, run(KEY))
    assert all(len(set(row.tolist())) == 10 for row in perms)
    # the first draw without replacement is uniform, and so are the i.i.d. draws
    assert stats.chisquare(np.bincount(perms[:, 0], minlength=10)).pvalue > 1e-3
    assert stats.chisquare(np.bincount(iid, minlength=10)).pvalue > 1e-3


def test_stratified_per_class_members_distinct_uniform_and_with_replacement():
    y = np.array([0, 1, 2, 1, 0, 2, 2, 0, 1, 2, 2, 0])
    reps = 1000

    @jit
    def run(key, labels):
        many = jax.vmap(lambda k: S.stratified(k, labels, num_classes=3, per_class=3))(
            jax.random.split(key, reps))
        iid = S.stratified(key, labels, num_classes=3, per_class=8, replace=True)
        return many, iid

    many, iid = run(KEY, jnp.asarray(y))
    picks = np.asarray(many.indices)
    assert bool(many.valid.all()) and bool(iid.valid.all())
    for c in range(3):
        block = picks[:, 3 * c:3 * c + 3]
        assert (y[block] == c).all()
        assert all(len(set(r.tolist())) == 3 for r in block)
    # every member of class 2 (5 members) is drawn with probability 3/5
    counts = np.array([(picks[:, 6:9] == m).any(1).sum() for m in np.flatnonzero(y == 2)])
    z = (counts - reps * 0.6) / np.sqrt(reps * 0.6 * 0.4)
    assert np.all(np.abs(z) < 4.5), z
    cls = y[np.asarray(iid.indices)].reshape(3, 8)
    np.testing.assert_array_equal(cls, np.repeat(np.arange(3)[:, None], 8, 1))


def test_stratified_empty_or_small_class_eager_error_and_jit_mask():
    labels = jnp.array([0, 0, 0, 2, 2, 2, 2])
    with pytest.raises(ValueError, match=r"classes \[1\]"):
        S.stratified(KEY, labels, num_classes=3, per_class=2)
    with pytest.raises(ValueError, match=r"classes \[1\]"):
        S.stratified(KEY, labels, num_classes=3, per_class=2, replace=True)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        S.stratified(KEY, jnp.array([0, 3]), num_classes=3, per_class=1)
    with pytest.raises(ValueError, match="integers"):
        S.stratified(KEY, jnp.array([0.0, 1.0]), num_classes=2, per_class=1)
    sel = jit(lambda y: S.stratified(KEY, y, num_classes=3, per_class=4))(labels)
    np.testing.assert_array_equal(np.asarray(sel.valid).reshape(3, 4),
                                  [[1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])


def test_class_balanced_equalises_classes_and_reweights_back():
    y = np.array([0] * 12 + [1] * 3 + [2] * 1)

    @jit
    def run(key, labels):
        return (S.class_balanced_log_weights(labels, num_classes=3),
                S.class_balanced(key, labels, num_classes=3, k=30000))

    lw, s = run(KEY, jnp.asarray(y))
    np.testing.assert_allclose(np.exp(lw), 1.0 / np.bincount(y)[y], rtol=1e-6)
    drawn = y[np.asarray(s.indices)]
    assert stats.chisquare(np.bincount(drawn, minlength=3)).pvalue > 1e-3
    # the weighted class frequencies recover the pool's proportions 12:3:1
    w = np.asarray(s.weights)
    est = np.array([w[drawn == c].sum() for c in range(3)])
    np.testing.assert_allclose(est, np.bincount(y) / len(y), atol=0.01)
