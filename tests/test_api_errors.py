"""Bad inputs give clear errors, never silently wrong results.

Each case was a silent wrong result before (NaN ranked first, an index past the pool returned, a
NaN loss or a zero image from a bad parameter, a learner of the wrong width scored as if right):
eager calls (concrete values) raise a ``ValueError`` naming the argument and the value or shape;
under ``jit`` (traced values) the documented behaviour holds and is checked here against NumPy
references.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smallsample import select as S
from smallsample.augment import image as A
from smallsample.data.text import k_shot_indices
from smallsample.episodes import fixed_episodes
from smallsample.evaluate import evaluate, make_eval_fn, mean_ci95
from smallsample.text import fewshot

# Test-local compile options: a fraction of the default compile time for these small programs
# on a busy CPU, same numbers (no global config is touched).
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0,
                                                   "xla_llvm_disable_expensive_passes": True})

KEY = jax.random.key(0)
NAN = float("nan")
RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------- select.top_k

def ref_top_k(scores, k, mask=None):
    """float64 reference: NaN and excluded entries below every number (-inf included), in index
    order; ties by index. Returns (indices, valid)."""
    s = np.asarray(scores, np.float64)
    allowed = np.ones(s.shape, bool) if mask is None else np.asarray(mask, bool)
    invalid = np.isnan(s) | ~allowed
    order = np.lexsort((np.arange(s.size), -np.where(invalid, 0.0, s), invalid))[:k]
    return order, ~invalid[order]


def test_top_k_nan_eager_raises_naming_scores():
    with pytest.raises(ValueError, match=r"scores contains NaN at indices \[1\]"):
        S.top_k(jnp.array([1.0, NAN, 3.0]), k=2)
    with pytest.raises(ValueError, match=r"logits contains NaN at flat indices \[1\]"):
        S.uncertainty_select(jnp.array([[0.0, NAN], [1.0, 2.0]]), k=1)  # via the logits
    # a NaN where the mask excludes it does not matter
    sel = S.top_k(jnp.array([1.0, NAN, 3.0]), k=2, mask=jnp.array([True, False, True]))
    np.testing.assert_array_equal(sel.indices, [2, 0])
    assert bool(sel.valid.all())


@pytest.mark.parametrize("masked", [False, True])
def test_top_k_under_jit_ranks_nan_last_and_invalid(masked):
    scores = np.array([1.0, NAN, 3.0, -np.inf, NAN, 3.0, 0.0, -0.0, np.inf], np.float32)
    mask = np.array([1, 1, 1, 1, 1, 0, 1, 1, 1], bool) if masked else None
    k = scores.size
    out = jit(lambda s, m: S.top_k(s, k=k, mask=m))(scores, mask)
    idx, valid = ref_top_k(scores, k, mask)
    np.testing.assert_array_equal(out.indices, idx)
    np.testing.assert_array_equal(out.valid, valid)
    # -inf is a real score: selected (and valid) before any NaN
    assert list(np.asarray(out.indices)).index(3) < list(np.asarray(out.indices)).index(1)
    # vmapped rows agree with one call per row
    rows = np.stack([scores, scores[::-1]])
    batched = jit(jax.vmap(lambda s: S.top_k(s, k=4)))(rows)
    for r in range(2):
        np.testing.assert_array_equal(batched.indices[r], ref_top_k(rows[r], 4)[0])


def test_top_k_eager_equals_jit_without_nan():
    scores = jnp.asarray(RNG.normal(size=20), jnp.float32).at[3].set(-jnp.inf).at[5].set(0.0)
    for mask in (None, jnp.asarray(RNG.uniform(size=20) > 0.3)):
        eager = S.top_k(scores, k=8, mask=mask)
        jitted = jit(lambda s, m: S.top_k(s, k=8, mask=m))(scores, mask)
        np.testing.assert_array_equal(eager.indices, jitted.indices)
        np.testing.assert_array_equal(eager.indices, ref_top_k(scores, 8, mask)[0])
        np.testing.assert_array_equal(eager.valid, jitted.valid)
    ints = jnp.array([3, 7, 7, -2, 0], jnp.int32)
    np.testing.assert_array_equal(S.top_k(ints, k=3).indices, [1, 2, 0])


def test_filter_by_score_nan():
    with pytest.raises(ValueError, match=r"scores contains NaN at indices \[2\]"):
        S.filter_by_score(jnp.array([0.1, 0.9, NAN]), 0.5, size=3)
    with pytest.raises(ValueError, match="threshold is NaN"):
        S.filter_by_score(jnp.array([0.1, 0.9]), NAN, size=2)
    # jit: a NaN score never passes, a NaN threshold lets nothing pass
    run = jit(lambda s, t: S.filter_by_score(s, t, size=3).valid.sum())
    assert int(run(jnp.array([0.1, 0.9, NAN]), 0.0)) == 2
    assert int(run(jnp.array([0.1, 0.9, 0.3]), NAN)) == 0


# ----------------------------------------------------------------------------- coresets

X6 = jnp.asarray(RNG.normal(size=(6, 3)), jnp.float32)


def test_k_center_first_out_of_range():
    with pytest.raises(ValueError, match=r"first=99 is outside the 6 points \(valid: 0 to 5\)"):
        S.k_center_greedy(X6, k=3, first=99)
    with pytest.raises(ValueError, match="first=-1 is outside"):
        S.k_center_greedy(X6, k=3, first=-1)
    with pytest.raises(ValueError, match="first must be an integer index"):
        S.k_center_greedy(X6, k=3, first=2.0)
    # jit: clipped into range, and indices[0] reports the index actually used
    out = jit(lambda f: S.k_center_greedy(X6, k=3, first=f))(99)
    np.testing.assert_array_equal(out.indices, S.k_center_greedy(X6, k=3, first=5).indices)
    np.testing.assert_allclose(out.radii, S.k_center_greedy(X6, k=3, first=5).radii, rtol=1e-6)
    assert int(jit(lambda f: S.k_center_greedy(X6, k=2, first=f).indices[0])(-7)) == 0


def test_k_center_initial_centers_must_be_finite():
    with pytest.raises(ValueError, match="initial_centers must be finite"):
        S.k_center_greedy(X6, k=2, initial_centers=jnp.array([[0.0, NAN, 1.0]]))


def test_kmeans_plus_plus_first_and_mask():
    mask = jnp.array([False, True, True, True, True, True])
    with pytest.raises(ValueError, match="first=6 is outside the 6 points"):
        S.kmeans_plus_plus(KEY, X6, k=2, first=6)
    with pytest.raises(ValueError, match="first=0 is a point that mask excludes"):
        S.kmeans_plus_plus(KEY, X6, k=2, first=0, mask=mask)
    # fewer distinct allowed points than k: the tail repeats ALLOWED points, never index 0
    dup = jnp.concatenate([jnp.zeros((1, 3)), jnp.ones((3, 3)), 2 * jnp.ones((2, 3))])
    for key in jax.random.split(KEY, 5):
        idx = np.asarray(S.kmeans_plus_plus(key, dup, k=5, mask=mask))
        assert np.asarray(mask)[idx].all(), idx
        assert {int(dup[i, 0]) for i in idx[:2]} == {1, 2}  # the two distinct points first


def test_rbf_gamma_and_distance_shapes():
    with pytest.raises(ValueError, match="gamma must be a finite number"):
        S.rbf_similarity(X6, X6, gamma=NAN)
    with pytest.raises(ValueError, match="gamma must be a finite number"):
        S.rbf_similarity(X6, X6, gamma=-1.0)
    with pytest.raises(ValueError, match="differ in d"):
        S.pairwise_squared_distances(X6, jnp.zeros((2, 4)))


# ----------------------------------------------------------------------------- label scores

LOGITS = jnp.asarray(RNG.normal(size=(4, 3)), jnp.float32)
BAD_LABELS = jnp.array([0, 7, 2, -1])


def ref_cross_entropy(logits, labels):
    z = np.asarray(logits, np.float64)
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    return np.array([lse[i] - z[i, y] if 0 <= y < z.shape[1] else np.nan
                     for i, y in enumerate(np.asarray(labels))])


@pytest.mark.parametrize("name", ["loss_scores", "el2n_scores", "grad_norm_scores",
                                  "weighted_cross_entropy"])
def test_out_of_range_labels_eager_raise(name):
    fns = {"loss_scores": lambda y: S.loss_scores(LOGITS, y),
           "el2n_scores": lambda y: S.el2n_scores(LOGITS, y),
           "grad_norm_scores": lambda y: S.grad_norm_scores(LOGITS, y, jnp.ones((4, 2))),
           "weighted_cross_entropy": lambda y: S.weighted_cross_entropy(LOGITS, y, jnp.ones(4))}
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\); got \[ 7 -1\]"):
        fns[name](BAD_LABELS)


def test_out_of_range_labels_under_jit_are_nan():
    loss, el2n, gn = jit(lambda y: (S.loss_scores(LOGITS, y), S.el2n_scores(LOGITS, y),
                                    S.grad_norm_scores(LOGITS, y, jnp.ones((4, 2)))))(BAD_LABELS)
    ref = ref_cross_entropy(LOGITS, BAD_LABELS)
    np.testing.assert_allclose(loss, ref, rtol=1e-6)  # NaN where ref is NaN (-1 is not wrapped)
    for scores in (el2n, gn):
        np.testing.assert_array_equal(np.isnan(scores), [False, True, False, True])
    ok = jnp.array([0, 1, 2, 0])
    np.testing.assert_allclose(S.loss_scores(LOGITS, ok), ref_cross_entropy(LOGITS, ok),
                               rtol=1e-6)


# ----------------------------------------------------------------------------- weights

def test_empty_weights_raise_even_under_jit():
    for fn in (S.effective_sample_size, S.effective_sample_size_from_log,
               lambda w: S.weighted_mean(jnp.zeros((0, 2)), w), S.log_weights_from_scores,
               S.log_normalize):
        with pytest.raises(ValueError, match=r"is empty \(shape \(0,\)\)"):
            fn(jnp.zeros((0,)))
        with pytest.raises(ValueError, match="is empty"):
            jit(fn)(jnp.zeros((0,)))
    assert float(S.weighted_loss(jnp.zeros(0), jnp.zeros(0), normalize=False)) == 0.0


def test_all_zero_weights_eager_raise_and_jit_nan():
    with pytest.raises(ValueError, match="weights are all zero"):
        S.effective_sample_size(jnp.zeros(3))
    assert np.isnan(float(jit(S.effective_sample_size)(jnp.zeros(3))))
    w = np.array([0.5, 2.0, 1.5])
    assert float(S.effective_sample_size(jnp.asarray(w))) == pytest.approx(
        w.sum() ** 2 / (w ** 2).sum(), rel=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(power=NAN), "power must be a finite number in \\(0.0, inf\\)"),
    (dict(power=0.0), "power must be"),
    (dict(mix=1.5), r"mix must be a finite number in \[0.0, 1.0\]"),
    (dict(mix=jnp.float32(NAN)), "mix must be"),
])
def test_log_weights_from_scores_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        S.log_weights_from_scores(jnp.ones(3), **kwargs)


def test_log_weights_from_scores_traced_nan_gives_nan():
    out = jit(lambda p, m: S.log_weights_from_scores(jnp.array([1.0, 2.0]), power=p, mix=m))
    assert np.isnan(np.asarray(out(NAN, 0.1))).all()
    assert np.isnan(np.asarray(out(1.0, 1.5))).all()
    np.testing.assert_allclose(np.exp(out(1.0, 0.0)), [1 / 3, 2 / 3], rtol=1e-6)


# ----------------------------------------------------------------------------- online sampler

def test_online_sampler_options_and_indices():
    with pytest.raises(ValueError, match="power must be"):
        S.online_importance_sampler(4, batch_size=2, power=NAN)
    with pytest.raises(ValueError, match="decay must be"):
        S.online_importance_sampler(4, batch_size=2, decay=jnp.float32(NAN))
    with pytest.raises(ValueError, match="mix must be"):
        S.online_importance_sampler(4, batch_size=2, mix=NAN)
    sampler = S.online_importance_sampler(4, batch_size=2, decay=0.5)
    state = sampler.update(sampler.init(), jnp.array([0, 1, 2, 3]), jnp.array([1.0, 2, 3, 4]))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 4\); got \[ 4 -1\]"):
        sampler.update(state, jnp.array([4, 2, -1]), jnp.array([1.0, 1, 1]))
    # jit: out-of-range indices are ignored, a negative one does not wrap to the end
    new = jit(sampler.update)(state, jnp.array([4, 2, -1]), jnp.array([9.0, 9.0, 9.0]))
    np.testing.assert_allclose(new.scores, [1.0, 2.0, 0.5 * 3 + 0.5 * 9, 4.0])
    assert int(new.count) == 2


# ----------------------------------------------------------------------------- image transforms

IMG = jnp.asarray(RNG.uniform(size=(8, 8, 3)), jnp.float32)

# name -> (function of (key, image, value) with the value in one magnitude, argument name)
RANDOM = {
    "random_rotate": (lambda k, im, v: A.random_rotate(k, im, max_degrees=v), "max_degrees"),
    "random_translate": (lambda k, im, v: A.random_translate(k, im, max_pixels=v), "max_pixels"),
    "random_scale": (lambda k, im, v: A.random_scale(k, im, min_scale=v), "min_scale"),
    "random_shear": (lambda k, im, v: A.random_shear(k, im, max_degrees=v), "max_degrees"),
    "random_affine": (lambda k, im, v: A.random_affine(k, im, max_pixels=v), "max_pixels"),
    "random_resized_crop": (lambda k, im, v: A.random_resized_crop(k, im, min_ratio=v),
                            "min_ratio"),
    "random_brightness": (lambda k, im, v: A.random_brightness(k, im, max_delta=v),
                          "max_delta"),
    "random_contrast": (lambda k, im, v: A.random_contrast(k, im, lower=v), "lower"),
    "random_saturation": (lambda k, im, v: A.random_saturation(k, im, lower=v), "lower"),
    "random_hue": (lambda k, im, v: A.random_hue(k, im, max_delta=v), "max_delta"),
    "random_gaussian_noise": (lambda k, im, v: A.random_gaussian_noise(k, im, std=v), "std"),
    "random_gaussian_blur": (lambda k, im, v: A.random_gaussian_blur(k, im, min_sigma=v),
                             "min_sigma"),
    "random_cutout": (lambda k, im, v: A.random_cutout(k, im, size=v), "size"),
    "random_erasing": (lambda k, im, v: A.random_erasing(k, im, min_area=v, probability=1.0),
                       "min_area"),
    "random_elastic": (lambda k, im, v: A.random_elastic(k, im, alpha=v, sigma=1.0), "alpha"),
    "random_flip_left_right": (lambda k, im, v: A.random_flip_left_right(k, im, probability=v),
                               "probability"),
}


@pytest.mark.parametrize("name", sorted(RANDOM))
@pytest.mark.parametrize("bad", [NAN, float("inf"), np.float32("nan"), "jax-nan"])
def test_random_transform_bad_magnitude_eager_raises(name, bad):
    fn, arg = RANDOM[name]
    bad = jnp.float32(NAN) if bad == "jax-nan" else bad  # a concrete JAX scalar is checked too
    with pytest.raises(ValueError, match=f"{name}: {arg} must be a finite number"):
        fn(KEY, IMG, bad)


def test_random_transform_nan_magnitude_under_jit_gives_nan_image():
    # one jitted program for all transforms; the magnitude is traced, so nothing can raise
    @jit
    def run(v):
        return {name: fn(KEY, IMG, v) for name, (fn, _) in RANDOM.items()}

    for name, out in run(NAN).items():
        assert out.shape == IMG.shape and out.dtype == IMG.dtype, name
        assert np.isnan(np.asarray(out)).all(), name
    # and a traced NaN probability
    out = jit(lambda p: A.random_rotate(KEY, IMG, probability=p))(NAN)
    assert np.isnan(np.asarray(out)).all()


def test_random_rotate_nan_was_a_silent_zero_image():
    # the probe: max_degrees=nan returned an all-zero (all-fill) image without an error
    with pytest.raises(ValueError, match=r"random_rotate: max_degrees must be a finite number in "
                                         r"\[0.0, inf\), got nan"):
        A.random_rotate(KEY, IMG, max_degrees=NAN)
    out = jit(lambda d: A.random_rotate(KEY, IMG, max_degrees=d))(NAN)
    assert np.isnan(np.asarray(out)).all()
    # valid magnitudes: eager == jit
    np.testing.assert_allclose(A.random_rotate(KEY, IMG, max_degrees=30.0),
                               jit(lambda d: A.random_rotate(KEY, IMG, max_degrees=d))(30.0),
                               atol=1e-5)


def test_deterministic_transforms_check_parameters():
    with pytest.raises(ValueError, match="affine: translate must be finite"):
        A.affine(IMG, translate=(NAN, 0.0))
    with pytest.raises(ValueError, match=r"affine: scale must be a finite number in \(0.0"):
        A.affine(IMG, scale=NAN)
    with pytest.raises(ValueError, match="affine: shear must be"):
        A.affine(IMG, shear=90.0)
    with pytest.raises(ValueError, match="rot90: k must be a static int"):
        A.rot90(IMG, 1.5)
    with pytest.raises(ValueError, match="gaussian_blur: sigma must be"):
        A.gaussian_blur(IMG, -1.0, radius=2)
    with pytest.raises(ValueError, match="erase: top must be a finite number"):
        A.erase(IMG, top=NAN, left=0, height=2, width=2)
    with pytest.raises(ValueError, match=r"pad_and_crop: top must be an int in \[0, 4\]"):
        A.pad_and_crop(IMG, padding=2, top=5, left=0)
    with pytest.raises(ValueError, match="resized_crop: height must be"):
        A.resized_crop(IMG, top=0.0, left=0.0, height=0.0, width=4.0)
    with pytest.raises(ValueError, match="elastic: displacement must be finite"):
        A.elastic(IMG, jnp.zeros((8, 8, 2)).at[1, 1, 0].set(NAN))
    with pytest.raises(ValueError, match="random_gaussian_blur: max_sigma must be a finite"):
        A.random_gaussian_blur(KEY, IMG, max_sigma=NAN)
    with pytest.raises(ValueError, match="random_elastic: sigma must be a finite"):
        A.random_elastic(KEY, IMG, sigma=float("inf"))
    # under jit a NaN gives an all-NaN image where it used to give a plausible one
    outs = jit(lambda v: (A.affine(IMG, translate=(v, 0.0)), A.erase(IMG, top=v, left=0,
                                                                      height=2, width=2),
                          A.gaussian_blur(IMG, v, radius=2)))(NAN)
    for out in outs:
        assert np.isnan(np.asarray(out)).all()
    # pad_and_crop under jit clamps the corner into range
    np.testing.assert_array_equal(jit(lambda t: A.pad_and_crop(IMG, padding=2, top=t, left=0))(9),
                                  A.pad_and_crop(IMG, padding=2, top=4, left=0))


def test_gaussian_blur_sigma_zero_is_the_identity():
    np.testing.assert_allclose(A.gaussian_blur(IMG, 0.0, radius=2), IMG, atol=1e-6)
    np.testing.assert_allclose(jit(lambda s: A.gaussian_blur(IMG, s, radius=2))(0.0), IMG,
                               atol=1e-6)


# ----------------------------------------------------------------------------- evaluation

EMB = RNG.normal(size=(5, 12, 8)).astype(np.float32)  # [num_classes, per_class, d]


def test_evaluate_flat_embeddings_name_the_expected_layout_and_the_shape():
    flat = jnp.asarray(EMB.reshape(60, 8))
    with pytest.raises(ValueError, match=r"class-indexed \[num_classes, per_class, \.\.\.\].*"
                                         r"got shape \(60, 8\)"):
        evaluate(fewshot.prototypes(5), {}, flat, ways=5, shots=1)
    with pytest.raises(ValueError, match=r"data of shape \(5, 12, 8\).*1 \+ 15 = 16 is more than "
                                         r"the 12 examples per class"):
        evaluate(fewshot.prototypes(5), {}, jnp.asarray(EMB), ways=5, shots=1)
    with pytest.raises(ValueError, match="num_episodes must be an int >= 1"):
        evaluate(fewshot.prototypes(5), {}, jnp.asarray(EMB), ways=5, shots=1, queries=2,
                 num_episodes=0)


def test_learner_of_the_wrong_width_is_an_error():
    data = jnp.asarray(EMB)
    for learner in (fewshot.prototypes(3), fewshot.ridge(7)):
        params = learner.init(None, None)
        with pytest.raises(ValueError, match=r"gives logits of shape \(10, \d\) for 10 queries, "
                                             r"expected \(10, 5\)"):
            evaluate(learner, params, data, ways=5, shots=1, queries=2, num_episodes=2)
        # also with a compiled eval_fn passed in
        with pytest.raises(ValueError, match=r"expected \(10, 5\)"):
            evaluate(learner, params, data, ways=5, shots=1, queries=2, num_episodes=2,
                     eval_fn=make_eval_fn(learner))
    with pytest.raises(ValueError, match=r"expected \(10, 5\)"):
        episodes = next(iter(fixed_episodes(data, seed=0, num_episodes=1, ways=5, shots=1,
                                            queries=2)))
        make_eval_fn(fewshot.prototypes(3), ways=5)({}, episodes, jax.random.split(KEY, 1))
    # the right width runs
    res = evaluate(fewshot.prototypes(5), {}, data, ways=5, shots=2, queries=3, num_episodes=4)
    assert len(res.accuracies) == 4 and 0.0 <= res.mean <= 1.0


def test_kshot_accuracy_learner_of_the_wrong_width():
    x = EMB.reshape(60, 8)
    y = np.repeat(np.arange(5), 12)
    with pytest.raises(ValueError, match=r"kshot_accuracy: the learner 'prototypes' gives logits "
                                         r"of shape \(60, 3\)"):
        fewshot.kshot_accuracy(KEY, fewshot.prototypes(3), {}, x, y, x, y, num_classes=5,
                               shots=2)
    with pytest.raises(ValueError, match="train_y must be < num_classes=5, got 6"):
        fewshot.kshot_accuracy(KEY, fewshot.prototypes(5), {}, x, np.where(y == 4, 6, y), x, y,
                               num_classes=5, shots=2)
    with pytest.raises(ValueError, match="predict_batch must be an int >= 1"):
        fewshot.kshot_accuracy(KEY, fewshot.prototypes(5), {}, x, y, x, y, num_classes=5,
                               shots=2, predict_batch=0)
    # the right width: equals a NumPy prototype classifier on the same support examples
    acc = fewshot.kshot_accuracy(KEY, fewshot.prototypes(5), {}, x, y, x, y, num_classes=5,
                                 shots=2, predict_batch=7)
    idx = k_shot_indices(jax.random.split(KEY)[0], y, num_classes=5, shots=2)
    protos = x[idx].astype(np.float64).mean(1)
    pred = ((x[:, None, :] - protos[None]) ** 2).sum(-1).argmin(1)
    assert acc == pytest.approx((pred == y).mean())


def test_other_evaluation_inputs():
    with pytest.raises(ValueError, match=r"accuracies must be finite; got \[nan\] at indices"):
        mean_ci95([0.5, NAN])
    with pytest.raises(ValueError, match=r"in_scores contains NaN at indices \[1\]"):
        fewshot.oos_metrics(np.array([0.1, NAN]), np.array([True, True]), np.array([0.0]), 0.5)
    with pytest.raises(ValueError, match="threshold is NaN"):
        fewshot.oos_metrics(np.array([0.1]), np.array([True]), np.array([0.0]), NAN)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        fewshot.prototype_scores(jnp.zeros((3, 2)), jnp.zeros((4, 2)), kind="probability",
                                 temperature=0.0)
    with pytest.raises(ValueError, match="lam must be a finite number > 0, got nan"):
        fewshot.ridge(3, lam=NAN)
    with pytest.raises(ValueError, match="learning_rate must be"):
        fewshot.linear_probe(3, learning_rate=-1.0)
