"""Few-shot text classification on a frozen (or briefly fine-tuned) sentence encoder.

The learners share :class:`~smallsample.learners.base.Learner` with the image learners; on
precomputed sentence embeddings ``[n, d]`` the embedding network is :class:`Identity`:

- :func:`prototypes`: class means, negative squared distance (protonet on an identity body).
- :func:`linear_probe`: a fresh linear (logistic-regression) head trained per episode with Adam on
  the support embeddings (the ``finetune`` learner on an identity body).
- :func:`ridge`: the closed-form ridge head of R2D2 with a fixed penalty.
- :func:`encoder_finetune`: the whole encoder and a head fine-tuned on the support set (inputs are
  token ids ``[n, L]``, not embeddings). The head starts as the prototype classifier (``W = 2 c``,
  ``b = -|c|^2``, so step 0 predicts as :func:`prototypes` does), then ``steps`` full-batch Adam
  steps update encoder and head together.

Evaluation beyond episodes: :func:`kshot_evaluate` (K examples per class from a training split,
the whole test split, mean +- CI over seeds), and out-of-scope detection by a confidence threshold
(:func:`choose_threshold`, :func:`oos_metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from smallsample.data.text import k_shot_indices
from smallsample.evaluate import Result, check_learner_ways, mean_ci95
from smallsample.learners.base import Learner
from smallsample.learners.closed_form import r2d2
from smallsample.learners.finetune import finetune
from smallsample.learners.protonet import class_means, protonet, squared_distances
from smallsample.models import bert


class Identity(nn.Module):
    """The identity embedding (no parameters): learners on precomputed features ``[n, d]``."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x


def _check_ways(ways: int) -> None:
    if isinstance(ways, bool) or not isinstance(ways, int) or ways < 2:
        raise ValueError(f"ways must be an int >= 2, got {ways!r}")


def _check_number(name: str, value, *, positive: bool = True) -> None:
    """A finite Python number, ``> 0`` when ``positive`` (else ``>= 0``)."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, float, np.number))
          and math.isfinite(value) and (value > 0 if positive else value >= 0))
    if not ok:
        raise ValueError(f"{name} must be a finite number {'>' if positive else '>='} 0, "
                         f"got {value!r}")


def prototypes(ways: int, *, name: str = "prototypes") -> Learner:
    """Prototype classifier on embeddings ``[n, d]``: logits ``-|q - c_k|^2`` ``[n_query, ways]``.

    ``params`` is ``{}``; ``task_state`` the prototypes ``[ways, d]``.
    """
    _check_ways(ways)
    return protonet(Identity(), ways, name=name)._replace(init=lambda key, example_x: {})


def linear_probe(ways: int, *, steps: int = 100, learning_rate: float = 0.1,
                 weight_decay: float = 1e-3, name: str = "linear-probe") -> Learner:
    """A linear softmax head trained per episode on the support embeddings (full batch, Adam).

    Args:
      ways: classes per task.
      steps: static number of Adam steps.
      learning_rate: Adam step size (embeddings of unit norm need a large one).
      weight_decay: decoupled weight decay (AdamW), a small L2 pull on the head.

    ``params`` is ``{'body': {}}``; ``adapt``'s ``key`` draws the initial head.
    """
    _check_ways(ways)
    _check_number("learning_rate", learning_rate)
    _check_number("weight_decay", weight_decay, positive=False)
    opt = optax.adamw(learning_rate, weight_decay=weight_decay)
    learner = finetune(Identity(), ways, head="linear", steps=steps, optimizer=opt, name=name)
    return learner._replace(init=lambda key, example_x: {"body": {}})


def ridge(ways: int, *, lam: float = 1.0, scale: float = 10.0, name: str = "ridge") -> Learner:
    """Closed-form ridge-regression head (R2D2's, fixed ``lam``) on embeddings ``[n, d]``.

    Logits ``scale * X_query W`` with ``W = ridge_weights(X_support, onehot, lam)`` ``[d, ways]``;
    ``scale`` only sharpens the softmax (argmax is unchanged). Both must be finite and ``> 0``.
    """
    _check_ways(ways)
    _check_number("lam", lam)
    _check_number("scale", scale)
    learner = r2d2(Identity(), ways, lam=lam, learn_lambda=False, name=name)

    def init(key, example_x):
        return {"model": {}, "head": {"scale": jnp.asarray(scale, jnp.float32),
                                      "bias": jnp.zeros((), jnp.float32)}}

    return learner._replace(init=init)


class EncoderHead(NamedTuple):
    """``task_state`` of :func:`encoder_finetune`: the adapted encoder parameters and the head
    ``{'kernel' [d, ways], 'bias' [ways]}``."""

    encoder: Any
    head: Any


def augment_between_specials(augment: Callable[..., tuple[jax.Array, jax.Array]],
                             key: jax.Array, ids: jax.Array, *, pad_id: int = 0) -> jax.Array:
    """Applies a token augmentation (:mod:`smallsample.augment.text`: ``augment(key, tokens,
    mask) -> (tokens, mask)``) to one tokenised sentence ``ids [L]`` (``[CLS] words [SEP]`` then
    ``pad_id``), leaving the first and last real tokens where they are: only the words between
    them are deleted, swapped, replaced... If an insertion would overflow ``L``, the words are cut
    so that the closing token still fits."""
    if ids.ndim != 1:
        raise ValueError(f"augment_between_specials takes one sentence [L], got shape {ids.shape}")
    width = ids.shape[0]
    length = jnp.sum(ids != pad_id)
    close = ids[jnp.maximum(length - 1, 0)]
    inner_mask = jnp.arange(width - 1) < length - 2
    inner = jnp.where(inner_mask, ids[1:], jnp.asarray(pad_id, ids.dtype))
    new, new_mask = augment(key, inner, inner_mask)
    n = jnp.minimum(jnp.sum(new_mask), width - 2)
    pos = jnp.arange(width)
    out = jnp.concatenate([ids[:1], new.astype(ids.dtype)])
    out = jnp.where(pos <= n, out, jnp.asarray(pad_id, ids.dtype))
    out = jnp.where(pos == n + 1, close, out)
    return jnp.where(length >= 2, out, ids)  # [CLS] alone or empty: unchanged


def encoder_finetune(config: bert.BertConfig, ways: int, *, steps: int = 10,
                     learning_rate: float = 5e-5, scale: float = 10.0, pooling: str = "mean",
                     normalize: bool = True, pad_id: int = 0,
                     augment: Callable[..., tuple[jax.Array, jax.Array]] | None = None,
                     name: str = "finetune-encoder") -> Learner:
    """Fine-tunes the whole sentence encoder and a linear head on the support set.

    Inputs are token ids ``[n, L]`` int (padding ``pad_id``; the attention mask is ``ids !=
    pad_id``). The head starts as the prototype classifier of the support embeddings; logits are
    ``scale * (2 z.c_k - |c_k|^2)`` at step 0 (the prototype logits up to a per-row constant),
    then ``steps`` full-batch Adam steps on the support cross-entropy update the encoder and the
    head together. Dropout is not used.

    Args:
      config: the encoder architecture (static).
      ways: classes per task.
      steps: static number of Adam steps.
      learning_rate: Adam step size for encoder and head.
      scale: logit scale (inverse temperature) of the head.
      pooling, normalize: as in :func:`~smallsample.models.bert.sentence_embedding`.
      pad_id: the padding token id.
      augment: an optional token augmentation ``augment(key, tokens, mask) -> (tokens, mask)``
        (:mod:`smallsample.augment.text`). Each step then trains on the support set and a fresh
        augmented copy of it (:func:`augment_between_specials`, keys from ``adapt``'s key).

    Returns:
      A :class:`Learner` with ``params = {'encoder': pre-trained parameters}`` (``init`` is not
      meant to be used: pass the loaded parameters) and ``task_state`` an :class:`EncoderHead`.
    """
    _check_ways(ways)
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    _check_number("learning_rate", learning_rate)
    _check_number("scale", scale)
    opt = optax.adam(learning_rate)

    def embed(enc, ids):
        if ids.ndim != 2:
            raise ValueError(f"token ids must be [n, L], got shape {ids.shape}")
        return bert.sentence_embedding(enc, ids, ids != pad_id, config=config, pooling=pooling,
                                       normalize=normalize)

    def logits_of(state, ids):
        return scale * (embed(state.encoder, ids) @ state.head["kernel"] + state.head["bias"])

    def init(key, example_x):
        ids = jnp.zeros((1, 8), jnp.int32)
        return {"encoder": bert.BertEncoder(config).init(key, ids, ids != 0)["params"]}

    def adapt(params, support_x, support_y, key):
        z = embed(params["encoder"], support_x)
        c = class_means(z, support_y, ways)
        start = EncoderHead(params["encoder"], {"kernel": 2.0 * c.T,
                                                "bias": -jnp.sum(c * c, -1)})

        def loss(state, x, y):
            return optax.softmax_cross_entropy_with_integer_labels(logits_of(state, x), y).mean()

        def step(carry, i):
            state, opt_state = carry
            x, y = support_x, support_y
            if augment is not None:
                keys = jax.random.split(jax.random.fold_in(key, i), x.shape[0])
                copy = jax.vmap(lambda k, t: augment_between_specials(augment, k, t,
                                                                      pad_id=pad_id))(keys, x)
                x, y = jnp.concatenate([x, copy]), jnp.concatenate([y, y])
            updates, opt_state = opt.update(jax.grad(loss)(state, x, y), opt_state, state)
            return (optax.apply_updates(state, updates), opt_state), None

        if steps == 0:
            return start
        (state, _), _ = jax.lax.scan(step, (start, opt.init(start)), jnp.arange(steps))
        return state

    def predict(params, state, query_x):
        return logits_of(state, query_x)

    return Learner(init=init, adapt=adapt, predict=predict, name=name)


def token_id_matrix(tokenizer: Any, texts: Sequence[str], *, length: int,
                    pad_id: int = 0) -> np.ndarray:
    """Token ids of ``texts`` padded (or truncated, keeping the final ``[SEP]``) to ``length``:
    int32 ``[len(texts), length]`` (``length >= 2``: room for ``[CLS]`` and ``[SEP]``)."""
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 2:
        raise ValueError(f"length must be an int >= 2 (room for [CLS] and [SEP]), got {length!r}")
    out = np.full((len(texts), length), pad_id, np.int32)
    for i, enc in enumerate(tokenizer.encode_batch([str(t) for t in texts])):
        ids = enc.ids
        if len(ids) > length:
            ids = ids[:length - 1] + ids[-1:]
        out[i, :len(ids)] = ids
    return out


def embed_splits(sets: dict[str, Any], *, encoder: Any, cache_dir: Any = None,
                 progress: bool = False) -> dict[str, np.ndarray]:
    """Embeddings ``[len(texts), dim]`` of each split's texts (a dict of
    :class:`~smallsample.data.text.TextSet`), one :func:`~smallsample.text.encode` call per split
    so the on-disk cache keys stay the same from run to run."""
    from smallsample.text.encode import encode

    return {name: encode(s.texts, encoder=encoder, cache_dir=cache_dir, progress=progress)
            for name, s in sets.items()}


def lookup_embeddings(texts: Sequence[str], sets: dict[str, Any],
                      embeddings: dict[str, np.ndarray]) -> np.ndarray:
    """Embeddings ``[len(texts), dim]`` of ``texts`` found in ``sets`` (split -> TextSet) with
    ``embeddings`` (split -> array), e.g. for the pooled, relabelled parts of
    :func:`~smallsample.data.text.episodic_split`; a ``KeyError`` names a text not found."""
    table = {t: e[i] for name, s in sets.items() for e in (embeddings[name],)
             for i, t in enumerate(s.texts)}
    return np.stack([table[t] for t in texts]) if len(texts) else np.zeros((0, 0), np.float32)


# --- K shots per class over all classes, the whole test split -----------------------------------

def kshot_accuracy(key: jax.Array, learner: Learner, params: Any, train_x: Any,
                   train_y: np.ndarray, test_x: Any, test_y: np.ndarray, *, num_classes: int,
                   shots: int, predict_batch: int | None = None) -> float:
    """Accuracy on the whole test split after adapting to ``shots`` random training examples per
    class (all ``num_classes`` classes; :func:`~smallsample.data.text.k_shot_indices`).

    Args:
      key: draws the support examples and the ``adapt`` key.
      learner: a learner built for ``ways = num_classes``.
      train_x, test_x: ``[n_train, ...]`` and ``[n_test, ...]`` inputs (embeddings or token ids).
      train_y, test_y: int labels ``[n_train]``, ``[n_test]`` (negative labels, e.g. CLINC150's
        out-of-scope, are never drawn and must not be in ``test_y``).
      predict_batch: predict the test split in chunks of this many rows (default all at once).

    Raises:
      ValueError: labels of the wrong shape or outside ``[0, num_classes)`` (negative allowed in
        ``train_y``), or a learner whose logits do not have ``num_classes`` columns (checked on
        shapes before adapting: a learner built for fewer classes would never predict the others
        and still report an accuracy).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if predict_batch is not None and (isinstance(predict_batch, bool) or not isinstance(
            predict_batch, (int, np.integer)) or predict_batch < 1):
        raise ValueError(f"predict_batch must be an int >= 1 or None, got {predict_batch!r}")
    train_x, test_x = np.asarray(train_x), np.asarray(test_x)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    for name, y, x in (("train_y", train_y, train_x), ("test_y", test_y, test_x)):
        if y.ndim != 1 or x.shape[:1] != y.shape:
            raise ValueError(f"{name} must be [n] = [{x.shape[0] if x.ndim else '?'}] (one label "
                             f"per row of {name[:-1]}x, shape {x.shape}), got {y.shape}")
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{name} must be integer labels, got dtype {y.dtype}")
    if train_y.size and train_y.max() >= num_classes:
        raise ValueError(f"train_y must be < num_classes={num_classes}, got {train_y.max()}")
    if test_y.size and (test_y.min() < 0 or test_y.max() >= num_classes):
        raise ValueError(f"test_y must be in [0, {num_classes}), got [{test_y.min()}, "
                         f"{test_y.max()}]")
    k_pick, k_adapt = jax.random.split(key)
    idx = k_shot_indices(k_pick, train_y, num_classes=num_classes, shots=shots).ravel()
    support_x = jnp.asarray(train_x[idx])
    support_y = jnp.asarray(train_y[idx], jnp.int32)
    n = test_y.shape[0]
    chunk = n if predict_batch is None else int(predict_batch)
    check_learner_ways(learner, params, support_x, support_y,
                       jax.ShapeDtypeStruct((min(chunk, n),) + test_x.shape[1:], test_x.dtype),
                       ways=num_classes, where="kshot_accuracy")
    state = learner.adapt(params, support_x, support_y, k_adapt)
    preds = [np.asarray(jnp.argmax(learner.predict(params, state, jnp.asarray(test_x[s:s + chunk])),
                                   -1)) for s in range(0, n, chunk)]
    return float((np.concatenate(preds) == test_y).mean())


def kshot_evaluate(learner: Learner, params: Any, train_x: Any, train_y: np.ndarray,
                   test_x: Any, test_y: np.ndarray, *, num_classes: int, shots: int,
                   seeds: Sequence[int] = tuple(range(10)),
                   predict_batch: int | None = None) -> Result:
    """:func:`kshot_accuracy` for each seed (key ``jax.random.key(seed)``): mean +- 95% CI over
    seeds (:func:`~smallsample.evaluate.mean_ci95`); ``accuracies`` are per seed."""
    return mean_ci95([kshot_accuracy(jax.random.key(s), learner, params, train_x, train_y,
                                     test_x, test_y, num_classes=num_classes, shots=shots,
                                     predict_batch=predict_batch) for s in seeds])


# --- out-of-scope detection by a confidence threshold -------------------------------------------

def prototype_scores(prototypes_: jax.Array, x: jax.Array, *,
                     kind: str = "distance", temperature: float = 0.1) -> tuple[jax.Array,
                                                                                  jax.Array]:
    """(predicted class ``[n]``, confidence ``[n]``) of the prototype classifier.

    ``kind='distance'``: confidence ``-min_k |x - c_k|^2``; ``kind='probability'``: the largest
    softmax probability of ``-|x - c_k|^2 / temperature`` (finite, ``> 0``). Higher means more
    in-scope. ``prototypes_`` is ``[ways, d]`` and ``x`` is ``[n, d]``.
    """
    if prototypes_.ndim != 2 or x.ndim != 2 or prototypes_.shape[1] != x.shape[1]:
        raise ValueError(f"prototypes_ must be [ways, d] and x [n, d], got {prototypes_.shape} "
                         f"and {x.shape}")
    if kind == "probability":
        _check_number("temperature", temperature)
    logits = -squared_distances(x, prototypes_)
    if kind == "distance":
        conf = jnp.max(logits, -1)
    elif kind == "probability":
        conf = jnp.max(jax.nn.softmax(logits / temperature, -1), -1)
    else:
        raise ValueError(f"kind must be 'distance' or 'probability', got {kind!r}")
    return jnp.argmax(logits, -1), conf


class OOSMetrics(NamedTuple):
    """In-scope accuracy (correct class and accepted) and out-of-scope recall (rejected)."""

    in_scope_accuracy: float
    oos_recall: float


def oos_metrics(in_scores: np.ndarray, in_correct: np.ndarray, oos_scores: np.ndarray,
                threshold: float) -> OOSMetrics:
    """Metrics of the rule "out-of-scope iff score < threshold".

    Args:
      in_scores: ``[n_in]`` confidences of in-scope examples; in_correct: ``[n_in]`` bool, whether
        the classifier's class is right; oos_scores: ``[n_oos]`` confidences of out-of-scope ones.
    """
    in_scores, oos_scores = np.asarray(in_scores), np.asarray(oos_scores)
    in_correct = np.asarray(in_correct, bool)
    if in_scores.shape != in_correct.shape or in_scores.ndim != 1 or oos_scores.ndim != 1:
        raise ValueError(f"in_scores and in_correct must be [n_in] and oos_scores [n_oos]; got "
                         f"{in_scores.shape}, {in_correct.shape}, {oos_scores.shape}")
    for name, v in (("in_scores", in_scores), ("oos_scores", oos_scores)):
        bad = np.flatnonzero(np.isnan(v.astype(np.float64)))
        if bad.size:  # a NaN compares False: it would silently count as out-of-scope
            raise ValueError(f"{name} contains NaN at indices {bad[:10]}")
    if np.isnan(threshold):
        raise ValueError("threshold is NaN")
    return OOSMetrics(float(np.mean(in_correct & (in_scores >= threshold))),
                      float(np.mean(oos_scores < threshold)))


def choose_threshold(in_scores: np.ndarray, in_correct: np.ndarray,
                     oos_scores: np.ndarray) -> float:
    """The threshold maximising ``(in-scope accuracy + out-of-scope recall) / 2`` (the two
    classes weigh the same however many examples each has) under :func:`oos_metrics`' rule.

    Candidates are every observed score and ``+inf``; ties go to the smallest threshold. Computed
    with one sort (``O(n log n)``).
    """
    in_scores, oos_scores = np.asarray(in_scores, np.float64), np.asarray(oos_scores, np.float64)
    in_correct = np.asarray(in_correct, bool)
    oos_metrics(in_scores, in_correct, oos_scores, 0.0)  # shape checks
    if in_scores.size == 0 or oos_scores.size == 0:
        raise ValueError("need at least one in-scope and one out-of-scope score")
    cand = np.unique(np.concatenate([in_scores, oos_scores, [np.inf]]))
    srt_in = np.sort(in_scores[in_correct])
    acc = (srt_in.size - np.searchsorted(srt_in, cand, side="left")) / in_scores.size
    recall = np.searchsorted(np.sort(oos_scores), cand, side="left") / oos_scores.size
    return float(cand[np.argmax(acc + recall)])


__all__ = [
    "EncoderHead",
    "Identity",
    "OOSMetrics",
    "choose_threshold",
    "embed_splits",
    "encoder_finetune",
    "kshot_accuracy",
    "kshot_evaluate",
    "linear_probe",
    "lookup_embeddings",
    "oos_metrics",
    "prototype_scores",
    "prototypes",
    "ridge",
    "token_id_matrix",
]
