"""CLINC150 and Banking77 loaders: counts against the data README, class-disjoint deterministic
splits, class-indexed arrays usable by sample_episode, and clear errors for malformed files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest

from smallsample.data.files import DataError
from smallsample.data.text import (
    OUT_OF_SCOPE,
    TextSet,
    class_indexed,
    class_split,
    encode_labels,
    episodic_split,
    k_shot_indices,
    load_banking77,
    load_clinc150,
    load_clinc150_domains,
    random_class_indexed,
)
from smallsample.episodes import sample_episode

ROOT = Path(os.environ.get("SMALLSAMPLE_DATA") or "/work/shared/data")
needs_data = pytest.mark.skipif(not (ROOT / "text" / "clinc150" / "data_full.json").is_file(),
                                reason=f"no text data under {ROOT} (set SMALLSAMPLE_DATA)")


@pytest.fixture(scope="module")
def clinc():
    return load_clinc150(root=ROOT)


@pytest.fixture(scope="module")
def banking():
    return load_banking77(root=ROOT)


@needs_data
def test_clinc150_counts_match_readme(clinc):
    for split, per_intent in (("train", 100), ("val", 20), ("test", 30)):
        s = clinc[split]
        assert s.num_classes == 150 and len(s.texts) == 150 * per_intent
        np.testing.assert_array_equal(np.bincount(s.labels, minlength=150), per_intent)
    for split, n in (("oos_train", 100), ("oos_val", 100), ("oos_test", 1000)):
        assert len(clinc[split].texts) == n
        assert (clinc[split].labels == OUT_OF_SCOPE).all()
    first = clinc["train"]
    assert first.texts[0] == "what expression would i use to say i love you if i were an italian"
    assert first.class_names[first.labels[0]] == "translate"
    domains = load_clinc150_domains(root=ROOT)
    assert len(domains) == 10 and all(len(v) == 15 for v in domains.values())
    assert sorted(i for v in domains.values() for i in v) == first.class_names


@needs_data
def test_banking77_counts_match_readme(banking):
    assert len(banking["train"].texts) == 10_003 and len(banking["test"].texts) == 3_080
    categories = json.loads((ROOT / "text/banking77/categories.json").read_text())
    assert banking["train"].class_names == categories and len(categories) == 77
    np.testing.assert_array_equal(np.bincount(banking["test"].labels, minlength=77), 40)
    assert np.bincount(banking["train"].labels, minlength=77).min() > 0
    assert banking["train"].texts[0] == "I am still waiting on my card?"
    assert any("\n" in t for t in banking["train"].texts)  # quoted multi-line rows parsed whole


def test_env_var_locates_data_and_missing_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("SMALLSAMPLE_DATA", str(tmp_path))
    with pytest.raises(DataError, match=r"text/clinc150/data_full.json is missing.*SMALLSAMPLE"):
        load_clinc150()
    if (ROOT / "text").is_dir():
        monkeypatch.setenv("SMALLSAMPLE_DATA", str(ROOT))
        assert len(load_banking77()["test"].texts) == 3_080


@needs_data
@pytest.mark.parametrize("dataset,by,sizes", [("clinc150", "class", (50, 50, 50)),
                                              ("clinc150", "domain", (60, 45, 45)),
                                              ("banking77", "class", (25, 25, 27))])
def test_episodic_splits_are_class_disjoint_and_deterministic(dataset, by, sizes, clinc,
                                                               banking):
    parts = episodic_split(dataset, seed=0, by=by, root=ROOT)
    names = [set(parts[p].class_names) for p in ("train", "val", "test")]
    assert tuple(len(n) for n in names) == sizes
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    upstream = clinc if dataset == "clinc150" else banking
    splits = ("train", "val", "test") if dataset == "clinc150" else ("train", "test")
    assert set.union(*names) == set(upstream["train"].class_names)
    # Every labelled utterance lands, with its intent, in the part of its class.
    pooled = sorted((t, s.class_names[y]) for sp in splits
                    for s in [upstream[sp]] for t, y in zip(s.texts, s.labels, strict=True))
    got = sorted((t, p.class_names[y]) for p in parts.values()
                 for t, y in zip(p.texts, p.labels, strict=True))
    assert got == pooled
    if by == "domain":
        domains = load_clinc150_domains(root=ROOT)
        for n in names:  # whole domains only
            assert all(set(v) <= n or not set(v) & n for v in domains.values())
    again = episodic_split(dataset, seed=0, by=by, root=ROOT)
    other = episodic_split(dataset, seed=1, by=by, root=ROOT)
    assert all(again[p].class_names == parts[p].class_names for p in parts)
    assert other["test"].class_names != parts["test"].class_names


def test_class_split_is_pinned_and_order_free():
    names = [f"intent_{i}" for i in range(10)]
    a = class_split(names, seed=0, sizes=(3, 3, 4))
    assert class_split(names[::-1], seed=0, sizes=(3, 3, 4)) == a
    # The split is sha256-based, hence the same on every machine and NumPy version.
    assert a == (["intent_0", "intent_2", "intent_6"], ["intent_1", "intent_8", "intent_9"],
                 ["intent_3", "intent_4", "intent_5", "intent_7"])
    with pytest.raises(ValueError, match=r"sizes \(3, 3\) must"):
        class_split(names, seed=0, sizes=(3, 3))


def test_class_indexed_against_loop_and_with_sample_episode():
    labels = np.array([2, 0, -1, 1, 0, 2, 2, 1, 0, 1, 2, 0])
    idx = class_indexed(labels, num_classes=3)
    expected = [[i for i, y in enumerate(labels) if y == c][:3] for c in range(3)]
    np.testing.assert_array_equal(idx, expected)
    assert class_indexed(labels, num_classes=3, per_class=2).shape == (3, 2)
    with pytest.raises(ValueError, match="per_class=4 is more than the 3"):
        class_indexed(labels, num_classes=3, per_class=4)
    # embeddings[idx] is the class-indexed array of sample_episode: row c holds class c only.
    emb = np.stack([labels, np.arange(len(labels))], axis=1).astype(np.float32)  # [n, 2]
    ep = sample_episode(jax.random.key(0), emb[idx], ways=2, shots=1, queries=2)
    assert ep.support_x.shape == (2, 2) and ep.query_x.shape == (4, 2)
    for y, x in zip(ep.query_y, ep.query_x, strict=True):
        assert x[0] == ep.support_x[int(y), 0]  # the query's true class is its label's class


@needs_data
def test_k_shot_indices(clinc):
    labels = clinc["train"].labels
    a = k_shot_indices(jax.random.key(0), labels, num_classes=150, shots=5)
    assert a.shape == (150, 5)
    np.testing.assert_array_equal(labels[a], np.arange(150)[:, None].repeat(5, 1))
    assert len(np.unique(a)) == 750
    np.testing.assert_array_equal(k_shot_indices(jax.random.key(0), labels, num_classes=150,
                                                 shots=5), a)
    assert (k_shot_indices(jax.random.key(1), labels, num_classes=150, shots=5) != a).any()
    with pytest.raises(ValueError, match="shots=101"):
        k_shot_indices(jax.random.key(0), labels, num_classes=150, shots=101)


def write_clinc(root: Path, data) -> None:
    folder = root / "text" / "clinc150"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data_full.json").write_text(data if isinstance(data, str) else json.dumps(data))


def test_malformed_clinc150_names_file_and_row(tmp_path):
    good = {k: [["hi", "greeting"]] for k in ("train", "val", "test")}
    good.update({k: [["x", "oos"]] for k in ("oos_train", "oos_val", "oos_test")})
    write_clinc(tmp_path, good)
    assert load_clinc150(root=tmp_path)["train"].class_names == ["greeting"]
    write_clinc(tmp_path, {**good, "train": [["hi", "greeting"], ["a", "b", "c"]]})
    with pytest.raises(DataError, match=r"data_full.json: train row 1: expected \[text, intent\]"):
        load_clinc150(root=tmp_path)
    write_clinc(tmp_path, {k: v for k, v in good.items() if k != "oos_val"})
    with pytest.raises(DataError, match="no key 'oos_val'"):
        load_clinc150(root=tmp_path)
    write_clinc(tmp_path, '{"train": [')
    with pytest.raises(DataError, match="data_full.json: not valid JSON"):
        load_clinc150(root=tmp_path)


def test_malformed_banking77_names_file_and_row(tmp_path):
    folder = tmp_path / "text" / "banking77"
    folder.mkdir(parents=True)
    (folder / "categories.json").write_text('["card_arrival", "top_up_failed"]')
    (folder / "test.csv").write_text("text,category\nhello,card_arrival\n")
    (folder / "train.csv").write_text('text,category\n"two\nlines",top_up_failed\nbad,row,x\n')
    with pytest.raises(DataError, match=r"train.csv: row 2 \(line 4\): expected 2 fields"):
        load_banking77(root=tmp_path)
    (folder / "train.csv").write_text("text,category\nok,card_arrival\nhm,no_such_intent\n")
    with pytest.raises(DataError, match=r"train.csv: row 2 \(line 3\): unknown category"):
        load_banking77(root=tmp_path)
    (folder / "train.csv").write_text("sentence,label\nok,card_arrival\n")
    with pytest.raises(DataError, match="train.csv: header is"):
        load_banking77(root=tmp_path)


def test_class_indexed_takes_class_names():
    names = np.array(["b", "a", "c", "a", "b", "c", "c", "a", "b"])
    idx = class_indexed(names)  # rows in sorted order: a, b, c
    np.testing.assert_array_equal(idx, [[1, 3, 7], [0, 4, 8], [2, 5, 6]])
    np.testing.assert_array_equal(class_indexed(list(names), class_names=["c", "a", "b"]),
                                  idx[[2, 0, 1]])
    ints, vocab = encode_labels(names)
    np.testing.assert_array_equal(class_indexed(ints, num_classes=3), idx)
    assert vocab == ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"labels not in class_names: \['c'\]"):
        class_indexed(names, class_names=["a", "b"])
    with pytest.raises(ValueError, match="labels must be integers"):
        class_indexed(np.array([0.0, 1.0]))


def test_random_class_indexed_samples_within_each_class():
    rng = np.random.default_rng(0)
    labels = np.concatenate([np.full(n, c) for c, n in enumerate([5, 9, 30])] + [[-1, -1]])
    labels = labels[rng.permutation(labels.size)]
    a = random_class_indexed(jax.random.key(0), labels)
    assert a.shape == (3, 5)
    np.testing.assert_array_equal(labels[a], np.arange(3)[:, None].repeat(5, 1))
    assert len(np.unique(a)) == 15
    np.testing.assert_array_equal(random_class_indexed(jax.random.key(0), labels), a)
    # Same draw as k_shot_indices of the same key; another key draws other rows of class 2.
    np.testing.assert_array_equal(
        a[:, :3], k_shot_indices(jax.random.key(0), labels, num_classes=3, shots=3))
    picks = [set(random_class_indexed(jax.random.key(k), labels)[2]) for k in range(20)]
    assert len(set().union(*picks)) > 20  # over keys, most of the 30 rows of class 2 are drawn
    # Against a loop: each row's indices belong to its class and none repeats.
    first = class_indexed(labels)
    assert [sorted(r) for r in first.tolist()] != [sorted(r) for r in a.tolist()]
    with pytest.raises(ValueError, match="per_class=6 is more than the 5"):
        random_class_indexed(jax.random.key(0), labels, per_class=6)


def test_episodic_split_of_any_textset():
    names = [f"c{i}" for i in range(10)]
    labels = np.repeat(np.arange(10), 3).astype(np.int32)
    data = TextSet([f"t{i}" for i in range(30)], labels, names)
    parts = episodic_split(data, seed=0)
    assert [parts[p].num_classes for p in ("train", "val", "test")] == [3, 3, 4]
    for p in parts.values():
        for t, y in zip(p.texts, p.labels, strict=True):
            assert names[labels[int(t[1:])]] == p.class_names[y]
    sized = episodic_split(data, seed=0, sizes=(6, 2, 2))
    assert [len(sized[p].class_names) for p in ("train", "val", "test")] == [6, 2, 2]
    with pytest.raises(ValueError, match="split by class only"):
        episodic_split(data, by="domain")
    with pytest.raises(ValueError, match="or a TextSet"):
        episodic_split("snips")
