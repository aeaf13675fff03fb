"""Text augmentation.

Token level (jit / vmap-able): one example is ``tokens [L]`` int ids with ``mask [L]`` bool (True
for real tokens; padding only at the end). Every function returns ``(tokens, mask)`` of the same
shapes and dtypes; padding stays at the end (filled with ``pad_id`` where the length changes), and
an example with at least one token never comes back empty. These are the operations of EDA (Wei &
Zou 2019: synonym replacement, random insertion, random swap, random deletion), with synonyms taken
from the nearest neighbours in an embedding table the caller provides (:func:`nearest_neighbours`),
plus BERT-style token masking and random replacement. Counts (``num_swaps`` ...) are static ints;
rates may be traced.

String level (host side): round-trip translation and paraphrasing need a model, which the caller
supplies as a function ``list[str] -> list[str]``; :func:`round_trip` composes two translations and
:func:`cached` applies such a function to the strings it has not seen before, in one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "cached",
    "nearest_neighbours",
    "random_deletion",
    "random_insertion",
    "random_swap",
    "random_token_masking",
    "random_token_replacement",
    "round_trip",
    "synonym_replacement",
]


def _check(tokens: jax.Array, mask: jax.Array, where: str) -> tuple[jax.Array, jax.Array]:
    tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
    if tokens.ndim != 1:
        raise ValueError(f"{where}: expected one example of token ids [L], got shape "
                         f"{tokens.shape} (vmap over a batch)")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"{where}: token ids must be integers, got dtype {tokens.dtype}")
    if mask.shape != tokens.shape:
        raise ValueError(f"{where}: mask {mask.shape} does not match tokens {tokens.shape}")
    return tokens, mask.astype(bool)


def _check_count(where: str, name: str, value) -> None:
    if not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{where}: {name} must be a static int >= 0, got {value!r}")


def _check_synonyms(where: str, synonyms) -> jax.Array:
    synonyms = jnp.asarray(synonyms)
    if synonyms.ndim != 2 or not jnp.issubdtype(synonyms.dtype, jnp.integer):
        raise ValueError(f"{where}: synonyms must be an int table [vocab, k], got "
                         f"{synonyms.shape} {synonyms.dtype}")
    return synonyms


def _pad(tokens: jax.Array, length: jax.Array, pad_id: int) -> tuple[jax.Array, jax.Array]:
    mask = jnp.arange(tokens.shape[0]) < length
    return jnp.where(mask, tokens, jnp.asarray(pad_id, tokens.dtype)), mask


def _position(key: jax.Array, length: jax.Array) -> jax.Array:
    """A position uniform in ``[0, length)`` for a traced ``length >= 1``."""
    return jnp.minimum(jnp.floor(jax.random.uniform(key) * length).astype(jnp.int32),
                       length - 1)


def random_deletion(key: jax.Array, tokens: jax.Array, mask: jax.Array, *,
                    rate: float | jax.Array = 0.1, pad_id: int = 0) -> tuple[jax.Array, jax.Array]:
    """Deletes each real token with probability ``rate``; if all would go, one random token stays.

    Returns:
      ``(tokens [L], mask [L])``: the kept tokens in their order, then padding.
    """
    tokens, mask = _check(tokens, mask, "random_deletion")
    k_del, k_one = jax.random.split(key)
    length = jnp.sum(mask)
    keep = mask & (jax.random.uniform(k_del, tokens.shape) >= rate)
    survivor = jnp.arange(tokens.shape[0]) == _position(k_one, length)
    keep = jnp.where(jnp.any(keep), keep, survivor & mask)
    order = jnp.argsort(~keep, stable=True)  # kept positions first, in their original order
    return _pad(tokens[order], jnp.sum(keep), pad_id)


def random_swap(key: jax.Array, tokens: jax.Array, mask: jax.Array, *,
                num_swaps: int = 1) -> tuple[jax.Array, jax.Array]:
    """Swaps two distinct random real tokens, ``num_swaps`` (static) times in a row; a one-token
    example is unchanged."""
    tokens, mask = _check(tokens, mask, "random_swap")
    _check_count("random_swap", "num_swaps", num_swaps)
    length = jnp.sum(mask)

    def swap(i, toks):
        k_i, k_j = jax.random.split(jax.random.fold_in(key, i))
        a = _position(k_i, length)
        b = (a + 1 + _position(k_j, jnp.maximum(length - 1, 1))) % length
        ta, tb = toks[a], toks[b]
        return toks.at[a].set(tb).at[b].set(ta)

    return lax.fori_loop(0, num_swaps, swap, tokens), mask


def random_insertion(key: jax.Array, tokens: jax.Array, mask: jax.Array, *,
                     synonyms: jax.Array | None = None, num_insertions: int = 1,
                     pad_id: int = 0) -> tuple[jax.Array, jax.Array]:
    """EDA random insertion, ``num_insertions`` (static) times: a synonym (a random one of
    ``synonyms[t]``, or ``t`` itself when ``synonyms`` is None) of a random real token ``t`` is
    inserted at a random position among the ``length + 1`` gaps.

    An example that fills all ``L`` positions loses its last token to make room (truncation).

    Args:
      synonyms: ``[vocab, k]`` token ids, e.g. from :func:`nearest_neighbours`.
    """
    tokens, mask = _check(tokens, mask, "random_insertion")
    _check_count("random_insertion", "num_insertions", num_insertions)
    if synonyms is not None:
        synonyms = _check_synonyms("random_insertion", synonyms)
    size = tokens.shape[0]
    idx = jnp.arange(size)

    def insert(i, carry):
        toks, length = carry
        k_src, k_syn, k_pos = jax.random.split(jax.random.fold_in(key, i), 3)
        word = toks[_position(k_src, length)]
        if synonyms is not None:
            word = synonyms[word, jax.random.randint(k_syn, (), 0, synonyms.shape[1])]
        where = _position(k_pos, length + 1)
        shifted = toks[jnp.maximum(idx - 1, 0)]
        toks = jnp.where(idx < where, toks, jnp.where(idx == where, word.astype(toks.dtype),
                                                      shifted))
        return toks, jnp.minimum(length + 1, size)

    toks, length = lax.fori_loop(0, num_insertions, insert, (tokens, jnp.sum(mask)))
    return _pad(toks, length, pad_id)


def synonym_replacement(key: jax.Array, tokens: jax.Array, mask: jax.Array, *,
                        synonyms: jax.Array,
                        num_replacements: int = 1) -> tuple[jax.Array, jax.Array]:
    """EDA synonym replacement: ``min(num_replacements, length)`` distinct real positions
    (``num_replacements`` static) get a random one of their ``synonyms[t]``.

    A token whose row of ``synonyms`` holds only itself (special tokens, see
    :func:`nearest_neighbours`) is never changed.

    Args:
      synonyms: ``[vocab, k]`` token ids.
    """
    tokens, mask = _check(tokens, mask, "synonym_replacement")
    _check_count("synonym_replacement", "num_replacements", num_replacements)
    synonyms = _check_synonyms("synonym_replacement", synonyms)
    k_pos, k_syn = jax.random.split(key)
    scores = jnp.where(mask, jax.random.uniform(k_pos, tokens.shape), 2.0)
    rank = jnp.argsort(jnp.argsort(scores))
    chosen = mask & (rank < num_replacements)
    pick = jax.random.randint(k_syn, tokens.shape, 0, synonyms.shape[1])
    replaced = synonyms[tokens, pick].astype(tokens.dtype)
    return jnp.where(chosen, replaced, tokens), mask


def random_token_masking(key: jax.Array, tokens: jax.Array, mask: jax.Array, *,
                         mask_id: int, rate: float | jax.Array = 0.15
                         ) -> tuple[jax.Array, jax.Array]:
    """Replaces each real token with ``mask_id`` with probability ``rate`` (padding untouched)."""
    tokens, mask = _check(tokens, mask, "random_token_masking")
    hit = mask & (jax.random.uniform(key, tokens.shape) < rate)
    return jnp.where(hit, jnp.asarray(mask_id, tokens.dtype), tokens), mask


def random_token_replacement(key: jax.Array, tokens: jax.Array, mask: jax.Array, *,
                             vocab_size: int, rate: float | jax.Array = 0.1, low: int = 0
                             ) -> tuple[jax.Array, jax.Array]:
    """Replaces each real token, with probability ``rate``, by an id uniform in ``[low,
    vocab_size)`` (``low`` skips special ids at the start of the vocabulary)."""
    tokens, mask = _check(tokens, mask, "random_token_replacement")
    if not isinstance(vocab_size, int) or not 0 <= low < vocab_size:
        raise ValueError(f"random_token_replacement: need 0 <= low < vocab_size, got "
                         f"low={low!r}, vocab_size={vocab_size!r}")
    k_hit, k_new = jax.random.split(key)
    hit = mask & (jax.random.uniform(k_hit, tokens.shape) < rate)
    new = jax.random.randint(k_new, tokens.shape, low, vocab_size).astype(tokens.dtype)
    return jnp.where(hit, new, tokens), mask


def nearest_neighbours(embeddings: jax.Array, *, k: int, special_ids: Sequence[int] = (),
                       block: int = 1024) -> jax.Array:
    """The ``k`` nearest neighbours of every token by cosine similarity, itself excluded.

    Args:
      embeddings: ``[vocab, d]`` float token embeddings (e.g. a model's input embedding table).
      k: static number of neighbours (< vocab).
      special_ids: ids (padding, mask, separators) that are never anyone's neighbour and whose
        own row holds only themselves, so synonym functions leave them alone.
      block: rows per similarity block (memory ``block * vocab``).

    Returns:
      ``[vocab, k]`` int32, most similar first.
    """
    embeddings = jnp.asarray(embeddings)
    if embeddings.ndim != 2:
        raise ValueError(f"nearest_neighbours: expected embeddings [vocab, d], got "
                         f"{embeddings.shape}")
    vocab = embeddings.shape[0]
    if not isinstance(k, int) or not 0 < k < vocab - len(set(special_ids)):
        raise ValueError(f"nearest_neighbours: need 0 < k < vocab - specials, got k={k!r} for "
                         f"vocab={vocab} with {len(set(special_ids))} special ids")
    unit = embeddings / jnp.maximum(jnp.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    special = jnp.zeros((vocab,), bool).at[jnp.asarray(list(special_ids), jnp.int32)].set(True)

    def rows(start_rows, ids):
        sim = start_rows @ unit.T  # [block, vocab]
        sim = jnp.where(special[None, :] | (ids[:, None] == jnp.arange(vocab)[None, :]),
                        -jnp.inf, sim)
        return lax.top_k(sim, k)[1].astype(jnp.int32)

    out = []
    for start in range(0, vocab, block):
        ids = jnp.arange(start, min(start + block, vocab))
        out.append(rows(unit[ids], ids))
    table = jnp.concatenate(out)
    return jnp.where(special[:, None], jnp.arange(vocab, dtype=jnp.int32)[:, None], table)


def round_trip(translate: Callable[[list[str]], list[str]],
               translate_back: Callable[[list[str]], list[str]]
               ) -> Callable[[list[str]], list[str]]:
    """Round-trip (back-) translation (Sennrich et al. 2016; Xie et al. 2020): ``texts ->
    translate_back(translate(texts))``. Both are caller-supplied batch functions (a translation
    model); nothing here translates."""
    def paraphrase(texts: list[str]) -> list[str]:
        return translate_back(translate(list(texts)))
    return paraphrase


def cached(fn: Callable[[list[str]], list[str]], *,
           cache: dict[str, str] | None = None) -> Callable[[Sequence[str]], list[str]]:
    """Host-side caching of an expensive string -> string function (a paraphraser, a
    :func:`round_trip` translation): each call sends the distinct strings not yet in ``cache``
    to ``fn`` in ONE batch, stores the answers and returns one output per input, in order.

    Args:
      fn: ``list[str] -> list[str]`` of the same length.
      cache: the dict to keep answers in (pass one to share or persist it; default a new one
        owned by the returned function).

    Raises:
      ValueError: if ``fn`` answers with a different number of strings or non-strings.
    """
    store: dict[str, str] = {} if cache is None else cache

    def apply(texts: Sequence[str]) -> list[str]:
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("cached: inputs must be strings")
        todo = list(dict.fromkeys(t for t in texts if t not in store))
        if todo:
            answers = list(fn(todo))
            if len(answers) != len(todo) or not all(isinstance(a, str) for a in answers):
                raise ValueError(f"cached: {getattr(fn, '__name__', fn)!r} returned "
                                 f"{len(answers)} items for {len(todo)} strings (need one string "
                                 "each)")
            store.update(zip(todo, answers, strict=True))
        return [store[t] for t in texts]

    return apply
