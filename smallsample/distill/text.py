"""Text distillation: a large sentence encoder fine-tuned on a few labels teaches a small one.

The recipe (Hinton et al. 2015, applied as in task-specific distillation such as DistilBERT's
and TinyBERT's second stage):

1. :func:`finetune_classifier`: the teacher (e.g. all-mpnet-base-v2) and a linear head are
   fine-tuned together on the K labelled texts per class with cross-entropy. The head starts as
   the class prototypes of the pretrained embeddings (``W = 2 c_k``, ``b = -|c_k|^2``: step 0
   predicts as the nearest prototype), so a short run cannot do worse than its start by much.
2. :func:`teacher_logits`: the teacher's logits on the labelled texts and on unlabelled ones
   (the rest of a training set with its labels removed, or a practitioner's file), cached on disk
   keyed by the classifier's weights and the texts.
3. :func:`distill_classifier`: the student (e.g. all-MiniLM-L6-v2, or some of its layers:
   :func:`~smallsample.text.classifier.truncate_encoder`) and its own head are trained on
   ``alpha * T^2 KL(teacher || student) + (1 - alpha) * CE`` (:func:`~smallsample.distill.kd_loss`;
   the cross-entropy only on the labelled rows) over labelled and unlabelled texts together.

Training is mini-batched (``batch_size`` rows, gradients accumulated over ``accumulate``
batches with ``optax.MultiSteps``), so memory grows with the batch, not with the data set.
Batches are drawn in length-sorted groups (shuffled within a key-driven order, then sorted in
windows of 50 batches) and padded to the encoder's bucket lengths, so a jitted step compiles once
per bucket and little compute goes to padding. AdamW with a linear warm-up (10% of the steps) and
linear decay; the head has its own (larger) learning rate.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from smallsample.distill.logits import kd_loss
from smallsample.models import pretrained
from smallsample.text.classifier import TextClassifier, head_logits, predict_logits
from smallsample.text.encode import SentenceEncoder, read_cache, save_atomic, texts_sha256
from smallsample.text.tokenize import check_texts, pad_ids


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_float(name: str, value, *, low: float = 0.0, high: float = math.inf,
                 low_open: bool = True) -> float:
    ok = (not isinstance(value, bool) and isinstance(value, (int, float, np.floating))
          and math.isfinite(value) and (value > low if low_open else value >= low)
          and value <= high)
    if not ok:
        raise ValueError(f"{name} must be a finite number in {'(' if low_open else '['}{low}, "
                         f"{high}], got {value!r}")
    return float(value)


def _labels(labels, n: int, num_classes: int, where: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,) or (n and not np.issubdtype(y.dtype, np.integer)):
        raise ValueError(f"{where}: labels must be {n} integers (one per text), got "
                         f"{y.dtype} {y.shape}")
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{where}: labels must be in [0, {num_classes}), got [{y.min()}, "
                         f"{y.max()}]")
    return y.astype(np.int32)


def _check_options(epochs, batch_size, accumulate, *, learning_rate, head_learning_rate,
                   scale, weight_decay, warmup) -> tuple[int, int, int]:
    """The training options every recipe shares, checked; returns the three ints."""
    for name, v in (("learning_rate", learning_rate), ("head_learning_rate", head_learning_rate),
                    ("scale", scale)):
        _check_float(name, v)
    _check_float("weight_decay", weight_decay, low_open=False)
    _check_float("warmup", warmup, high=1.0, low_open=False)
    return (_check_int("epochs", epochs, 0), _check_int("batch_size", batch_size, 1),
            _check_int("accumulate", accumulate, 1))


def check_same_tokenizer(a: SentenceEncoder, b: SentenceEncoder, *, where: str) -> None:
    """``ValueError`` naming both models unless ``a`` and ``b`` tokenise identically (same
    vocabulary, special tokens and normalisation), as token-level distillation and initialising
    one model from the other's layers need."""
    if a.tokenizer.to_str() != b.tokenizer.to_str() or a.config.pad_token_id != \
            b.config.pad_token_id:
        raise ValueError(f"{where}: {a.path} and {b.path} use different tokenizers "
                         f"(vocabularies of {a.tokenizer.get_vocab_size()} and "
                         f"{b.tokenizer.get_vocab_size()} tokens); token-level distillation and "
                         "layer initialisation need the same one")


def prototype_head(encoder: SentenceEncoder, texts: Sequence[str], labels: np.ndarray, *,
                   num_classes: int, batch_size: int = 64) -> dict[str, jax.Array]:
    """The nearest-prototype head of the encoder's embeddings: ``kernel = 2 c_k`` ``[dim, C]``,
    ``bias = -|c_k|^2`` ``[C]`` (``z @ kernel + bias = -|z - c_k|^2 + |z|^2``)."""
    from smallsample.text.encode import encode

    z = encode(list(texts), encoder=encoder, batch_size=batch_size, progress=False)
    c = np.zeros((num_classes, z.shape[1]), np.float64)
    np.add.at(c, labels, z)
    counts = np.bincount(labels, minlength=num_classes)[:, None]
    if np.any(counts == 0):
        raise ValueError(f"classes without a labelled text: {np.flatnonzero(counts[:, 0] == 0)}")
    c = c / counts
    return {"kernel": jnp.asarray(2.0 * c.T, jnp.float32),
            "bias": jnp.asarray(-np.sum(c * c, -1), jnp.float32)}


def _optimizer(steps: int, *, learning_rate: float, head_learning_rate: float,
               weight_decay: float, warmup: float, accumulate: int):
    def schedule(peak):
        w = int(round(warmup * steps))
        decay = optax.linear_schedule(peak, 0.0, max(1, steps - w))
        if w == 0:
            return decay
        return optax.join_schedules([optax.linear_schedule(0.0, peak, w), decay], [w])

    opt = optax.multi_transform(
        {"encoder": optax.adamw(schedule(learning_rate), weight_decay=weight_decay),
         "head": optax.adamw(schedule(head_learning_rate), weight_decay=0.0)},
        {"encoder": "encoder", "head": "head"})
    return optax.MultiSteps(opt, every_k_schedule=accumulate) if accumulate > 1 else opt


def _batch_order(key: jax.Array, n: int, lengths: np.ndarray, *, batch_size: int,
                 epochs: int, window: int = 50) -> list[np.ndarray]:
    """Rows of each batch, ``epochs`` passes: a key-driven permutation per pass, sorted by length
    within windows of ``window`` batches, the batches of a pass shuffled."""
    out = []
    for e in range(epochs):
        k_perm, k_batches = jax.random.split(jax.random.fold_in(key, e))
        perm = np.asarray(jax.random.permutation(k_perm, n))
        span = window * batch_size
        groups = []
        for s in range(0, n, span):
            chunk = perm[s:s + span]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            groups += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
        order = np.asarray(jax.random.permutation(k_batches, len(groups)))
        out += [groups[i] for i in order]
    return out


def batch_loss(student_logits: jax.Array, labels: jax.Array, teacher_logits: jax.Array | None,
               weight: jax.Array, *, alpha: float, temperature: float) -> jax.Array:
    """The training loss of a batch: the ``weight``-weighted mean over rows of
    ``(1 - alpha) * CE(student, label)`` (rows with ``label >= 0``; 0 for unlabelled rows) plus
    ``alpha * T^2 KL(softmax(t / T) || softmax(s / T))`` (every row, when ``teacher_logits`` is
    given). Each row weighs the same whether it has a label or not; padding rows have weight 0.

    Shapes: logits ``[n, C]``, labels ``[n]`` int (``-1``: none), weight ``[n]``.
    """
    ce = optax.softmax_cross_entropy_with_integer_labels(student_logits, jnp.maximum(labels, 0))
    per_row = (1.0 - alpha) * jnp.where(labels >= 0, ce, 0.0)
    if teacher_logits is not None:
        per_row = per_row + alpha * kd_loss(student_logits, teacher_logits,
                                            temperature=temperature)
    return jnp.sum(per_row * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def _train(key: jax.Array, encoder: SentenceEncoder, head: Any, scale: float,
           texts: list[str], labels: np.ndarray, targets: np.ndarray | None, *,
           alpha: float, temperature: float, epochs: int, batch_size: int, learning_rate: float,
           head_learning_rate: float, weight_decay: float, warmup: float, accumulate: int,
           progress: bool, desc: str) -> tuple[Any, Any, dict]:
    """Mini-batch training of encoder and head on ``(1 - alpha) CE`` (rows with a label >= 0)
    plus ``alpha * kd_loss`` (rows of ``targets``); returns (encoder params, head, stats)."""
    ids = [e.ids for e in encoder.tokenizer.encode_batch(texts)]
    lengths = np.asarray([len(i) for i in ids])
    order = _batch_order(key, len(texts), lengths, batch_size=batch_size, epochs=epochs)
    steps = len(order)
    opt = _optimizer(max(1, steps // accumulate), learning_rate=learning_rate,
                     head_learning_rate=head_learning_rate, weight_decay=weight_decay,
                     warmup=warmup, accumulate=accumulate)
    # copies, donated to each step below (the caller's encoder keeps its own arrays): a step
    # then updates parameters and Adam state in place instead of holding old and new at once
    params = jax.tree.map(jnp.array, {"encoder": encoder.params, "head": head})
    opt_state = opt.init(params)
    config, pooling, normalize = encoder.config, encoder.pooling, encoder.normalize

    def loss_fn(p, input_ids, mask, y, t, weight):
        z = pretrained.sentence_embedding(p["encoder"], input_ids, mask, config=config,
                                          pooling=pooling, normalize=normalize)
        s = head_logits(p["head"], z, scale=scale)
        return batch_loss(s, y, t, weight, alpha=alpha, temperature=temperature)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(p, state, input_ids, mask, y, t, weight):
        loss, grads = jax.value_and_grad(loss_fn)(p, input_ids, mask, y, t, weight)
        updates, state = opt.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss

    from tqdm.auto import tqdm

    losses = []
    pad = encoder.config.pad_token_id
    for rows in tqdm(order, desc=desc, unit="batch", disable=not progress):
        n = len(rows)
        # a short last batch is filled with copies of its first row at weight 0 (an all-padding
        # row would put 0/0 in the gradient of the embedding's norm)
        full = np.concatenate([rows, np.full(batch_size - n, rows[0])])
        batch = pad_ids([ids[r] for r in full], buckets=encoder.buckets, pad_id=pad)
        y = labels[full]
        weight = (np.arange(batch_size) < n).astype(np.float32)
        t = None if targets is None else targets[full]
        params, opt_state, loss = step(params, opt_state, batch.input_ids, batch.attention_mask,
                                       y, t, weight)
        losses.append(loss)
    losses = np.asarray(jax.device_get(losses), np.float64)
    if losses.size and not np.all(np.isfinite(losses)):
        bad = int(np.flatnonzero(~np.isfinite(losses))[0])
        raise FloatingPointError(f"{desc}: the loss became {losses[bad]} at batch {bad} of "
                                 f"{steps}; lower the learning rate")
    stats = {"batches": steps, "optimizer_steps": steps // accumulate,
             "first_loss": float(losses[:10].mean()) if losses.size else None,
             "last_loss": float(losses[-10:].mean()) if losses.size else None}
    return params["encoder"], params["head"], stats


def finetune_classifier(key: jax.Array, encoder: SentenceEncoder, texts: Sequence[str],
                        labels: Sequence[int] | np.ndarray, *, label_names: Sequence[str],
                        epochs: int = 4, batch_size: int = 16, learning_rate: float = 2e-5,
                        head_learning_rate: float = 1e-3, scale: float = 20.0,
                        weight_decay: float = 0.01, warmup: float = 0.1, accumulate: int = 1,
                        progress: bool = False) -> TextClassifier:
    """The encoder and a linear head fine-tuned on labelled texts with cross-entropy.

    Args:
      key: shuffles the batches.
      encoder: the pretrained encoder (its parameters are the starting point).
      texts, labels: ``n`` texts and their int labels in ``[0, len(label_names))``; every class
        needs at least one text (the head starts as the class prototypes).
      label_names: the class names.
      epochs, batch_size, accumulate: passes over the texts, rows per batch, batches per
        optimizer step.
      learning_rate, head_learning_rate: peak AdamW rates of encoder and head.
      scale: the logit scale of the head (prototype logits of unit-norm embeddings span a few
        units; ``scale`` makes the softmax confident enough to train).
      weight_decay: AdamW's decoupled decay of the encoder.
      warmup: fraction of the optimizer steps spent warming the rates up linearly.

    Returns:
      A :class:`~smallsample.text.classifier.TextClassifier` with the fine-tuned encoder.
    """
    texts = check_texts(texts)
    label_names = tuple(str(x) for x in label_names)
    if len(label_names) < 2:
        raise ValueError(f"need at least 2 classes, got {list(label_names)}")
    y = _labels(labels, len(texts), len(label_names), "finetune_classifier")
    epochs, batch_size, accumulate = _check_options(
        epochs, batch_size, accumulate, learning_rate=learning_rate,
        head_learning_rate=head_learning_rate, scale=scale, weight_decay=weight_decay,
        warmup=warmup)
    head = prototype_head(encoder, texts, y, num_classes=len(label_names))
    params, head, _ = _train(key, encoder, head, scale, texts, y, None, alpha=0.0,
                             temperature=1.0, epochs=epochs, batch_size=batch_size,
                             learning_rate=learning_rate, head_learning_rate=head_learning_rate,
                             weight_decay=weight_decay, warmup=warmup, accumulate=accumulate,
                             progress=progress, desc="fine-tune")
    return TextClassifier(encoder._replace(params=params), head, label_names, float(scale))


def pair_cosine_loss(z: jax.Array, labels: jax.Array, weight: jax.Array) -> jax.Array:
    """SetFit's objective on every pair of a batch (Tunstall et al. 2022, sentence-transformers'
    ``CosineSimilarityLoss``): ``(cos(z_i, z_j) - 1[y_i = y_j])^2``, averaged over the positive
    pairs and over the negative pairs separately, then the two averages (SetFit draws as many
    positive as negative pairs). Pairs with a weight-0 row are left out.

    Shapes: ``z [n, dim]``, labels ``[n]`` int, weight ``[n]``.
    """
    zn = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    cos = zn @ zn.T
    n = z.shape[0]
    valid = (weight[:, None] > 0) & (weight[None, :] > 0) & (jnp.arange(n)[:, None]
                                                             < jnp.arange(n)[None, :])
    same = labels[:, None] == labels[None, :]
    pos, neg = valid & same, valid & ~same
    pos_loss = jnp.sum(jnp.where(pos, (cos - 1.0) ** 2, 0.0)) / jnp.maximum(jnp.sum(pos), 1)
    neg_loss = jnp.sum(jnp.where(neg, cos ** 2, 0.0)) / jnp.maximum(jnp.sum(neg), 1)
    return 0.5 * (pos_loss + neg_loss)


def _pair_batches(key: jax.Array, labels: np.ndarray, *, batch_size: int,
                  epochs: int) -> list[np.ndarray]:
    """Batches of ``batch_size // 2`` classes with two texts each (so every batch has positive
    pairs): per pass, each class's texts shuffled and paired (an odd one out is paired with
    another of its class), the pairs shuffled and grouped."""
    out = []
    for e in range(epochs):
        k_class, k_order = jax.random.split(jax.random.fold_in(key, e))
        pairs = []
        for c in np.unique(labels):
            rows = np.flatnonzero(labels == c)
            rows = rows[np.asarray(jax.random.permutation(
                jax.random.fold_in(k_class, int(c)), len(rows)))]
            if len(rows) < 2:
                continue
            if len(rows) % 2:
                rows = np.append(rows, rows[0])
            pairs += [rows[i:i + 2] for i in range(0, len(rows), 2)]
        order = np.asarray(jax.random.permutation(k_order, len(pairs)))
        per = max(1, batch_size // 2)
        for i in range(0, len(order), per):
            out.append(np.concatenate([pairs[j] for j in order[i:i + per]]))
    return out


def fit_head(z: np.ndarray, labels: np.ndarray, *, num_classes: int, scale: float,
             steps: int = 300, learning_rate: float = 1e-2) -> dict[str, jax.Array]:
    """A linear head on fixed embeddings ``z [n, dim]``: started at the class prototypes, then
    ``steps`` full-batch Adam steps on the cross-entropy of ``scale * (z W + b)`` (a multinomial
    logistic regression, as SetFit fits on its tuned embeddings)."""
    z = jnp.asarray(z, jnp.float32)
    y = jnp.asarray(labels, jnp.int32)
    c = jax.ops.segment_sum(z, y, num_classes) / jnp.maximum(
        jnp.bincount(y, length=num_classes), 1)[:, None]
    head = {"kernel": 2.0 * c.T, "bias": -jnp.sum(c * c, -1)}
    opt = optax.adam(learning_rate)

    def loss(h):
        return optax.softmax_cross_entropy_with_integer_labels(
            head_logits(h, z, scale=scale), y).mean()

    def body(carry, _):
        h, st = carry
        u, st = opt.update(jax.grad(loss)(h), st, h)
        return (optax.apply_updates(h, u), st), None

    (head, _), _ = jax.lax.scan(body, (head, opt.init(head)), None, length=steps)
    return head


def contrastive_finetune_classifier(key: jax.Array, encoder: SentenceEncoder,
                                    texts: Sequence[str], labels: Sequence[int] | np.ndarray, *,
                                    label_names: Sequence[str], epochs: int = 4,
                                    batch_size: int = 16, learning_rate: float = 2e-5,
                                    scale: float = 20.0, weight_decay: float = 0.01,
                                    warmup: float = 0.1, accumulate: int = 1,
                                    progress: bool = False) -> TextClassifier:
    """SetFit's recipe in mini-batches: the encoder tuned on pairs of labelled texts
    (:func:`pair_cosine_loss`: same class -> cosine 1, different -> 0; every pair of a batch of
    ``batch_size // 2`` classes x 2 texts), then a head fitted on the tuned embeddings
    (:func:`fit_head`). Arguments as in :func:`finetune_classifier`; classes need 2 texts."""
    texts = check_texts(texts)
    label_names = tuple(str(x) for x in label_names)
    if len(label_names) < 2:
        raise ValueError(f"need at least 2 classes, got {list(label_names)}")
    y = _labels(labels, len(texts), len(label_names), "contrastive_finetune_classifier")
    counts = np.bincount(y, minlength=len(label_names))
    if np.any(counts < 2):
        raise ValueError(f"contrastive fine-tuning needs 2 texts per class; class "
                         f"{label_names[int(np.argmin(counts))]!r} has {int(counts.min())}")
    epochs = _check_int("epochs", epochs, 0)
    batch_size = _check_int("batch_size", batch_size, 2)
    accumulate = _check_int("accumulate", accumulate, 1)
    _check_float("learning_rate", learning_rate)
    _check_float("scale", scale)
    _check_float("weight_decay", weight_decay, low_open=False)
    _check_float("warmup", warmup, high=1.0, low_open=False)
    ids = [e.ids for e in encoder.tokenizer.encode_batch(texts)]
    order = _pair_batches(key, y, batch_size=batch_size, epochs=epochs)
    width = max(len(b) for b in order) if order else 2
    steps = max(1, len(order) // accumulate)
    w = int(round(warmup * steps))
    decay = optax.linear_schedule(learning_rate, 0.0, max(1, steps - w))
    lr = decay if w == 0 else optax.join_schedules(
        [optax.linear_schedule(0.0, learning_rate, w), decay], [w])
    opt = optax.adamw(lr, weight_decay=weight_decay)
    opt = optax.MultiSteps(opt, every_k_schedule=accumulate) if accumulate > 1 else opt
    config, pooling, normalize = encoder.config, encoder.pooling, encoder.normalize

    def loss_fn(p, input_ids, mask, yb, weight):
        z = pretrained.sentence_embedding(p, input_ids, mask, config=config, pooling=pooling,
                                          normalize=normalize)
        return pair_cosine_loss(z, yb, weight)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(p, state, input_ids, mask, yb, weight):
        loss, grads = jax.value_and_grad(loss_fn)(p, input_ids, mask, yb, weight)
        updates, state = opt.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss

    from tqdm.auto import tqdm

    params = jax.tree.map(jnp.array, encoder.params)  # a copy: donated to each step
    state = opt.init(params)
    losses = []
    for rows in tqdm(order, desc="pairs", unit="batch", disable=not progress):
        full = np.concatenate([rows, np.full(width - len(rows), rows[0])])
        batch = pad_ids([ids[r] for r in full], buckets=encoder.buckets,
                        pad_id=config.pad_token_id)
        weight = (np.arange(width) < len(rows)).astype(np.float32)
        params, state, loss = step(params, state, batch.input_ids, batch.attention_mask,
                                   y[full], weight)
        losses.append(loss)
    losses = np.asarray(jax.device_get(losses), np.float64)
    if losses.size and not np.all(np.isfinite(losses)):
        raise FloatingPointError("contrastive fine-tuning: the loss became non-finite; lower "
                                 "the learning rate")
    tuned = encoder._replace(params=params)
    from smallsample.text.encode import encode

    z = encode(texts, encoder=tuned, progress=False)
    head = fit_head(z, y, num_classes=len(label_names), scale=scale)
    return TextClassifier(tuned, head, label_names, float(scale))


def classifier_fingerprint(classifier: TextClassifier) -> str:
    """sha256 over everything that changes a classifier's logits: the encoder's architecture,
    pooling, tokenizer and maximum length, every parameter's bytes, the head and the scale."""
    h = hashlib.sha256()
    enc = classifier.encoder
    h.update(repr((enc.config, enc.pooling, enc.normalize, enc.max_length,
                   classifier.scale, classifier.labels)).encode())
    h.update(enc.tokenizer.to_str().encode())
    for tree in (enc.params, classifier.head):
        leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
        for path, leaf in leaves:
            h.update(jax.tree_util.keystr(path).encode())
            h.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
    return h.hexdigest()


def teacher_logits(classifier: TextClassifier, texts: Sequence[str], *,
                   cache_dir: str | os.PathLike | None = None, batch_size: int = 64,
                   progress: bool = False) -> np.ndarray:
    """The classifier's logits ``[len(texts), num_classes]`` float32; with ``cache_dir``, read
    from (or written atomically to) ``cache_dir/<classifier fingerprint>-<texts sha256>.npy``.
    A damaged cache file is warned about and recomputed, never unpickled."""
    texts = check_texts(texts)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / (f"logits-{classifier_fingerprint(classifier)[:24]}-"
                                  f"{texts_sha256(texts)[:24]}.npy")
        if path.is_file():
            cached = read_cache(path, (len(texts), classifier.num_classes))
            if cached is not None:
                return cached
    out = predict_logits(classifier, texts, batch_size=batch_size, progress=progress)
    if not np.all(np.isfinite(out)):
        raise FloatingPointError("the teacher's logits are not all finite; nothing was cached")
    if path is not None:
        save_atomic(path, out)
    return out


def distill_classifier(key: jax.Array, student: SentenceEncoder, texts: Sequence[str],
                       labels: Sequence[int] | np.ndarray, unlabelled_texts: Sequence[str],
                       teacher_logits: np.ndarray | None, *, label_names: Sequence[str],
                       temperature: float = 2.0, alpha: float = 0.5, epochs: int = 2,
                       batch_size: int = 32, learning_rate: float = 5e-5,
                       head_learning_rate: float = 1e-3, scale: float = 20.0,
                       weight_decay: float = 0.01, warmup: float = 0.1, accumulate: int = 1,
                       progress: bool = False) -> TextClassifier:
    """A student encoder and head trained on a teacher's logits and the labels.

    Loss per text: ``alpha * T^2 KL(softmax(t / T) || softmax(s / T))`` on every text (labelled
    and unlabelled) plus ``(1 - alpha) * CE`` on the labelled ones, averaged over the batch.
    ``teacher_logits=None`` trains the student on the labels alone (``alpha`` is then 0 and
    ``unlabelled_texts`` must be empty): the baseline a distilled student is compared with.

    Args:
      key: shuffles the batches.
      student: the student encoder (pretrained, or layers of one).
      texts, labels: the labelled texts and their int labels.
      unlabelled_texts: texts without labels (may be empty).
      teacher_logits: ``[len(texts) + len(unlabelled_texts), num_classes]``, the labelled rows
        first (from :func:`teacher_logits`).
      label_names: the class names.
      temperature, alpha: the KD temperature ``T > 0`` and weight ``alpha`` in ``[0, 1]``.
      Others: as in :func:`finetune_classifier`.
    """
    texts = check_texts(texts)
    unlabelled_texts = check_texts(unlabelled_texts)
    label_names = tuple(str(x) for x in label_names)
    if len(label_names) < 2:
        raise ValueError(f"need at least 2 classes, got {list(label_names)}")
    y = _labels(labels, len(texts), len(label_names), "distill_classifier")
    _check_float("temperature", temperature)
    _check_float("alpha", alpha, high=1.0, low_open=False)
    n = len(texts) + len(unlabelled_texts)
    if teacher_logits is None:
        if unlabelled_texts:
            raise ValueError("unlabelled texts need teacher_logits (nothing else labels them)")
        alpha = 0.0
    else:
        teacher_logits = np.asarray(teacher_logits, np.float32)
        if teacher_logits.shape != (n, len(label_names)):
            raise ValueError(f"teacher_logits must be [{n}, {len(label_names)}] (labelled texts "
                             f"then unlabelled), got {teacher_logits.shape}")
        if not np.all(np.isfinite(teacher_logits)):
            raise ValueError("teacher_logits has non-finite values")
    epochs, batch_size, accumulate = _check_options(
        epochs, batch_size, accumulate, learning_rate=learning_rate,
        head_learning_rate=head_learning_rate, scale=scale, weight_decay=weight_decay,
        warmup=warmup)
    head = prototype_head(student, texts, y, num_classes=len(label_names))
    all_labels = np.concatenate([y, np.full(len(unlabelled_texts), -1, np.int32)])
    params, head, _ = _train(key, student, head, scale, texts + unlabelled_texts, all_labels,
                             teacher_logits, alpha=alpha, temperature=temperature,
                             epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                             head_learning_rate=head_learning_rate, weight_decay=weight_decay,
                             warmup=warmup, accumulate=accumulate, progress=progress,
                             desc="distil" if teacher_logits is not None else "train")
    return TextClassifier(student._replace(params=params), head, label_names, float(scale))


def accuracy(classifier: TextClassifier, texts: Sequence[str], labels: np.ndarray, *,
             batch_size: int = 64) -> float:
    """Fraction of ``texts`` whose arg-max class is ``labels``."""
    y = _labels(labels, len(texts), classifier.num_classes, "accuracy")
    logits = predict_logits(classifier, texts, batch_size=batch_size)
    return float(np.mean(logits.argmax(-1) == y)) if len(y) else float("nan")


__all__ = [
    "accuracy",
    "batch_loss",
    "check_same_tokenizer",
    "classifier_fingerprint",
    "contrastive_finetune_classifier",
    "distill_classifier",
    "finetune_classifier",
    "fit_head",
    "pair_cosine_loss",
    "prototype_head",
    "teacher_logits",
]
