"""The online importance sampler: EMA bookkeeping, proposal, sampling law, unbiased losses."""

import functools

import chex
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

KEY = jax.random.key(11)


def test_update_is_an_ema_of_the_losses_seen():
    n, decay = 10, 0.8
    sampler = S.online_importance_sampler(n, batch_size=3, decay=decay, mix=0.1)
    batches = [np.array([1, 4, 7]), np.array([4, 2, 9]), np.array([7, 4, 0])]
    losses = [np.array([1.0, 2.0, 3.0]), np.array([0.5, 4.0, 1.5]), np.array([2.0, 0.0, 6.0])]

    @jit
    def run(batches, losses):
        def body(state, bl):
            return sampler.update(state, *bl), None
        return jax.lax.scan(body, sampler.init(), (batches, losses))[0]

    state = run(jnp.asarray(np.stack(batches)), jnp.asarray(np.stack(losses), jnp.float32))
    ref, seen = np.zeros(n), np.zeros(n, bool)
    for b, loss in zip(batches, losses, strict=True):
        ref[b] = np.where(seen[b], decay * ref[b] + (1 - decay) * loss, loss)
        seen[b] = True
    np.testing.assert_allclose(state.scores, ref, rtol=1e-6)
    np.testing.assert_array_equal(state.seen, seen)
    assert int(state.count) == 3


def test_proposal_uniform_first_then_optimistic_and_mixed():
    n, mix = 6, 0.2
    sampler = S.online_importance_sampler(n, batch_size=2, mix=mix)

    @jit
    def run():
        s0 = sampler.init()
        s1 = sampler.update(s0, jnp.array([0, 3]), jnp.array([1.0, 3.0]))
        return sampler.probabilities(s0), sampler.probabilities(s1)

    p0, p1 = map(np.asarray, run())
    np.testing.assert_allclose(p0, np.full(n, 1 / n), rtol=1e-6)
    eff = np.array([1.0, 3, 3, 3, 3, 3])  # unseen examples take the largest score seen
    np.testing.assert_allclose(p1, (1 - mix) * eff / eff.sum() + mix / n, rtol=1e-6)
    assert p1.min() >= mix / n


@pytest.mark.parametrize("replace", [True, False])
def test_sample_law_and_unbiased_weighted_loss(replace):
    n, k, reps = 8, 3, 3000
    loss = np.array([0.1, 0.5, 2.0, 0.2, 1.0, 3.0, 0.3, 0.7])
    sampler = S.online_importance_sampler(n, batch_size=k, mix=0.1, replace=replace)
    state = sampler.init(jnp.asarray(loss, jnp.float32))

    @jit
    def run(key):
        def one(key):
            b = sampler.sample(key, state)
            est = jnp.sum(b.raw_weights * jnp.asarray(loss, jnp.float32)[b.indices])
            return b.indices, est
        return jax.vmap(one)(jax.random.split(key, reps)), sampler.probabilities(state)

    (idx, est), q = run(KEY)
    idx, est, q = np.asarray(idx), np.asarray(est, np.float64), np.asarray(q, np.float64)
    np.testing.assert_allclose(q, 0.9 * loss / loss.sum() + 0.1 / n, rtol=1e-5)
    counts = np.bincount(idx[:, 0], minlength=n)  # first draw ~ q in both modes
    assert stats.chisquare(counts, reps * q / q.sum()).pvalue > 1e-3
    if not replace:
        assert all(len(set(r.tolist())) == k for r in idx)
    se = est.std(ddof=1) / np.sqrt(reps)
    assert abs(est.mean() - loss.mean()) < 4 * se


def test_training_loop_step_traces_once():
    n = 16
    sampler = S.online_importance_sampler(n, batch_size=4, decay=0.5, mix=0.2)
    true_loss = jnp.linspace(0.0, 3.0, n)

    @jit
    @chex.assert_max_traces(n=1)
    def step(state, key):
        batch = sampler.sample(key, state)
        return sampler.update(state, batch.indices, true_loss[batch.indices])

    state = sampler.init()
    for key in jax.random.split(KEY, 20):
        state = step(state, key)
    assert int(state.count) == 20
    # high-loss examples end up with a higher proposal probability
    p = np.asarray(jit(sampler.probabilities)(state))
    seen = np.asarray(state.seen)
    assert seen.sum() >= 10
    assert np.corrcoef(p[seen], np.asarray(true_loss)[seen])[0, 1] > 0.9


def test_online_errors():
    with pytest.raises(ValueError, match="k=5 is larger than the pool of 4"):
        S.online_importance_sampler(4, batch_size=5, replace=False)
    with pytest.raises(ValueError, match="decay"):
        S.online_importance_sampler(4, batch_size=2, decay=1.0)
    with pytest.raises(ValueError, match="mix"):
        S.online_importance_sampler(4, batch_size=2, mix=1.5)
    sampler = S.online_importance_sampler(4, batch_size=2)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        sampler.init(jnp.ones(3))
    with pytest.raises(ValueError, match="losses must be non-negative"):
        sampler.update(sampler.init(), jnp.array([0, 1]), jnp.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="losses must be finite"):
        sampler.update(sampler.init(), jnp.array([0, 1]), jnp.array([1.0, jnp.nan]))
