"""Text: tokenization with bucketed padding, and cached sentence embeddings."""

from smallsample.text.encode import (
    SentenceEncoder,
    cache_path,
    encode,
    load_sentence_encoder,
    texts_sha256,
)
from smallsample.text.tokenize import (
    DEFAULT_BUCKETS,
    TokenBatch,
    bucket_length,
    load_tokenizer,
    max_seq_length,
    pad_ids,
    token_ids,
    tokenize,
)

__all__ = [
    "DEFAULT_BUCKETS",
    "SentenceEncoder",
    "TokenBatch",
    "bucket_length",
    "cache_path",
    "encode",
    "load_sentence_encoder",
    "load_tokenizer",
    "max_seq_length",
    "pad_ids",
    "texts_sha256",
    "token_ids",
    "tokenize",
]
