"""A user's own texts from a CSV, TSV or JSON Lines file.

:func:`read_texts` reads one text column (and optionally one label column) into a
:class:`~smallsample.data.text.TextSet`: labels of any kind (strings, numbers) are mapped to
integers through the sorted names (:func:`~smallsample.data.text.sorted_names`: by number when
every label is an integer, else as strings), so the same file always gives the same mapping, and
the names are kept as ``class_names``. Without a label column the texts come back unlabelled
(labels :data:`~smallsample.data.text.UNLABELLED`, no class names): a file of unlabelled texts, as
for distillation or active learning.

Every problem is a :class:`~smallsample.data.files.DataError` naming the file and the row (CSV:
data row and physical line, as rows may span lines) or line (JSONL): a missing or empty file, a
column that is not there (the message lists those that are), an empty text or label, a JSONL line
that is not a JSON object, a labelled file with one class only.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from smallsample.data.files import DataError
from smallsample.data.text import UNLABELLED, TextSet, csv_rows, encode_labels

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def _format(path: Path, format: str | None) -> str:
    if format is not None:
        if format not in ("csv", "tsv", "jsonl"):
            raise ValueError(f"format must be 'csv', 'tsv' or 'jsonl', got {format!r}")
        return format
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: cannot tell the format from the suffix {path.suffix!r} "
                        f"(known: {', '.join(FORMATS)}); pass format='csv', 'tsv' or 'jsonl'")
    return fmt


def _rows_csv(path: Path, delimiter: str, columns: list[str], encoding: str):
    """Yields ``(where, values)`` for each data row: the values of ``columns``."""
    with open(path, encoding=encoding, newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        rows = csv_rows(path, reader, encoding)
        header = next(rows, None)
        if not header or not any(h.strip() for h in header):
            raise DataError(f"{path}: no header row (the first line must name the columns)")
        header = [h.strip() for h in header]
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataError(f"{path}: no column {missing[0]!r}; the columns are "
                            f"{', '.join(map(repr, header))}")
        at = [header.index(c) for c in columns]
        row_number = 0
        for row in rows:
            if not row:  # a blank line
                continue
            row_number += 1
            where = f"{path}: row {row_number} (line {reader.line_num})"
            if len(row) != len(header):
                raise DataError(f"{where}: {len(row)} fields, the header has {len(header)}: "
                                f"{row!r:.80}")
            yield where, [row[i] for i in at]


def _rows_jsonl(path: Path, columns: list[str], encoding: str):
    with open(path, encoding=encoding) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}: line {n}"
            try:
                item = json.loads(line)
            except (ValueError, RecursionError) as e:  # also huge numbers, deep nesting
                raise DataError(f"{where}: not JSON ({getattr(e, 'msg', e)}): "
                                f"{line.strip()!r:.80}") from e
            if not isinstance(item, dict):
                raise DataError(f"{where}: expected a JSON object, got {line.strip()!r:.80}")
            missing = [c for c in columns if c not in item]
            if missing:
                raise DataError(f"{where}: no key {missing[0]!r}; the keys are "
                                f"{', '.join(map(repr, item))}")
            values = []
            for c in columns:
                v = item[c]
                if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                    raise DataError(f"{where}: {c!r} is {v!r:.60}, not a string or number")
                values.append(v if isinstance(v, str) else str(v))
            yield where, values


def read_texts(path: str | os.PathLike, *, text_column: str = "text",
               label_column: str | None = "label", format: str | None = None,
               encoding: str = "utf-8-sig") -> TextSet:
    """Texts (and labels) from a CSV, TSV or JSON Lines file.

    Args:
      path: the file; ``.csv``, ``.tsv``, ``.jsonl`` / ``.ndjson`` tell the format.
      text_column: the column (JSONL: key) holding the text.
      label_column: the column holding the label, or ``None`` for an unlabelled file.
      format: ``'csv'``, ``'tsv'`` or ``'jsonl'``, overriding the suffix.
      encoding: of the file (the default also accepts a UTF-8 byte-order mark).

    Returns:
      A :class:`~smallsample.data.text.TextSet`: the ``n`` texts in file order; labels int32
      ``[n]`` indexing ``class_names`` (the sorted distinct labels), or all
      :data:`~smallsample.data.text.UNLABELLED` with ``class_names == []`` when ``label_column``
      is ``None``. Texts are kept as written (not stripped).

    Raises:
      DataError: naming the file and row or line (module docstring).
    """
    path = Path(path)
    fmt = _format(path, format)
    if not path.is_file():
        raise DataError(f"{path} is missing")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty")
    columns = [text_column] + ([label_column] if label_column is not None else [])
    rows = (_rows_jsonl(path, columns, encoding) if fmt == "jsonl" else
            _rows_csv(path, "\t" if fmt == "tsv" else ",", columns, encoding))
    texts, labels = [], []
    try:
        for where, values in rows:
            if not values[0].strip():
                raise DataError(f"{where}: empty text in {text_column!r}")
            texts.append(values[0])
            if label_column is not None:
                if not values[1].strip():
                    raise DataError(f"{where}: empty label in {label_column!r}")
                labels.append(values[1].strip())
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not {encoding} text ({e}); pass encoding=") from e
    if not texts:
        raise DataError(f"{path}: no rows of data")
    if label_column is None:
        return TextSet(texts, np.full(len(texts), UNLABELLED, np.int32), [])
    ids, names = encode_labels(labels)
    if len(names) < 2:
        raise DataError(f"{path}: only one class ({names[0]!r}) in {label_column!r}; a labelled "
                        f"set needs two or more (pass label_column=None for unlabelled texts)")
    return TextSet(texts, ids, names)
