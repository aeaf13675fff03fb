"""A text classifier: a sentence encoder and a linear head over named labels, saved as a folder.

:class:`TextClassifier` is what the text distillation (:mod:`smallsample.distill.text`) trains
and what the practitioner's commands write and read. Its logits are
``scale * (z @ kernel + bias)`` with ``z`` the encoder's pooled (and, as the encoder was trained,
L2-normalised) sentence embedding; ``threshold``, when set, marks a text out-of-scope when its
largest softmax probability is below it.

A folder (:func:`save_classifier` / :func:`load_classifier`) holds ``classifier.json`` (format,
labels, head scale, threshold, the encoder's configuration, pooling, maximum length, the sha256
of each other file, and free-form ``info`` such as how it was trained), ``encoder.safetensors``
and ``head.safetensors`` (flat ``/``-joined parameter names, float32) and the encoder's
``tokenizer.json``. It is written to a temporary folder beside the target and renamed into
place, so a reader sees a whole folder or none; loading checks every sha256 and never unpickles.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from smallsample.models import pretrained
from smallsample.models.transformer import file_sha256
from smallsample.text.encode import SentenceEncoder
from smallsample.text.tokenize import DEFAULT_BUCKETS, check_texts, load_tokenizer, pad_ids

FORMAT = "smallsample-text-classifier/1"


class TextClassifier(NamedTuple):
    """A sentence encoder with a linear head.

    Attributes:
      encoder: the :class:`~smallsample.text.encode.SentenceEncoder` (its ``params`` are the
        fine-tuned or distilled weights).
      head: ``{'kernel': [dim, num_classes], 'bias': [num_classes]}``.
      labels: the class names, ``num_classes`` of them, in column order.
      scale: the logit scale (inverse temperature) applied to ``z @ kernel + bias``.
      threshold: out-of-scope when the largest probability is below it (``None``: never).
    """

    encoder: SentenceEncoder
    head: Any
    labels: tuple[str, ...]
    scale: float = 1.0
    threshold: float | None = None

    @property
    def num_classes(self) -> int:
        return len(self.labels)


def head_logits(head: Any, z: jax.Array, *, scale: float | jax.Array) -> jax.Array:
    """``scale * (z @ kernel + bias)``: ``[n, dim] -> [n, num_classes]``."""
    return scale * (z @ head["kernel"] + head["bias"])


def logits_fn(encoder: SentenceEncoder):
    """``f(params, head, scale, input_ids [n, L], attention_mask [n, L]) -> [n, C]`` for the
    encoder's architecture (pure; jit it)."""
    config, pooling, normalize = encoder.config, encoder.pooling, encoder.normalize

    def f(params, head, scale, input_ids, attention_mask):
        z = pretrained.sentence_embedding(params, input_ids, attention_mask, config=config,
                                          pooling=pooling, normalize=normalize)
        return head_logits(head, z, scale=scale)

    return f


_logits_jit = {}


def _jitted(encoder: SentenceEncoder):
    key = (encoder.config, encoder.pooling, encoder.normalize)
    if key not in _logits_jit:
        _logits_jit[key] = jax.jit(logits_fn(encoder))
    return _logits_jit[key]


def batches(encoder: SentenceEncoder, texts: Sequence[str], *, batch_size: int):
    """(rows, TokenBatch) over ``texts`` sorted by length: ``batch_size`` rows (the last padded
    to a power of two), each padded to the encoder's next bucket length, so a jitted function
    compiles a few shapes at most."""
    ids = [e.ids for e in encoder.tokenizer.encode_batch(list(texts))]
    order = np.argsort([len(i) for i in ids], kind="stable")
    for start in range(0, len(ids), batch_size):
        rows = order[start:start + batch_size]
        padded = min(batch_size, 1 << (len(rows) - 1).bit_length())
        yield rows, pad_ids([ids[r] for r in rows], buckets=encoder.buckets,
                            pad_id=encoder.config.pad_token_id, rows=padded)


def predict_logits(classifier: TextClassifier, texts: Sequence[str], *, batch_size: int = 64,
                   progress: bool = False) -> np.ndarray:
    """Logits ``[len(texts), num_classes]`` float32 of ``texts``."""
    texts = check_texts(texts)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    out = np.zeros((len(texts), classifier.num_classes), np.float32)
    f = _jitted(classifier.encoder)
    from tqdm.auto import tqdm

    with tqdm(total=len(texts), unit="text", desc="classify", disable=not progress) as bar:
        for rows, batch in batches(classifier.encoder, texts, batch_size=batch_size):
            logits = f(classifier.encoder.params, classifier.head,
                       jnp.float32(classifier.scale), batch.input_ids, batch.attention_mask)
            out[rows] = np.asarray(logits)[:len(rows)]
            bar.update(len(rows))
    return out


class Prediction(NamedTuple):
    """What :func:`classify` returns for ``n`` texts."""

    labels: list[str | None]        # the predicted class name, None when out-of-scope
    classes: np.ndarray             # [n] int, the arg-max class (even when out-of-scope)
    confidence: np.ndarray          # [n] float, the largest softmax probability
    probabilities: np.ndarray       # [n, num_classes] float
    out_of_scope: np.ndarray        # [n] bool


def classify(classifier: TextClassifier, texts: Sequence[str], *, batch_size: int = 64,
             threshold: float | None = None, progress: bool = False) -> Prediction:
    """Classes and confidences of ``texts``; out-of-scope where the confidence is below
    ``threshold`` (default the classifier's own; ``None`` and no own threshold: never)."""
    threshold = classifier.threshold if threshold is None else threshold
    if threshold is not None:
        check_threshold(threshold)
    probs = jax.nn.softmax(predict_logits(classifier, texts, batch_size=batch_size,
                                          progress=progress), -1)
    probs = np.asarray(probs, np.float64)
    classes = probs.argmax(-1)
    conf = probs.max(-1) if len(probs) else np.zeros((0,))
    oos = conf < threshold if threshold is not None else np.zeros(len(conf), bool)
    names = [None if o else classifier.labels[c] for c, o in zip(classes, oos, strict=True)]
    return Prediction(names, classes, conf, probs, oos)


def check_threshold(threshold: float) -> float:
    """A threshold on the largest probability: a finite number in ``[0, 1]``."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)) or \
            not math.isfinite(threshold) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a probability in [0, 1], got {threshold!r}")
    return float(threshold)


# --- changing the encoder -----------------------------------------------------------------------

def truncate_encoder(encoder: SentenceEncoder, layers: int | Sequence[int]) -> SentenceEncoder:
    """A smaller encoder made of some of ``encoder``'s layers (same embeddings and tokenizer).

    ``layers``: a count ``n`` (the first ``n`` layers) or the indices to keep, in order (e.g.
    ``(0, 2, 4)``, every other layer as DistilBERT initialises its student). The kept layers are
    renumbered from 0.
    """
    total = encoder.config.num_hidden_layers
    if isinstance(layers, (int, np.integer)) and not isinstance(layers, bool):
        if not 1 <= layers <= total:
            raise ValueError(f"layers must be in [1, {total}], got {layers}")
        keep = list(range(int(layers)))
    else:
        keep = [int(i) for i in layers]
        if not keep or any(not 0 <= i < total for i in keep) or len(set(keep)) != len(keep):
            raise ValueError(f"layers must be distinct indices in [0, {total}), got {layers!r}")
    params = {k: v for k, v in encoder.params.items() if not k.startswith("layer_")}
    for new, old in enumerate(keep):
        params[f"layer_{new}"] = encoder.params[f"layer_{old}"]
    config = dataclasses.replace(encoder.config, num_hidden_layers=len(keep))
    return encoder._replace(config=config, params=params)


def num_params(tree: Any) -> int:
    """Number of scalars in a parameter tree."""
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(tree)))


# --- the folder ---------------------------------------------------------------------------------

def _flat(tree: Any) -> dict[str, np.ndarray]:
    return {"/".join(k): np.ascontiguousarray(np.asarray(v, np.float32))
            for k, v in traverse_util.flatten_dict(jax.device_get(tree)).items()}


def _unflat(flat: dict[str, np.ndarray]) -> Any:
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def save_classifier(classifier: TextClassifier, folder: str | os.PathLike, *,
                    info: dict | None = None, overwrite: bool = False) -> Path:
    """Writes ``classifier`` to ``folder`` (see the module docstring); returns the folder.

    Refuses non-finite parameters (naming the tensor) and an existing folder unless
    ``overwrite``; the folder appears whole (built beside it, then renamed).
    """
    from safetensors.numpy import save_file

    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} exists; choose another folder or overwrite it")
    encoder_flat, head_flat = _flat(classifier.encoder.params), _flat(classifier.head)
    for what, flat in (("encoder", encoder_flat), ("head", head_flat)):
        for name, v in flat.items():
            if not np.all(np.isfinite(v)):
                raise FloatingPointError(f"{what} parameter {name} has non-finite values; "
                                         f"nothing was written to {folder}")
    kernel = head_flat.get("kernel")
    if kernel is None or kernel.shape != (classifier.encoder.dim, classifier.num_classes):
        raise ValueError(f"head kernel must be [{classifier.encoder.dim}, "
                         f"{classifier.num_classes}], got "
                         f"{None if kernel is None else kernel.shape}")
    if classifier.threshold is not None:
        check_threshold(classifier.threshold)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        save_file(encoder_flat, str(tmp / "encoder.safetensors"))
        save_file(head_flat, str(tmp / "head.safetensors"))
        (tmp / "tokenizer.json").write_text(classifier.encoder.tokenizer.to_str(),
                                            encoding="utf-8")
        meta = {
            "format": FORMAT,
            "labels": list(classifier.labels),
            "scale": float(classifier.scale),
            "threshold": classifier.threshold,
            "encoder": {"model_type": pretrained.model_type(classifier.encoder.config),
                        "config": dataclasses.asdict(classifier.encoder.config),
                        "pooling": classifier.encoder.pooling,
                        "normalize": classifier.encoder.normalize,
                        "max_length": classifier.encoder.max_length,
                        "source_weights_sha256": classifier.encoder.weights_sha256},
            "sha256": {name: file_sha256(tmp / name) for name in
                       ("encoder.safetensors", "head.safetensors", "tokenizer.json")},
            "info": info or {},
        }
        (tmp / "classifier.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if folder.exists():
            old = folder.parent / f".{folder.name}.old"
            if old.exists():
                shutil.rmtree(old)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def read_meta(folder: str | os.PathLike) -> dict:
    """``classifier.json`` of a classifier folder, checked to be one (``ValueError`` naming the
    file otherwise)."""
    path = Path(folder) / "classifier.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a classifier folder: {path} does not exist")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file (format "
                         f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    return meta


def load_classifier(folder: str | os.PathLike) -> TextClassifier:
    """The classifier saved in ``folder`` by :func:`save_classifier`, every file checked against
    its recorded sha256 and every tensor against the architecture."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    meta = read_meta(folder)
    try:
        for name, digest in meta["sha256"].items():
            if file_sha256(folder / name) != digest:
                raise ValueError(f"{folder / name}: sha256 differs from classifier.json's; the "
                                 "file was changed or damaged")
        enc = meta["encoder"]
        config = pretrained.CONFIGS[enc["model_type"]](**enc["config"])
        labels = tuple(str(x) for x in meta["labels"])
        params = _unflat(load_file(str(folder / "encoder.safetensors")))
        head = _unflat(load_file(str(folder / "head.safetensors")))
    except (KeyError, TypeError) as e:
        raise ValueError(f"{folder / 'classifier.json'}: missing or malformed entry ({e})") \
            from None
    expected = jax.eval_shape(lambda: pretrained.encoder_module(config).init(
        jax.random.key(0), jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), jnp.int32)))["params"]
    want = {k: v.shape for k, v in _flat_shapes(expected).items()}
    got = {k: v.shape for k, v in _flat_shapes(params).items()}
    if want != got:
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
        raise ValueError(f"{folder / 'encoder.safetensors'}: tensors do not match the "
                         f"configuration (missing {missing[:5]}, unexpected {extra[:5]}, "
                         f"wrong shape {wrong[:5]})")
    if np.shape(head.get("kernel")) != (config.hidden_size, len(labels)) or \
            np.shape(head.get("bias")) != (len(labels),):
        raise ValueError(f"{folder / 'head.safetensors'}: head must be kernel "
                         f"[{config.hidden_size}, {len(labels)}] and bias [{len(labels)}]")
    max_length = int(enc["max_length"])
    buckets = tuple(b for b in DEFAULT_BUCKETS if b < max_length) + (max_length,)
    tokenizer = load_tokenizer(folder / "tokenizer.json", max_length=max_length)
    encoder = SentenceEncoder(config, params, tokenizer, max_length, buckets, enc["pooling"],
                              bool(enc["normalize"]), meta["sha256"]["encoder.safetensors"],
                              folder)
    threshold = meta.get("threshold")
    return TextClassifier(encoder, head, labels, float(meta["scale"]),
                          None if threshold is None else check_threshold(threshold))


def _flat_shapes(tree: Any) -> dict[str, Any]:
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


__all__ = [
    "FORMAT",
    "Prediction",
    "TextClassifier",
    "batches",
    "check_threshold",
    "classify",
    "head_logits",
    "load_classifier",
    "logits_fn",
    "num_params",
    "predict_logits",
    "read_meta",
    "save_classifier",
    "truncate_encoder",
]
