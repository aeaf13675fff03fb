"""Text distillation (smallsample.distill.text) and the saved text classifier
(smallsample.text.classifier), on a tiny random BERT with MiniLM's real tokenizer (fast), plus
the real MiniLM / MPNet checkpoints where a test needs their weights or tokenizers."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smallsample.distill import text as dt
from smallsample.models import bert, pretrained
from smallsample.text import load_sentence_encoder
from smallsample.text.classifier import (
    TextClassifier,
    classify,
    load_classifier,
    predict_logits,
    save_classifier,
    truncate_encoder,
)

TEXTS = ["what is my balance", "show my account balance please", "how much money do I have",
         "book a flight to paris", "I need a plane ticket to rome", "flights to berlin tomorrow",
         "play some jazz music", "put on my workout playlist", "next song please"]
LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2], np.int32)
NAMES = ("balance", "flight", "music")


@pytest.fixture(scope="module")
def minilm():
    return load_sentence_encoder()


@pytest.fixture(scope="module")
def tiny(minilm):
    """A 2-layer, 16-wide random BERT with MiniLM's tokenizer (a few seconds to train)."""
    config = bert.BertConfig(vocab_size=minilm.config.vocab_size, hidden_size=16,
                             num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    ids = jnp.zeros((1, 4), jnp.int32)
    params = bert.BertEncoder(config).init(jax.random.key(0), ids, ids + 1)["params"]
    return minilm._replace(config=config, params=params)


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("alpha,temperature", [(0.0, 1.0), (0.5, 2.0), (1.0, 4.0), (0.3, 0.5)])
def test_batch_loss_matches_numpy(alpha, temperature):
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(6, 4)) * 3, rng.normal(size=(6, 4)) * 3
    y = np.array([0, -1, 3, 2, -1, 1])
    w = np.array([1, 1, 1, 1, 1, 0.0])
    got = dt.batch_loss(jnp.asarray(s, jnp.float32), jnp.asarray(y), jnp.asarray(t, jnp.float32),
                        jnp.asarray(w, jnp.float32), alpha=alpha, temperature=temperature)
    ls = _np_log_softmax(s)
    ce = np.where(y >= 0, -ls[np.arange(6), np.maximum(y, 0)], 0.0)
    lp, lq = _np_log_softmax(t / temperature), _np_log_softmax(s / temperature)
    kl = temperature ** 2 * (np.exp(lp) * (lp - lq)).sum(-1)
    want = (((1 - alpha) * ce + alpha * kl) * w).sum() / w.sum()
    np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-6)
    # no teacher: the cross-entropy alone
    got = dt.batch_loss(jnp.asarray(s, jnp.float32), jnp.asarray(y), None,
                        jnp.asarray(w, jnp.float32), alpha=alpha, temperature=temperature)
    np.testing.assert_allclose(float(got), ((1 - alpha) * ce * w).sum() / w.sum(), rtol=1e-5)


def test_batch_loss_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    s = rng.normal(size=(3, 4))
    t = rng.normal(size=(3, 4))
    y = np.array([1, -1, 2])
    w = np.ones(3)

    def f(x):
        return dt.batch_loss(x, jnp.asarray(y), jnp.asarray(t, jnp.float32), jnp.asarray(
            w, jnp.float32), alpha=0.7, temperature=2.0)

    g = np.asarray(jax.grad(f)(jnp.asarray(s, jnp.float32)), np.float64)
    eps = 1e-2
    for i, j in [(0, 0), (1, 2), (2, 3)]:
        d = np.zeros_like(s)
        d[i, j] = eps
        fd = (float(f(jnp.asarray(s + d, jnp.float32))) -
              float(f(jnp.asarray(s - d, jnp.float32)))) / (2 * eps)
        assert abs(g[i, j] - fd) < 2e-3, (i, j, g[i, j], fd)


def test_prototype_head_is_nearest_prototype(tiny):
    from smallsample.text import encode

    head = dt.prototype_head(tiny, TEXTS, LABELS, num_classes=3)
    z = encode(TEXTS, encoder=tiny, progress=False).astype(np.float64)
    c = np.stack([z[LABELS == k].mean(0) for k in range(3)])
    logits = z @ np.asarray(head["kernel"], np.float64) + np.asarray(head["bias"], np.float64)
    want = -((z[:, None] - c[None]) ** 2).sum(-1) + (z ** 2).sum(-1, keepdims=True)
    np.testing.assert_allclose(logits, want, atol=1e-5)


def assert_params_intact(encoder, before):
    """The caller's encoder is untouched by training (its steps update donated copies)."""
    after = jax.tree.leaves(encoder.params)
    assert not any(a.is_deleted() for a in after)
    for a, b in zip(after, before, strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)


def test_finetune_lowers_the_loss_and_fits_the_labels(tiny):
    before = [np.array(a) for a in jax.tree.leaves(tiny.params)]
    clf = dt.finetune_classifier(jax.random.key(0), tiny, TEXTS, LABELS, label_names=NAMES,
                                 epochs=30, batch_size=4, learning_rate=3e-3,
                                 head_learning_rate=3e-2, scale=10.0)
    assert_params_intact(tiny, before)
    assert clf.labels == NAMES and clf.encoder.config == tiny.config
    assert dt.accuracy(clf, TEXTS, LABELS) == 1.0
    before = TextClassifier(tiny, dt.prototype_head(tiny, TEXTS, LABELS, num_classes=3), NAMES,
                            10.0)
    ce = [float(dt.batch_loss(jnp.asarray(predict_logits(c, TEXTS)), jnp.asarray(LABELS), None,
                              jnp.ones(9), alpha=0.0, temperature=1.0)) for c in (before, clf)]
    assert ce[1] < 0.5 * ce[0]


def test_student_equal_to_teacher_has_no_kd_gradient(tiny):
    """With alpha = 1 a student that gives the teacher's logits has a zero gradient through the
    whole encoder (KL is minimal there); with labels and alpha < 1 it does not."""
    from smallsample.text.classifier import logits_fn
    from smallsample.text.tokenize import pad_ids

    head = dt.prototype_head(tiny, TEXTS, LABELS, num_classes=3)
    batch = pad_ids([e.ids for e in tiny.tokenizer.encode_batch(TEXTS)], buckets=tiny.buckets)
    f = logits_fn(tiny)
    t = f(tiny.params, head, 20.0, batch.input_ids, batch.attention_mask)

    def loss(p, alpha, y):
        s = f(p["encoder"], p["head"], 20.0, batch.input_ids, batch.attention_mask)
        return dt.batch_loss(s, y, t, jnp.ones(9), alpha=alpha, temperature=2.0)

    p = {"encoder": tiny.params, "head": head}
    g = jax.grad(loss)(p, 1.0, jnp.asarray(LABELS))
    assert max(float(jnp.abs(x).max()) for x in jax.tree_util.tree_leaves(g)) < 1e-5
    g = jax.grad(loss)(p, 0.5, jnp.asarray(LABELS))
    assert max(float(jnp.abs(x).max()) for x in jax.tree_util.tree_leaves(g)) > 1e-3


def test_distillation_moves_the_student_towards_the_teacher(tiny):
    teacher = dt.finetune_classifier(jax.random.key(0), tiny, TEXTS, LABELS, label_names=NAMES,
                                     epochs=30, batch_size=4, learning_rate=3e-3,
                                     head_learning_rate=3e-2, scale=10.0)
    unl = ["is there money in my account", "a ticket to madrid", "play the radio",
           "balance of savings", "cheap flights", "turn the music up", "what do I owe"]
    logits = dt.teacher_logits(teacher, TEXTS + unl)
    small = truncate_encoder(tiny, 1)
    student = dt.distill_classifier(jax.random.key(1), small, TEXTS, LABELS, unl, logits,
                                    label_names=NAMES, alpha=1.0, temperature=1.0, epochs=30,
                                    batch_size=8, learning_rate=3e-3, head_learning_rate=3e-2,
                                    scale=10.0)
    start = TextClassifier(small, dt.prototype_head(small, TEXTS, LABELS, num_classes=3), NAMES,
                           10.0)

    def kd(c):
        return float(dt.batch_loss(jnp.asarray(predict_logits(c, TEXTS + unl)),
                                   -jnp.ones(16, jnp.int32), jnp.asarray(logits), jnp.ones(16),
                                   alpha=1.0, temperature=1.0))

    assert kd(student) < 0.5 * kd(start)
    # a short last batch (16 texts, batch 5) is padded with weight-0 copies: no NaN
    student = dt.distill_classifier(jax.random.key(1), small, TEXTS, LABELS, unl, logits,
                                    label_names=NAMES, epochs=1, batch_size=5)
    assert np.all(np.isfinite(predict_logits(student, TEXTS)))


def test_gradient_accumulation_matches_the_large_batch(tiny):
    """accumulate=2 with batches of 2 takes the same optimizer steps as batches of 4 when each
    pair of batches holds the same rows (checked on the CE-only loss, equal-size batches)."""
    texts, labels = TEXTS[:8], LABELS[:8]
    labels = np.array([0, 0, 0, 1, 1, 1, 0, 1], np.int32)
    kw = dict(label_names=NAMES[:2], epochs=1, learning_rate=1e-3, head_learning_rate=1e-2,
              weight_decay=0.0, warmup=0.0)
    key = jax.random.key(5)
    order4 = dt._batch_order(key, 8, np.zeros(8), batch_size=4, epochs=1)
    order2 = dt._batch_order(key, 8, np.zeros(8), batch_size=2, epochs=1)
    assert len(order4) == 2 and len(order2) == 4
    a = dt.finetune_classifier(key, tiny, texts, labels, batch_size=8, **kw)
    b = dt.finetune_classifier(key, tiny, texts, labels, batch_size=4, accumulate=2, **kw)
    for name in ("kernel", "bias"):
        np.testing.assert_allclose(np.asarray(a.head[name]), np.asarray(b.head[name]),
                                   rtol=1e-4, atol=1e-6)
    # Adam's first step is about lr * sign(g): an encoder weight whose gradient is float noise
    # around 0 can move either way in the two runs; all others agree
    x = np.concatenate([np.ravel(v) for v in jax.tree_util.tree_leaves(a.encoder.params)])
    y = np.concatenate([np.ravel(v) for v in jax.tree_util.tree_leaves(b.encoder.params)])
    start = np.concatenate([np.ravel(v) for v in jax.tree_util.tree_leaves(tiny.params)])
    moved = np.abs(x - start) > 1e-4
    assert moved.sum() > 1000
    assert np.mean(np.abs(x - y)[moved] > 1e-5) < 0.01


def test_teacher_logits_cache(tiny, tmp_path):
    head = dt.prototype_head(tiny, TEXTS, LABELS, num_classes=3)
    clf = TextClassifier(tiny, head, NAMES, 5.0)
    a = dt.teacher_logits(clf, TEXTS, cache_dir=tmp_path)
    files = list(tmp_path.glob("logits-*.npy"))
    assert len(files) == 1
    np.testing.assert_array_equal(np.load(files[0]), a)
    # the cache is what is returned: plant different numbers of the same shape
    np.save(files[0], np.full_like(a, 7.0))
    assert np.all(dt.teacher_logits(clf, TEXTS, cache_dir=tmp_path) == 7.0)
    # other weights or other texts: another entry
    other = clf._replace(head={"kernel": head["kernel"] * 2, "bias": head["bias"]})
    dt.teacher_logits(other, TEXTS, cache_dir=tmp_path)
    dt.teacher_logits(clf, TEXTS[:4], cache_dir=tmp_path)
    assert len(list(tmp_path.glob("logits-*.npy"))) == 3
    # a damaged entry is recomputed, never trusted
    files[0].write_bytes(b"\x93NUMPY garbage")
    with pytest.warns(RuntimeWarning):
        np.testing.assert_allclose(dt.teacher_logits(clf, TEXTS, cache_dir=tmp_path), a)


def test_bad_arguments_are_named(tiny):
    with pytest.raises(ValueError, match="labels must be 9 integers"):
        dt.finetune_classifier(jax.random.key(0), tiny, TEXTS, LABELS[:5], label_names=NAMES)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        dt.finetune_classifier(jax.random.key(0), tiny, TEXTS, LABELS, label_names=NAMES[:2])
    with pytest.raises(ValueError, match="at least 2 classes"):
        dt.finetune_classifier(jax.random.key(0), tiny, TEXTS[:3], LABELS[:3],
                               label_names=NAMES[:1])
    with pytest.raises(ValueError, match="teacher_logits must be \\[10, 3\\]"):
        dt.distill_classifier(jax.random.key(0), tiny, TEXTS, LABELS, ["x"], np.zeros((9, 3)),
                              label_names=NAMES)
    with pytest.raises(ValueError, match="need teacher_logits"):
        dt.distill_classifier(jax.random.key(0), tiny, TEXTS, LABELS, ["x"], None,
                              label_names=NAMES)
    with pytest.raises(ValueError, match="non-finite"):
        dt.distill_classifier(jax.random.key(0), tiny, TEXTS, LABELS, [],
                              np.full((9, 3), np.nan), label_names=NAMES)
    with pytest.raises(ValueError, match="alpha"):
        dt.distill_classifier(jax.random.key(0), tiny, TEXTS, LABELS, [], np.zeros((9, 3)),
                              label_names=NAMES, alpha=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        dt.finetune_classifier(jax.random.key(0), tiny, TEXTS, LABELS, label_names=NAMES,
                               batch_size=0)


def test_different_tokenizers_are_refused(minilm):
    mpnet = load_sentence_encoder("all-mpnet-base-v2")
    with pytest.raises(ValueError, match="different tokenizers") as e:
        dt.check_same_tokenizer(mpnet, minilm, where="student from teacher layers")
    assert str(mpnet.path) in str(e.value) and str(minilm.path) in str(e.value)
    dt.check_same_tokenizer(minilm, truncate_encoder(minilm, 3), where="x")


def test_truncate_encoder(minilm):
    same = truncate_encoder(minilm, minilm.config.num_hidden_layers)
    ids = jnp.asarray([[101, 2054, 2003, 102]])
    full = pretrained.sentence_embedding(minilm.params, ids, ids > 0, config=minilm.config)
    np.testing.assert_array_equal(
        np.asarray(pretrained.sentence_embedding(same.params, ids, ids > 0, config=same.config)),
        np.asarray(full))
    every_other = truncate_encoder(minilm, (0, 2, 4))
    assert every_other.config.num_hidden_layers == 3
    assert every_other.params["layer_1"] is minilm.params["layer_2"]
    assert dataclasses.replace(every_other.config, num_hidden_layers=6) == minilm.config
    for bad in (0, 7, (1, 1), (6,), ()):
        with pytest.raises(ValueError, match="layers"):
            truncate_encoder(minilm, bad)


def test_classifier_folder_round_trip(tiny, tmp_path):
    head = dt.prototype_head(tiny, TEXTS, LABELS, num_classes=3)
    clf = TextClassifier(tiny, head, NAMES, 10.0, threshold=0.5)
    folder = save_classifier(clf, tmp_path / "clf", info={"teacher": "x"})
    back = load_classifier(folder)
    assert back.labels == NAMES and back.threshold == 0.5 and back.scale == 10.0
    np.testing.assert_array_equal(predict_logits(back, TEXTS), predict_logits(clf, TEXTS))
    meta = json.loads((folder / "classifier.json").read_text())
    assert meta["info"] == {"teacher": "x"} and set(meta["sha256"]) == {
        "encoder.safetensors", "head.safetensors", "tokenizer.json"}
    # classify: threshold 1 flags everything, 0 nothing; probabilities sum to one
    p = classify(back, TEXTS, threshold=1.0)
    assert p.out_of_scope.all() and p.labels == [None] * 9
    p = classify(back, TEXTS, threshold=0.0)
    assert not p.out_of_scope.any() and set(p.labels) <= set(NAMES)
    np.testing.assert_allclose(p.probabilities.sum(-1), 1.0, atol=1e-6)
    with pytest.raises(FileExistsError):
        save_classifier(clf, folder)
    save_classifier(clf._replace(threshold=None), folder, overwrite=True)
    assert load_classifier(folder).threshold is None
    # a changed file is refused, naming it
    blob = bytearray((folder / "head.safetensors").read_bytes())
    blob[-1] ^= 1
    (folder / "head.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="head.safetensors: sha256"):
        load_classifier(folder)
    with pytest.raises(FileNotFoundError, match="not a classifier folder"):
        load_classifier(tmp_path)


def test_non_finite_classifier_is_not_written(tiny, tmp_path):
    head = {"kernel": jnp.full((16, 3), jnp.nan), "bias": jnp.zeros(3)}
    with pytest.raises(FloatingPointError, match="kernel"):
        save_classifier(TextClassifier(tiny, head, NAMES), tmp_path / "bad")
    assert not (tmp_path / "bad").exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="threshold"):
        save_classifier(TextClassifier(tiny, {"kernel": jnp.zeros((16, 3)),
                                              "bias": jnp.zeros(3)}, NAMES, threshold=2.0),
                        tmp_path / "bad")


def test_pair_cosine_loss_matches_numpy():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(7, 5))
    y = np.array([0, 0, 1, 1, 2, 2, 0])
    w = np.array([1, 1, 1, 1, 1, 1, 0.0])
    got = float(dt.pair_cosine_loss(jnp.asarray(z, jnp.float32), jnp.asarray(y),
                                    jnp.asarray(w, jnp.float32)))
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    pos, neg = [], []
    for i in range(7):
        for j in range(i + 1, 7):
            if w[i] and w[j]:
                c = zn[i] @ zn[j]
                (pos if y[i] == y[j] else neg).append((c - (y[i] == y[j])) ** 2)
    np.testing.assert_allclose(got, 0.5 * (np.mean(pos) + np.mean(neg)), rtol=1e-5)


def test_pair_batches_hold_two_of_each_class():
    y = np.array([0] * 5 + [1] * 4 + [2] * 3 + [3] * 2)
    batches = dt._pair_batches(jax.random.key(0), y, batch_size=4, epochs=2)
    seen = set()
    for b in batches:
        assert len(b) in (2, 4)
        for i in range(0, len(b), 2):
            assert y[b[i]] == y[b[i + 1]] and b[i] != b[i + 1]
        seen |= set(b.tolist())
    assert seen == set(range(len(y)))


def test_fit_head_reaches_the_logistic_regression_optimum():
    from scipy.optimize import minimize

    rng = np.random.default_rng(3)
    z = rng.normal(size=(30, 4))
    y = rng.integers(0, 3, 30)
    head = dt.fit_head(z, y, num_classes=3, scale=2.0, steps=2000, learning_rate=3e-2)

    def nll(flat):
        w, b = flat[:12].reshape(4, 3), flat[12:]
        s = 2.0 * (z @ w + b)
        return -np.mean(_np_log_softmax(s)[np.arange(30), y])

    best = minimize(nll, np.zeros(15), method="BFGS").fun
    ours = nll(np.concatenate([np.ravel(head["kernel"]), np.ravel(head["bias"])]).astype(float))
    assert ours < best + 1e-3, (ours, best)


def test_contrastive_finetune_fits_the_labels(tiny):
    before = [np.array(a) for a in jax.tree.leaves(tiny.params)]
    clf = dt.contrastive_finetune_classifier(jax.random.key(0), tiny, TEXTS, LABELS,
                                             label_names=NAMES, epochs=40, batch_size=6,
                                             learning_rate=3e-3, scale=10.0)
    assert_params_intact(tiny, before)
    assert dt.accuracy(clf, TEXTS, LABELS) == 1.0
    from smallsample.text import encode

    z0 = encode(TEXTS, encoder=tiny, progress=False)
    z1 = encode(TEXTS, encoder=clf.encoder, progress=False)
    w = jnp.ones(9)
    assert float(dt.pair_cosine_loss(jnp.asarray(z1), jnp.asarray(LABELS), w)) < 0.5 * float(
        dt.pair_cosine_loss(jnp.asarray(z0), jnp.asarray(LABELS), w))
    with pytest.raises(ValueError, match="2 texts per class"):
        dt.contrastive_finetune_classifier(jax.random.key(0), tiny, TEXTS[:7], LABELS[:7],
                                           label_names=NAMES)
