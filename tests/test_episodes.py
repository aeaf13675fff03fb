import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from smallsample.episodes import eval_keys, fixed_episodes, sample_episode, sample_meta_batch

C, N = 12, 20
# Every example encodes (class, index), so the tests can see exactly what was drawn.
IDS = jnp.asarray(np.arange(C)[:, None, None] * 100 + np.arange(N)[None, :, None], jnp.int32)


def draw(key, **kw):
    kw = {"ways": 5, "shots": 2, "queries": 3, **kw}
    return sample_episode(key, IDS, **kw)


def test_shapes_and_labels():
    ep = draw(jax.random.key(0))
    assert ep.support_x.shape == (10, 1) and ep.query_x.shape == (15, 1)
    np.testing.assert_array_equal(ep.support_y, np.repeat(np.arange(5), 2))
    np.testing.assert_array_equal(ep.query_y, np.repeat(np.arange(5), 3))
    assert ep.support_y.dtype == jnp.int32


@pytest.mark.parametrize("seed", range(6))
def test_support_query_disjoint_and_classes_consistent(seed):
    ep = draw(jax.random.key(seed))
    s, q = np.asarray(ep.support_x[:, 0]), np.asarray(ep.query_x[:, 0])
    assert len(set(s) | set(q)) == len(s) + len(q)  # all examples distinct
    s_cls, q_cls = s // 100, q // 100
    for label in range(5):  # one class per label, the same in support and query
        classes = set(s_cls[np.asarray(ep.support_y) == label]) | \
            set(q_cls[np.asarray(ep.query_y) == label])
        assert len(classes) == 1
    assert len(set(s_cls)) == 5  # classes without replacement


def test_labels_are_a_fresh_permutation():
    firsts = [int(draw(jax.random.key(i)).support_x[0, 0]) // 100 for i in range(200)]
    # label 0 maps to each class about equally often
    counts = np.bincount(firsts, minlength=C)
    assert stats.chisquare(counts).pvalue > 1e-3


def test_class_frequencies_uniform():
    eps = sample_meta_batch(jax.random.key(1), IDS, batch=2000, ways=5, shots=1, queries=1)
    classes = np.asarray(eps.support_x[..., 0]).ravel() // 100
    counts = np.bincount(classes, minlength=C)
    assert counts.sum() == 2000 * 5
    assert stats.chisquare(counts).pvalue > 1e-3
    examples = np.asarray(eps.query_x[..., 0]).ravel() % 100
    assert stats.chisquare(np.bincount(examples, minlength=N)).pvalue > 1e-3


def test_jit_matches_eager_and_keys_matter():
    key = jax.random.key(3)
    eager = draw(key)
    jitted = jax.jit(lambda k: draw(k))(key)
    for a, b in zip(eager, jitted, strict=True):
        np.testing.assert_array_equal(a, b)
    other = draw(jax.random.key(4))
    assert not np.array_equal(eager.support_x, other.support_x)


def test_per_class_limits_examples():
    eps = sample_meta_batch(jax.random.key(2), IDS, batch=100, ways=3, shots=2, queries=3,
                            per_class=5)
    assert np.asarray(eps.support_x % 100).max() < 5 and np.asarray(eps.query_x % 100).max() < 5


def test_rotation_rotates_whole_classes():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 4, 5, 5, 1), dtype=np.uint8)
    ep = sample_episode(jax.random.key(5), jnp.asarray(images), ways=3, shots=1, queries=3,
                        rotate=True)
    x = np.asarray(ep.support_x)
    turns_seen = set()
    for label in range(3):
        sup = x[label]
        match = [(c, k) for c in range(6) for k in range(4) for j in range(4)
                 if np.allclose(np.rot90(images[c, j] / 255.0, k), sup)]
        assert match, "support image is not a rotated original"
        c, k = match[0]
        turns_seen.add(k)
        for q in np.asarray(ep.query_x)[np.asarray(ep.query_y) == label]:
            assert any(np.allclose(np.rot90(images[c, j] / 255.0, k), q) for j in range(4))
    assert np.asarray(ep.support_x).dtype == np.float32


@pytest.mark.parametrize("kw, msg", [
    (dict(ways=13), "ways=13 is more than the 12 classes"),
    (dict(shots=15, queries=6), "shots + queries = 15 + 6 = 21 is more than the 20"),
    (dict(shots=0), "shots must be a positive int"),
    (dict(queries=-1), "queries must be a positive int"),
])
def test_impossible_requests_name_the_numbers(kw, msg):
    with pytest.raises(ValueError, match=msg.replace("+", r"\+")):
        draw(jax.random.key(0), **kw)


def test_fixed_episodes_are_fixed_and_batch_independent():
    a = list(fixed_episodes(IDS, seed=7, num_episodes=10, ways=5, shots=1, queries=2, batch=4))
    b = list(fixed_episodes(IDS, seed=7, num_episodes=10, ways=5, shots=1, queries=2, batch=10))
    a_all = np.concatenate([np.asarray(e.support_x) for e in a])
    np.testing.assert_array_equal(a_all, np.asarray(b[0].support_x))
    c = next(fixed_episodes(IDS, seed=8, num_episodes=10, ways=5, shots=1, queries=2, batch=10))
    assert not np.array_equal(np.asarray(c.support_x), np.asarray(b[0].support_x))
    assert eval_keys(7, 3).shape == (3,)
