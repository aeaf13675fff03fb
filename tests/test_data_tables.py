"""read_texts: a user's CSV / TSV / JSONL file into a TextSet, checked against the rows written,
with clear errors naming the file and row for bad input."""

from __future__ import annotations

import csv
import json

import jax
import numpy as np
import pytest

from smallsample.data.files import DataError
from smallsample.data.tables import read_texts
from smallsample.data.text import (
    UNLABELLED,
    class_indexed,
    episodic_split,
    random_class_indexed,
)

ROWS = [("I lost my card, help", "card_lost"), ("top up failed\ntwice", "top_up"),
        ("où est ma carte ?", "card_lost"), ('he said "refund"', "refund"),
        ("refund please", "refund"), ("card never arrived", "card_lost"),
        ("why did my top-up fail", "top_up")]


def write_csv(path, rows, header=("text", "label"), delimiter=",", bom=False):
    with open(path, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_jsonl(path, items):
    path.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    return path


def expected(rows):
    names = sorted({y for _, y in rows})
    return [t for t, _ in rows], [names.index(y) for _, y in rows], names


@pytest.mark.parametrize("bom", [False, True])
def test_csv_texts_labels_and_sorted_names(tmp_path, bom):
    s = read_texts(write_csv(tmp_path / "mine.csv", ROWS, bom=bom))
    texts, labels, names = expected(ROWS)
    assert s.texts == texts  # quoted commas, quotes, a line break and accents kept as written
    assert s.class_names == names == ["card_lost", "refund", "top_up"]
    assert s.labels.dtype == np.int32 and s.labels.tolist() == labels
    # The same file in another order gives the same mapping.
    again = read_texts(write_csv(tmp_path / "shuffled.csv", ROWS[::-1]))
    assert again.class_names == names
    assert [again.class_names[y] for y in again.labels] == [y for _, y in ROWS[::-1]]


def test_other_columns_tsv_and_extra_columns(tmp_path):
    rows = [(str(i), t, y, "x") for i, (t, y) in enumerate(ROWS)]
    path = write_csv(tmp_path / "mine.tsv", rows, header=("id", "utterance", "intent", "note"),
                     delimiter="\t")
    s = read_texts(path, text_column="utterance", label_column="intent")
    assert (s.texts, s.labels.tolist(), s.class_names) == expected(ROWS)


def test_numeric_labels_sort_by_number(tmp_path):
    rows = [("a", "10"), ("b", "2"), ("c", "0"), ("d", "1"), ("e", "2")]
    s = read_texts(write_csv(tmp_path / "n.csv", rows))
    assert s.class_names == ["0", "1", "2", "10"]
    assert s.labels.tolist() == [3, 2, 0, 1, 2]
    items = [{"text": t, "label": int(y)} for t, y in rows]
    j = read_texts(write_jsonl(tmp_path / "n.jsonl", items))
    assert j.class_names == s.class_names and j.labels.tolist() == s.labels.tolist()


def test_jsonl_with_blank_lines_and_format_override(tmp_path):
    items = [{"text": t, "label": y, "meta": {"k": 1}} for t, y in ROWS]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(i) for i in items[:3]) + "\n\n"
                    + "\n".join(json.dumps(i) for i in items[3:]) + "\n", encoding="utf-8")
    s = read_texts(path)
    assert (s.texts, s.labels.tolist(), s.class_names) == expected(ROWS)
    other = tmp_path / "mine.txt"
    other.write_bytes(path.read_bytes())
    assert read_texts(other, format="jsonl").texts == s.texts
    with pytest.raises(DataError, match=r"mine.txt: cannot tell the format.*format="):
        read_texts(other)


def test_unlabelled_file_gives_texts_only(tmp_path):
    path = write_csv(tmp_path / "pool.csv", [(t,) for t, _ in ROWS], header=("text",))
    s = read_texts(path, label_column=None)
    assert s.texts == [t for t, _ in ROWS] and s.class_names == []
    assert (s.labels == UNLABELLED).all() and s.labels.shape == (len(ROWS),)
    with pytest.raises(DataError, match=r"pool.csv: no column 'label'; the columns are 'text'"):
        read_texts(path)


@pytest.mark.parametrize("content,match", [
    (None, r"nope.csv is missing"),
    ("", r"empty.csv is empty"),
    ("text,label\n", r"empty.csv: no rows of data"),
    ("text,label\nhello,a\n  ,b\n", r"empty.csv: row 2 \(line 3\): empty text in 'text'"),
    ("text,label\nhello,a\nbye,\n", r"empty.csv: row 2 \(line 3\): empty label in 'label'"),
    ("text,label\nhello,a\nbye,b,c\n", r"empty.csv: row 2 \(line 3\): 3 fields, the header "
                                       r"has 2"),
    ("sentence,intent\nhello,a\n", r"empty.csv: no column 'text'; the columns are 'sentence', "
                                   r"'intent'"),
    ("text,label\nhello,a\nbye,a\n", r"empty.csv: only one class \('a'\) in 'label'"),
])
def test_csv_errors_name_file_and_row(tmp_path, content, match):
    path = tmp_path / ("nope.csv" if content is None else "empty.csv")
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=match):
        read_texts(path)


@pytest.mark.parametrize("lines,match", [
    (['{"text": "a", "label": "x"}', '{"text": "b", "label": '],
     r"bad.jsonl: line 2: not JSON"),
    (['{"text": "a", "label": "x"}', '["b", "y"]'], r"bad.jsonl: line 2: expected a JSON object"),
    (['{"text": "a", "label": "x"}', '{"sentence": "b", "label": "y"}'],
     r"bad.jsonl: line 2: no key 'text'; the keys are 'sentence', 'label'"),
    (['{"text": "a", "label": "x"}', '{"text": "", "label": "y"}'],
     r"bad.jsonl: line 2: empty text"),
    (['{"text": "a", "label": ["x"]}'], r"bad.jsonl: line 1: 'label' is \['x'\], not a string"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, lines, match):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=match):
        read_texts(path)


def test_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ncaf\xe9,a\nthé,b\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.csv: not utf-8-sig text"):
        read_texts(path)
    assert read_texts(path, encoding="latin-1").texts == ["caf\xe9", "thé"]


def test_a_users_file_to_episodes(tmp_path):
    # 9 classes x 4..7 texts: read, split by class, then class-indexed by name and by index.
    rows = [(f"text {c}-{i}", f"intent_{c}") for c in range(9) for i in range(4 + c % 4)]
    s = read_texts(write_csv(tmp_path / "mine.csv", rows))
    parts = episodic_split(s, seed=3)
    assert [parts[p].num_classes for p in ("train", "val", "test")] == [3, 3, 3]
    assert set().union(*(parts[p].class_names for p in parts)) == set(s.class_names)
    test = parts["test"]
    for t, y in zip(test.texts, test.labels, strict=True):
        assert t.startswith("text " + test.class_names[y].removeprefix("intent_") + "-")
    by_name = class_indexed([test.class_names[y] for y in test.labels])
    np.testing.assert_array_equal(by_name, class_indexed(test.labels))
    idx = random_class_indexed(jax.random.key(0), test.labels)
    assert idx.shape == (3, int(np.bincount(test.labels).min()))
    np.testing.assert_array_equal(test.labels[idx], np.arange(3)[:, None].repeat(idx.shape[1], 1))
