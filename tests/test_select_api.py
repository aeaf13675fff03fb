"""API conventions of smallsample.select, and eager == jit for every public function."""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smallsample import select as S

# Test-local compile options: a fraction of the default compile time for these small programs
# on a busy CPU, same numbers (no global config is touched).
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0,
                                                   "xla_llvm_disable_expensive_passes": True})

KEY = jax.random.key(1)
RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(12, 3)), jnp.float32)
LOGITS = jnp.asarray(RNG.normal(size=(12, 4)), jnp.float32)
LABELS = jnp.asarray(np.arange(12) % 3)
LW = jnp.asarray(RNG.normal(size=12), jnp.float32)
W = jnp.asarray(RNG.uniform(size=12), jnp.float32)
MASK = jnp.asarray(np.arange(12) % 4 != 0)
SIM = S.rbf_similarity(X, X, gamma=0.5)
SAMPLER = S.online_importance_sampler(12, batch_size=4)
STATE = SAMPLER.update(SAMPLER.init(), jnp.array([0, 3, 5, 7]), jnp.array([1.0, 2, 0.5, 3]))

# name -> (function, positional array arguments, static keyword arguments)
CASES = {
    "filter_mask": (S.filter_mask, (MASK,), dict(size=10)),
    "filter_by_score": (S.filter_by_score, (W, 0.5), dict(size=5)),
    "filter_where": (lambda x: S.filter_where(lambda e: e[0] > 0, x, size=6), (X,), {}),
    "top_k": (S.top_k, (W,), dict(k=4, mask=MASK)),
    "uniform": (lambda key: S.uniform(key, 12, k=4), (KEY,), {}),
    "stratified": (S.stratified, (KEY, LABELS), dict(num_classes=3, per_class=2)),
    "class_balanced": (S.class_balanced, (KEY, LABELS), dict(num_classes=3, k=4, replace=False)),
    "class_balanced_log_weights": (S.class_balanced_log_weights, (LABELS,), dict(num_classes=3)),
    "log_normalize": (S.log_normalize, (LW,), {}),
    "sample_with_replacement": (S.sample_with_replacement, (KEY, LW), dict(k=4)),
    "sample_without_replacement": (S.sample_without_replacement, (KEY, LW), dict(k=4)),
    "importance_sample": (S.importance_sample, (KEY, LW), dict(k=4, log_target=-LW)),
    "importance_sample_wor": (S.importance_sample, (KEY, LW), dict(k=4, replace=False)),
    "effective_sample_size": (S.effective_sample_size, (W,), {}),
    "effective_sample_size_from_log": (S.effective_sample_size_from_log, (LW,), {}),
    "weighted_mean": (S.weighted_mean, (X, W), {}),
    "weighted_loss": (S.weighted_loss, (W, W), dict(normalize=False)),
    "weighted_cross_entropy": (S.weighted_cross_entropy, (LOGITS, LABELS, W), {}),
    "loss_scores": (S.loss_scores, (LOGITS, LABELS), {}),
    "grad_norm_scores": (S.grad_norm_scores, (LOGITS, LABELS, X), {}),
    "el2n_scores": (S.el2n_scores, (LOGITS, LABELS), {}),
    "entropy_scores": (S.entropy_scores, (LOGITS,), {}),
    "prediction_margin": (S.prediction_margin, (LOGITS,), {}),
    "margin_scores": (S.margin_scores, (LOGITS,), {}),
    "least_confidence_scores": (S.least_confidence_scores, (LOGITS,), {}),
    "log_weights_from_scores": (S.log_weights_from_scores, (W,), dict(power=2.0, mix=0.1)),
    "pairwise_squared_distances": (S.pairwise_squared_distances, (X, X[:4]), {}),
    "rbf_similarity": (S.rbf_similarity, (X, X[:4]), dict(gamma=0.3)),
    "k_center_greedy": (S.k_center_greedy, (X,), dict(k=4, first=2)),
    "herding": (S.herding, (X,), dict(k=4)),
    "kmeans_plus_plus": (S.kmeans_plus_plus, (KEY, X), dict(k=4, mask=MASK)),
    "facility_location_greedy": (S.facility_location_greedy, (SIM,), dict(k=4)),
    "uncertainty_select": (S.uncertainty_select, (LOGITS,), dict(k=4, labeled=~MASK)),
    "badge_embeddings": (S.badge_embeddings, (LOGITS, X), {}),
    "badge_select": (S.badge_select, (KEY, LOGITS, X), dict(k=4, labeled=~MASK)),
    "coreset_select": (S.coreset_select, (X, X[:2]), dict(k=4)),
    "update": (SAMPLER.update, (STATE, jnp.array([1, 3]), jnp.array([2.0, 1.0])), {}),
    "sample": (SAMPLER.sample, (KEY, STATE), {}),
    "probabilities": (SAMPLER.probabilities, (STATE,), {}),
}

FUNCTIONS = [n for n in S.__all__ if inspect.isfunction(getattr(S, n))]


def test_every_public_function_is_covered():
    covered = {name.split(".")[-1] for name in CASES} | {
        name.rsplit("_", 1)[0] for name in CASES}
    missing = [n for n in FUNCTIONS if n not in covered and n not in
               ("online_importance_sampler", "is_concrete")]
    assert not missing, missing


@pytest.mark.parametrize("name", sorted(CASES))
def test_eager_and_jit_agree(name):
    fn, args, kwargs = CASES[name]
    eager = fn(*args, **kwargs)
    jitted = jit(lambda *a: fn(*a, **kwargs))(*args)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
                 eager, jitted)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_conventions_key_first_and_options_keyword_only(name):
    params = list(inspect.signature(getattr(S, name)).parameters.values())
    names = [p.name for p in params]
    if "key" in names:
        assert names[0] == "key"
    for p in params:
        if p.default is not inspect.Parameter.empty or p.name in ("k", "size"):
            assert p.kind is inspect.Parameter.KEYWORD_ONLY, p.name


def test_vmap_over_keys_matches_a_loop_and_keys_matter():
    keys = jax.random.split(KEY, 3)
    def draw(k):
        return S.importance_sample(k, LW, k=4, replace=False)

    one_key = jit(draw)
    batched = jit(jax.vmap(draw))(keys)
    for i in range(3):
        one = one_key(keys[i])
        np.testing.assert_array_equal(batched.indices[i], one.indices)
        np.testing.assert_allclose(batched.weights[i], one.weights, rtol=1e-6)
    assert len({tuple(np.asarray(r).tolist()) for r in batched.indices}) > 1
