"""Token-level text augmentation (one harness over every function) and the string hooks."""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smallsample.augment import text as T

# Test-local compile options: a fraction of the default compile time for these small programs
# (same numbers; the library itself never calls jax.jit).
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0,
                                                   "xla_llvm_disable_expensive_passes": True})

L, VOCAB, PAD = 10, 40, 0
# Three examples: length 6, 1 and L (full); ids 5.. so none is PAD.
TOKENS = np.array([[5, 6, 7, 8, 9, 10, 0, 0, 0, 0],
                   [11, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                   [12, 13, 14, 15, 16, 17, 18, 19, 20, 21]], np.int32)
MASK = TOKENS != PAD
# Synonyms: each id t maps to three other ids (t + 1, t + 2, t + 3 mod VOCAB, never PAD).
SYN = np.array([[(t + d - 1) % (VOCAB - 1) + 1 for d in (1, 2, 3)] for t in range(VOCAB)],
               np.int32)
SYN[PAD] = PAD

FUNCTIONS = {
    "deletion": lambda k, t, m: T.random_deletion(k, t, m, rate=0.3, pad_id=PAD),
    "swap": lambda k, t, m: T.random_swap(k, t, m, num_swaps=2),
    "insertion": lambda k, t, m: T.random_insertion(k, t, m, synonyms=SYN, num_insertions=2,
                                                    pad_id=PAD),
    "insertion_copy": lambda k, t, m: T.random_insertion(k, t, m, pad_id=PAD),
    "synonyms": lambda k, t, m: T.synonym_replacement(k, t, m, synonyms=SYN,
                                                      num_replacements=2),
    "masking": lambda k, t, m: T.random_token_masking(k, t, m, mask_id=3, rate=0.3),
    "replacement": lambda k, t, m: T.random_token_replacement(k, t, m, vocab_size=VOCAB,
                                                              rate=0.3, low=4),
}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_text_harness(name):
    """jit(vmap) over 32 keys x 3 examples equals eager calls; same key same output, different
    keys differ; shapes and dtypes kept; padding stays at the end and is PAD; never empty."""
    fn = FUNCTIONS[name]
    keys = jax.random.split(jax.random.key(0), 96).reshape(32, 3)
    tokens = jnp.broadcast_to(jnp.asarray(TOKENS), (32, L * 0 + 3, L))
    mask = jnp.broadcast_to(jnp.asarray(MASK), (32, 3, L))
    run = jit(jax.vmap(jax.vmap(fn)))
    out, out_mask = run(keys, tokens, mask)
    assert out.shape == tokens.shape and out.dtype == tokens.dtype and out_mask.dtype == bool
    eager = fn(keys[4, 0], TOKENS[0], MASK[0])
    np.testing.assert_array_equal(eager[0], out[4, 0])
    np.testing.assert_array_equal(eager[1], out_mask[4, 0])
    again = run(keys, tokens, mask)
    np.testing.assert_array_equal(again[0], out)
    out, out_mask = np.asarray(out), np.asarray(out_mask)
    lengths = out_mask.sum(-1)
    assert (lengths >= 1).all()
    for row in out_mask.reshape(-1, L):  # padding only at the end
        assert not (np.diff(row.astype(int)) > 0).any()
    assert (out[~out_mask] == PAD).all() and (out[out_mask] != PAD).all()
    assert len({o.tobytes() for o in out[:, 0]}) >= 2  # different keys, different outputs


def _real(tokens, mask):
    return [int(t) for t, m in zip(tokens, mask, strict=True) if m]


def _batch(fn, *args, n=64, example=0):
    """``fn(key, tokens, mask, *args)``, one jit(vmap) over ``n`` keys; real tokens as lists."""
    keys = jax.random.split(jax.random.key(1), n)
    run = jit(jax.vmap(fn, in_axes=(0, None, None) + (None,) * len(args)))
    out, mask = run(keys, TOKENS[example], MASK[example], *args)
    return [_real(o, m) for o, m in zip(np.asarray(out), np.asarray(mask), strict=True)]


def _is_subsequence(small, big):
    it = iter(big)
    return all(x in it for x in small)


def test_deletion():
    original = _real(TOKENS[0], MASK[0])
    delete = jit(jax.vmap(lambda k, r: T.random_deletion(k, TOKENS[0], MASK[0], rate=r),
                              in_axes=(0, None)))
    keys = jax.random.split(jax.random.key(1), 64)
    for rate, check in [(0.0, lambda r: r == original), (1.0, lambda r: len(r) == 1),
                        (0.5, lambda r: 1 <= len(r) <= 6)]:
        out, mask = delete(keys, rate)
        results = [_real(o, m) for o, m in zip(np.asarray(out), np.asarray(mask), strict=True)]
        assert all(check(r) and _is_subsequence(r, original) for r in results), rate
        if rate == 0.5:
            assert 0.35 < np.mean([len(r) for r in results]) / 6 < 0.65


def test_swap():
    original = _real(TOKENS[0], MASK[0])
    for result in _batch(lambda k, t, m: T.random_swap(k, t, m, num_swaps=1)):
        assert sorted(result) == sorted(original)
        assert sum(a != b for a, b in zip(result, original, strict=True)) == 2
    assert _batch(lambda k, t, m: T.random_swap(k, t, m, num_swaps=3), example=1)[0] == [11]


def test_insertion():
    original = _real(TOKENS[0], MASK[0])
    for result in _batch(lambda k, t, m: T.random_insertion(k, t, m, synonyms=SYN)):
        assert len(result) == 7
        removed = [i for i in range(7) if result[:i] + result[i + 1:] == original]
        assert removed, result
        assert any(result[i] in SYN[t] for i in removed for t in original)
    full = _real(TOKENS[2], MASK[2])
    for result in _batch(lambda k, t, m: T.random_insertion(k, t, m), example=2):
        assert len(result) == L  # the last token makes room
        assert any(result[:i] + result[i + 1:] == full[:-1] for i in range(L))


def test_synonym_replacement():
    original = _real(TOKENS[0], MASK[0])
    keep_self = SYN.copy()
    keep_self[5] = 5  # a special token: never replaced

    def replace(n):
        return lambda k, t, m, syn: T.synonym_replacement(k, t, m, synonyms=syn,
                                                          num_replacements=n)

    for n, table in [(1, SYN), (10, SYN), (10, keep_self)]:
        for result in _batch(replace(n), table):
            changed = [i for i in range(6) if result[i] != original[i]]
            assert all(result[i] in table[original[i]] for i in changed)
            if table is SYN:
                assert len(changed) == min(n, 6)
            else:
                assert result[0] == 5 and len(changed) == 5


def test_masking_and_replacement():
    out, mask = T.random_token_masking(jax.random.key(0), TOKENS[0], MASK[0], mask_id=3,
                                       rate=1.0)
    np.testing.assert_array_equal(out, np.where(MASK[0], 3, PAD))
    np.testing.assert_array_equal(mask, MASK[0])
    same, _ = T.random_token_masking(jax.random.key(0), TOKENS[0], MASK[0], mask_id=3, rate=0.0)
    np.testing.assert_array_equal(same, TOKENS[0])
    new, _ = T.random_token_replacement(jax.random.key(0), TOKENS[2], MASK[2], vocab_size=VOCAB,
                                        rate=1.0, low=30)
    assert (np.asarray(new) >= 30).all() and (np.asarray(new) < VOCAB).all()
    with pytest.raises(ValueError, match="low=40"):
        T.random_token_replacement(jax.random.key(0), TOKENS[0], MASK[0], vocab_size=40, low=40)


def test_errors():
    with pytest.raises(ValueError, match=r"\(3, 10\)"):
        T.random_swap(jax.random.key(0), TOKENS, MASK)
    with pytest.raises(ValueError, match="mask"):
        T.random_swap(jax.random.key(0), TOKENS[0], MASK[0, :5])
    with pytest.raises(ValueError, match="num_swaps"):
        T.random_swap(jax.random.key(0), TOKENS[0], MASK[0], num_swaps=-1)


def test_nearest_neighbours_matches_numpy():
    emb = np.random.default_rng(0).normal(size=(23, 5))
    table = np.asarray(T.nearest_neighbours(jnp.asarray(emb, jnp.float32), k=4,
                                            special_ids=(0, 7), block=8))
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    sim[:, [0, 7]] = -np.inf
    ref = np.argsort(-sim, axis=1, kind="stable")[:, :4]
    assert table.shape == (23, 4) and table.dtype == np.int32
    for t in range(23):
        if t in (0, 7):
            assert (table[t] == t).all()
        else:
            np.testing.assert_array_equal(table[t], ref[t])
    with pytest.raises(ValueError, match="k=30"):
        T.nearest_neighbours(jnp.asarray(emb), k=30)


def test_round_trip_and_cached():
    calls = collections.Counter()

    def to_pivot(texts):  # a caller's "model": any batch function of strings
        calls["to"] += 1
        return [t.upper() for t in texts]

    def back(texts):
        calls["back"] += 1
        calls["strings"] += len(texts)
        return [t[::-1].lower() for t in texts]

    cache = {}
    paraphrase = T.cached(T.round_trip(to_pivot, back), cache=cache)
    assert paraphrase(["ab", "cd", "ab"]) == ["ba", "dc", "ba"]
    assert calls == {"to": 1, "back": 1, "strings": 2}  # one batch, duplicates sent once
    assert paraphrase(["cd", "ef"]) == ["dc", "fe"]
    assert calls["to"] == 2 and calls["strings"] == 3  # only "ef" was new
    assert paraphrase(["ab"]) == ["ba"] and calls["to"] == 2
    assert cache == {"ab": "ba", "cd": "dc", "ef": "fe"}
    broken = T.cached(lambda texts: texts[:1])
    with pytest.raises(ValueError, match="returned 1 items for 2 strings"):
        broken(["x", "y"])
