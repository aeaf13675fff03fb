"""Tokenization with bucketed dynamic padding.

A batch is padded to the next of a few bucket lengths rather than to its own longest sentence or
to a fixed maximum, so a jitted encoder compiles once per bucket. The default lengths are the
powers of two and their midpoints (8, 12, 16, 24, ...): a batch carries at most a third of padding
where powers of two alone allow a half, and short texts (CLINC150's median is 10 tokens) are no
longer padded to 16. Encoding 2,000 CLINC150 utterances took about 1.5x the time with powers of two
alone (docs/performance.md, "encoders"); each extra length is one more compilation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

DEFAULT_BUCKETS = (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


class TokenBatch(NamedTuple):
    """Token ids and mask of a padded batch.

    Attributes:
      input_ids: ``[n, L]`` int32, padded with the tokenizer's pad id.
      attention_mask: ``[n, L]`` int32, 1 for tokens and 0 for padding.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray


def max_seq_length(model_dir: str | os.PathLike, *, max_position_embeddings: int) -> int:
    """The sequence length a checkpoint was trained to use.

    sentence-transformers' ``sentence_bert_config.json`` ``max_seq_length`` when shipped (256 for
    all-MiniLM-L6-v2, whose ``tokenizer.json`` truncates at 128, which is not what the model uses;
    384 for all-mpnet-base-v2); else ``tokenizer_config.json``'s ``model_max_length``; never
    more than ``max_position_embeddings``.
    """
    folder = Path(model_dir)
    for name, key in (("sentence_bert_config.json", "max_seq_length"),
                      ("tokenizer_config.json", "model_max_length")):
        if (folder / name).is_file():
            with open(folder / name, encoding="utf-8") as f:
                value = json.load(f).get(key)
            if isinstance(value, int) and value > 0:
                return min(value, max_position_embeddings)
    return max_position_embeddings


def load_tokenizer(path: str | os.PathLike, *, max_length: int):
    """A ``tokenizers.Tokenizer`` from ``tokenizer.json`` that truncates to ``max_length`` tokens
    (special tokens included) and does not pad (padding is done by :func:`tokenize`)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def bucket_length(length: int, *, buckets: Sequence[int] = DEFAULT_BUCKETS) -> int:
    """The smallest bucket >= ``length``; a ``ValueError`` if there is none."""
    for b in sorted(buckets):
        if b >= length:
            return int(b)
    raise ValueError(f"length {length} is more than the largest bucket {max(buckets)}")


def check_texts(texts: Sequence[str]) -> list[str]:
    """``texts`` as a list, or a ``ValueError`` naming the first item that is not a ``str``
    (``None`` or a number would otherwise be embedded as the text ``'None'`` or ``'3'``)."""
    if isinstance(texts, (str, bytes)):
        raise ValueError(f"texts must be a sequence of strings, got one {type(texts).__name__}")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"texts[{i}] is {type(t).__name__} ({t!r:.40}), not str")
    return texts


def token_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text (with special tokens, truncated as the tokenizer is set up);
    texts that are not ``str`` are a ``ValueError`` (see :func:`check_texts`)."""
    return [e.ids for e in tokenizer.encode_batch(check_texts(texts))]


def pad_ids(ids: Sequence[Sequence[int]], *, buckets: Sequence[int] = DEFAULT_BUCKETS,
            pad_id: int = 0, rows: int | None = None) -> TokenBatch:
    """Pads token id lists to the bucket of the longest: ``[rows or len(ids), L]``.

    ``rows`` > ``len(ids)`` appends all-padding rows (mask 0), so the batch dimension can be
    bucketed too.
    """
    n = len(ids)
    rows = n if rows is None else rows
    if rows < n:
        raise ValueError(f"rows={rows} is fewer than the {n} sequences")
    length = bucket_length(max((len(i) for i in ids), default=1), buckets=buckets)
    input_ids = np.full((rows, length), pad_id, np.int32)
    mask = np.zeros((rows, length), np.int32)
    for r, seq in enumerate(ids):
        input_ids[r, :len(seq)] = seq
        mask[r, :len(seq)] = 1
    return TokenBatch(input_ids, mask)


def tokenize(tokenizer, texts: Sequence[str], *, buckets: Sequence[int] = DEFAULT_BUCKETS,
             pad_id: int = 0) -> TokenBatch:
    """Tokenizes ``texts`` and pads them to a bucket length: ``[len(texts), L]``.

    ``pad_id``: the model's ``config.pad_token_id`` (0 for BERT, 1 for MPNet, whose positions
    are counted from the ids)."""
    return pad_ids(token_ids(tokenizer, texts), buckets=buckets, pad_id=pad_id)
