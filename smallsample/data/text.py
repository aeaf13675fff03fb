"""Intent classification text sets: CLINC150 and Banking77, read from their upstream files.

Files are looked up under ``<root>/text/<name>/``, where ``root`` is the explicit argument, else
``$SMALLSAMPLE_DATA`` (see :func:`smallsample.data.files.data_root`); a missing or malformed file
raises :class:`~smallsample.data.files.DataError` naming the file (and the row).

- CLINC150 (Larson et al. 2019): ``clinc150/data_full.json`` (keys ``train`` / ``val`` / ``test``:
  150 intents x 100 / 20 / 30 utterances; ``oos_train`` / ``oos_val`` / ``oos_test``: 100 / 100 /
  1000 out-of-scope utterances; items ``[text, intent]``) and ``clinc150/domains.json`` (10 domains
  of 15 intents).
- Banking77 (Casanueva et al. 2020): ``banking77/{train,test}.csv`` (columns ``text,category``;
  10,003 / 3,080 rows) and ``banking77/categories.json`` (the 77 intents).

Two evaluation protocols:

- K-shot per class on the standard splits: :func:`load_clinc150` / :func:`load_banking77` give the
  full upstream splits; :func:`k_shot_indices` draws ``shots`` training examples per class.
- Episodic, on class-disjoint splits: :func:`episodic_split` pools all of a class's labelled
  utterances (every upstream split) and deals the classes into train / val / test parts by a
  seed (CLINC150 50/50/50 intents, or by domain 4/3/3 domains; Banking77 25/25/27 intents, the
  sizes of ProtAugment, Dopierre et al. 2021), or the classes of any :class:`TextSet` (a user's
  file read by :func:`smallsample.data.tables.read_texts`). :func:`random_class_indexed` (a random
  ``per_class`` of each class, by a key) or :func:`class_indexed` (the first ``per_class`` in data
  order) then gives the ``[num_classes, per_class]`` index array that turns embeddings ``[n, d]``
  into the class-indexed ``[num_classes, per_class, d]`` that
  :func:`smallsample.episodes.sample_episode` samples from.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import jax
import numpy as np

from smallsample.data.files import DataError, data_root

OUT_OF_SCOPE = -1
"""Label of CLINC150's out-of-scope utterances (``oos_*`` splits)."""
UNLABELLED = -2
"""Label of every text of an unlabelled file (:func:`smallsample.data.tables.read_texts`)."""

CLINC150_SPLITS = ("train", "val", "test", "oos_train", "oos_val", "oos_test")
CLINC150_EPISODIC_SIZES = (50, 50, 50)
CLINC150_DOMAIN_SIZES = (4, 3, 3)
BANKING77_EPISODIC_SIZES = (25, 25, 27)


class TextSet(NamedTuple):
    """Labelled texts.

    Attributes:
      texts: ``n`` utterances.
      labels: int32 ``[n]``, indices into ``class_names`` (:data:`OUT_OF_SCOPE` for CLINC150's
        out-of-scope utterances, :data:`UNLABELLED` for the texts of an unlabelled file).
      class_names: the intents, ``num_classes`` of them.
    """

    texts: list[str]
    labels: np.ndarray
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def text_file(dataset: str, name: str, root: str | os.PathLike | None = None) -> Path:
    """``<root>/text/<dataset>/<name>``, or a ``DataError`` naming the file and what to do."""
    path = data_root(root) / "text" / dataset / name
    if not path.is_file():
        raise DataError(
            f"{path} is missing: pass root= (a folder holding text/{dataset}/{name}) or set "
            f"SMALLSAMPLE_DATA to such a folder; the file is the upstream {dataset} {name}")
    return path


def read_json(path: Path):
    """The JSON value in ``path``; a ``DataError`` naming the file if it is not UTF-8 JSON (bad
    syntax or bytes, a number of more than 4300 digits, nesting too deep to parse)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, RecursionError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise DataError(f"{path}: not valid JSON ({type(e).__name__}: {e})") from e


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """The text of ``path``; a ``DataError`` naming the file if it is not ``encoding``."""
    try:
        return path.read_text(encoding=encoding)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not {encoding} text ({e})") from e


def csv_rows(path: Path, reader, encoding: str = "utf-8"):
    """The rows of ``reader`` (a ``csv.reader`` over ``path``), with a ``DataError`` naming the
    file and line for a malformed row (a field over ``csv.field_size_limit()``...) or bytes that
    are not ``encoding``."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(f"{path}: line {reader.line_num}: not valid CSV ({e})") from e
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not {encoding} text (after line {reader.line_num}: "
                            f"{e})") from e
        yield row


def sorted_names(values) -> list[str]:
    """The distinct ``values`` as strings, sorted: by number when every one is an integer
    (``'2' < '10'``, so labels ``0..C-1`` keep their numbers), else as strings."""
    names = {str(v) for v in values}
    try:
        return sorted(names, key=int)
    except ValueError:
        return sorted(names)


def encode_labels(values: Sequence) -> tuple[np.ndarray, list[str]]:
    """Labels of any kind (strings, ints) -> (int32 ``[n]`` indices into the names, the names).

    The names are :func:`sorted_names` of the values, so the same labels always give the same
    mapping, whatever their order.
    """
    names = sorted_names(values)
    index = {n: i for i, n in enumerate(names)}
    return np.asarray([index[str(v)] for v in values], np.int32).reshape(len(values)), names


def labels_of(intents: Sequence[str], class_names: Sequence[str], where: str,
              *, allow_oos: bool = False) -> np.ndarray:
    index = {c: i for i, c in enumerate(class_names)}
    out = np.empty(len(intents), np.int32)
    for i, intent in enumerate(intents):
        if allow_oos and intent == "oos":
            out[i] = OUT_OF_SCOPE
        elif intent in index:
            out[i] = index[intent]
        else:
            raise DataError(f"{where} row {i}: unknown intent {intent!r}")
    return out


# --- CLINC150 ----------------------------------------------------------------------------------

def load_clinc150(*, root: str | os.PathLike | None = None) -> dict[str, TextSet]:
    """The CLINC150 splits: ``train``, ``val``, ``test``, ``oos_train``, ``oos_val``, ``oos_test``.

    ``class_names`` (the same in every split) are the 150 in-scope intents, sorted; out-of-scope
    utterances have label :data:`OUT_OF_SCOPE`.
    """
    path = text_file("clinc150", "data_full.json", root)
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a JSON object with keys {CLINC150_SPLITS}")
    parsed: dict[str, tuple[list[str], list[str]]] = {}
    for split in CLINC150_SPLITS:
        if split not in raw:
            raise DataError(f"{path}: no key {split!r} (expected {CLINC150_SPLITS})")
        if not isinstance(raw[split], list):
            raise DataError(f"{path}: {split!r} is {raw[split]!r:.60}, not a list of "
                            f"[text, intent]")
        texts, intents = [], []
        for row, item in enumerate(raw[split]):
            if (not isinstance(item, list) or len(item) != 2
                    or not all(isinstance(s, str) for s in item)):
                raise DataError(f"{path}: {split} row {row}: expected [text, intent], got "
                                f"{item!r:.80}")
            texts.append(item[0])
            intents.append(item[1])
        parsed[split] = texts, intents
    class_names = sorted({i for s in ("train", "val", "test") for i in parsed[s][1]} - {"oos"})
    return {split: TextSet(texts, labels_of(intents, class_names, f"{path}: {split}",
                                            allow_oos=True), class_names)
            for split, (texts, intents) in parsed.items()}


def load_clinc150_domains(*, root: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """CLINC150's ``domains.json``: domain -> its intents (10 domains of 15)."""
    path = text_file("clinc150", "domains.json", root)
    raw = read_json(path)
    if not isinstance(raw, dict) or not all(
            isinstance(v, list) and all(isinstance(s, str) for s in v) for v in raw.values()):
        raise DataError(f"{path}: expected an object mapping each domain to a list of intents")
    return {k: list(v) for k, v in raw.items()}


# --- Banking77 ---------------------------------------------------------------------------------

def load_banking77(*, root: str | os.PathLike | None = None) -> dict[str, TextSet]:
    """The Banking77 splits ``train`` (10,003) and ``test`` (3,080); ``class_names`` in the order
    of ``categories.json`` (77 intents)."""
    cat_path = text_file("banking77", "categories.json", root)
    class_names = read_json(cat_path)
    if not isinstance(class_names, list) or not all(isinstance(c, str) for c in class_names):
        raise DataError(f"{cat_path}: expected a JSON list of category names")
    out = {}
    for split in ("train", "test"):
        path = text_file("banking77", f"{split}.csv", root)
        index = {c: i for i, c in enumerate(class_names)}
        texts, labels = [], []
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            rows = csv_rows(path, reader)
            header = next(rows, None)
            if header != ["text", "category"]:
                raise DataError(f"{path}: header is {header!r:.80}, expected "
                                f"['text', 'category']")
            for row in rows:
                where = f"{path}: row {len(texts) + 1} (line {reader.line_num})"
                if len(row) != 2:
                    raise DataError(f"{where}: expected 2 fields text,category, got "
                                    f"{len(row)}: {row!r:.80}")
                if row[1] not in index:
                    raise DataError(f"{where}: unknown category {row[1]!r} (not in {cat_path})")
                texts.append(row[0])
                labels.append(index[row[1]])
        labels = np.asarray(labels, np.int32)
        out[split] = TextSet(texts, labels, list(class_names))
    return out


# --- class-disjoint splits and class-indexed arrays ---------------------------------------------

def class_split(class_names: Sequence[str], *, seed: int,
                sizes: Sequence[int]) -> tuple[list[str], ...]:
    """Deals ``class_names`` into disjoint parts of ``sizes`` classes, by ``seed``.

    Classes are ordered by ``sha256(f"{seed}:{name}")``, so the split depends only on the seed and
    the names (not on the NumPy version or the order of ``class_names``); each part is sorted.
    """
    names = list(class_names)
    if len(set(names)) != len(names):
        raise ValueError("class_names has duplicates")
    if sum(sizes) != len(names) or any(s < 0 for s in sizes):
        raise ValueError(f"sizes {tuple(sizes)} must be >= 0 and sum to the {len(names)} classes")
    order = sorted(names, key=lambda n: hashlib.sha256(f"{seed}:{n}".encode()).hexdigest())
    parts, start = [], 0
    for s in sizes:
        parts.append(sorted(order[start:start + s]))
        start += s
    return tuple(parts)


def subset(data: TextSet, classes: Sequence[str]) -> TextSet:
    """The examples of ``classes``, relabelled ``0..len(classes)-1`` in that order."""
    index = {c: i for i, c in enumerate(data.class_names)}
    missing = [c for c in classes if c not in index]
    if missing:
        raise ValueError(f"classes not in the data: {missing}")
    remap = np.full(len(data.class_names), -1, np.int32)
    remap[[index[c] for c in classes]] = np.arange(len(classes), dtype=np.int32)
    keep = np.flatnonzero((data.labels >= 0) & (remap[np.maximum(data.labels, 0)] >= 0))
    return TextSet([data.texts[i] for i in keep], remap[data.labels[keep]], list(classes))


def concat(parts: Sequence[TextSet]) -> TextSet:
    """Texts of several sets with the same ``class_names``, one after the other."""
    names = parts[0].class_names
    if any(p.class_names != names for p in parts):
        raise ValueError("the sets have different class_names")
    return TextSet([t for p in parts for t in p.texts],
                   np.concatenate([p.labels for p in parts]), list(names))


def episodic_split(dataset: Literal["clinc150", "banking77"] | TextSet, *, seed: int = 0,
                   by: Literal["class", "domain"] = "class",
                   sizes: Sequence[int] | None = None,
                   root: str | os.PathLike | None = None) -> dict[str, TextSet]:
    """Class-disjoint ``train`` / ``val`` / ``test`` parts for episodic evaluation.

    Each part holds every labelled utterance of its classes, relabelled ``0..C-1`` in the sorted
    order of its class names; texts with a negative label (out-of-scope, unlabelled) are left out.

    - ``'clinc150'`` (all upstream splits pooled, in the order train, val, test), ``by='class'``:
      50 / 50 / 50 intents (150 utterances each); ``by='domain'``: whole domains, 4 / 3 / 3 of the
      10 (60 / 45 / 45 intents).
    - ``'banking77'`` (train and test pooled): 25 / 25 / 27 intents (``by='class'`` only).
    - a :class:`TextSet` (e.g. a user's file, :func:`smallsample.data.tables.read_texts`): its
      classes, ``by='class'`` only; ``sizes`` default to thirds (``C // 3``, ``C // 3``, the
      rest).

    Args:
      sizes: classes per part (train, val, test), summing to the number of classes (domains for
        ``by='domain'``); default as above.
    """
    if isinstance(dataset, TextSet):
        if by != "class":
            raise ValueError(f"a TextSet is split by class only, got by={by!r}")
        pooled = dataset
        n = pooled.num_classes
        if sizes is None:
            sizes = (n // 3, n // 3, n - 2 * (n // 3))
        parts = class_split(pooled.class_names, seed=seed, sizes=sizes)
    elif dataset == "clinc150":
        sets = load_clinc150(root=root)
        pooled = concat([sets["train"], sets["val"], sets["test"]])
        if by == "class":
            parts = class_split(pooled.class_names, seed=seed,
                                sizes=sizes or CLINC150_EPISODIC_SIZES)
        elif by == "domain":
            domains = load_clinc150_domains(root=root)
            dom_parts = class_split(sorted(domains), seed=seed,
                                    sizes=sizes or CLINC150_DOMAIN_SIZES)
            parts = tuple(sorted(i for d in p for i in domains[d]) for p in dom_parts)
        else:
            raise ValueError(f"by must be 'class' or 'domain', got {by!r}")
    elif dataset == "banking77":
        if by != "class":
            raise ValueError(f"banking77 has no domains: by must be 'class', got {by!r}")
        sets = load_banking77(root=root)
        pooled = concat([sets["train"], sets["test"]])
        parts = class_split(pooled.class_names, seed=seed,
                            sizes=sizes or BANKING77_EPISODIC_SIZES)
    else:
        raise ValueError(f"dataset must be 'clinc150', 'banking77' or a TextSet, got "
                         f"{dataset!r:.80}")
    return {name: subset(pooled, part) for name, part in zip(("train", "val", "test"), parts,
                                                              strict=True)}


def _int_labels(labels, num_classes: int | None,
                class_names: Sequence[str] | None) -> tuple[np.ndarray, int]:
    """Labels as int64 ``[n]`` (negative = left out) and the number of classes."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be [n], got shape {labels.shape}")
    if labels.dtype.kind in "USO":  # class names: rows in the order of class_names
        names = sorted_names(labels) if class_names is None else [str(c) for c in class_names]
        index = {n: i for i, n in enumerate(names)}
        unknown = sorted({str(v) for v in labels} - set(index))
        if unknown:
            raise ValueError(f"labels not in class_names: {unknown[:5]}")
        if num_classes is not None and num_classes != len(names):
            raise ValueError(f"num_classes={num_classes} but the labels name {len(names)} "
                             f"classes")
        return np.asarray([index[str(v)] for v in labels], np.int64), len(names)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers (class indices, negative = left out) or "
                         f"class names, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if num_classes is None:
        num_classes = (len(class_names) if class_names is not None else
                       int(labels.max()) + 1 if labels.size else 0)
    if labels.size and labels.max() >= num_classes:
        raise ValueError(f"labels go up to {int(labels.max())}, not below num_classes="
                         f"{num_classes}")
    return labels, num_classes


def _grouped(order: np.ndarray, labels: np.ndarray, num_classes: int, per_class: int | None,
             what: str = "per_class") -> np.ndarray:
    """``order`` (indices sorted by label, negatives first) -> ``[num_classes, per_class]``."""
    counts = np.bincount(labels[labels >= 0], minlength=num_classes)
    smallest = int(counts.min()) if num_classes else 0
    per_class = smallest if per_class is None else per_class
    if per_class > smallest or per_class < 0:
        raise ValueError(f"{what}={per_class} is more than the {smallest} examples of the "
                         f"smallest class ({int(np.argmin(counts))})")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) + int((labels < 0).sum())
    return order[starts[:, None] + np.arange(per_class)[None, :]]


def class_indexed(labels: np.ndarray | Sequence, *, num_classes: int | None = None,
                  per_class: int | None = None,
                  class_names: Sequence[str] | None = None) -> np.ndarray:
    """Example indices grouped by class, the first ``per_class`` of each in data order: int64
    ``[num_classes, per_class]``.

    The deterministic twin of :func:`random_class_indexed` (which samples within each class with
    a key, so that a class cut to ``per_class`` is not cut to the start of the file: prefer it).
    ``embeddings[class_indexed(...)]`` is the class-indexed ``[num_classes, per_class, d]`` array
    of :func:`smallsample.episodes.sample_episode`. A dense array (rather than a padded one plus
    counts) keeps episode sampling one static-shaped gather on the device; the price is that
    larger classes are cut to ``per_class``, by default the smallest class's count.

    Args:
      labels: ``[n]`` class indices (negative ones are left out) or class names (strings).
      num_classes: rows; default ``len(class_names)``, else the largest label + 1 (for names:
        the number of names).
      per_class: columns; default the smallest class's count.
      class_names: for string labels, the class of each row (default the distinct labels,
        :func:`sorted_names`, as :func:`encode_labels` and ``read_texts`` number them).
    """
    labels, num_classes = _int_labels(labels, num_classes, class_names)
    order = np.argsort(labels, kind="stable")
    return _grouped(order, labels, num_classes, per_class)


def random_class_indexed(key: jax.Array, labels: np.ndarray | Sequence, *,
                         num_classes: int | None = None, per_class: int | None = None,
                         class_names: Sequence[str] | None = None) -> np.ndarray:
    """Example indices grouped by class, ``per_class`` of each drawn at random by ``key``: int64
    ``[num_classes, per_class]`` (arguments as :func:`class_indexed`).

    Within each class the examples are ordered at random, so the first ``k`` columns are a random
    ``k`` of the class as well; ``random_class_indexed(key, labels, per_class=k)`` equals
    ``k_shot_indices(key, labels, shots=k)``.
    """
    labels, num_classes = _int_labels(labels, num_classes, class_names)
    u = np.asarray(jax.random.uniform(key, labels.shape))
    order = np.lexsort((u, labels))  # by label, then by the random key
    return _grouped(order, labels, num_classes, per_class)


def k_shot_indices(key: jax.Array, labels: np.ndarray, *, num_classes: int,
                   shots: int) -> np.ndarray:
    """``shots`` distinct random examples of each class: int64 indices ``[num_classes, shots]``.

    For K-shot-per-class evaluation on a standard split (e.g. CLINC150 ``train``): the training
    set is ``texts[idx.ravel()]``. Within each class the examples are ordered at random, so the
    first ``k < shots`` columns are a K-shot subset of the larger one.
    """
    labels, num_classes = _int_labels(labels, num_classes, None)
    counts = np.bincount(labels[labels >= 0], minlength=num_classes)
    if shots <= 0 or shots > counts.min():
        raise ValueError(f"shots={shots} must be in [1, {int(counts.min())}] (the smallest class)")
    return random_class_indexed(key, labels, num_classes=num_classes, per_class=shots)
