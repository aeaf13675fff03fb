"""The practitioner's text commands: train a small classifier on a file of a few labelled texts per
class (and optionally a file of unlabelled ones), then classify new texts with it.

    smallsample text train examples/topics.csv --unlabelled examples/topics_unlabelled.txt \\
        --out topics-model
    smallsample text classify topics-model examples/topics_new.txt --threshold 0.5

:func:`train_classifier` reads and checks every input before any slow work (a
:class:`~smallsample.data.files.DataError`, ``ValueError`` or ``OSError`` naming the file and the
value), fine-tunes a large teacher encoder on the labelled texts
(:func:`smallsample.distill.text.finetune_classifier`), computes its logits on the labelled and
unlabelled texts (cached on disk), distils them into a small student
(:func:`~smallsample.distill.text.distill_classifier`) and writes the student as a classifier
folder (:func:`smallsample.text.classifier.save_classifier`: whole or not at all), recording in
its ``info`` the inputs' sha256, the settings, the class counts and the teacher. Without a teacher
the student is fine-tuned directly. :func:`classify_file` reads such a folder and writes one row
per text: the label (empty when out-of-scope), the confidence, the out-of-scope flag and the three
most likely classes; given a column of true labels it also scores them
(:func:`score_predictions`: accuracy on the known classes, texts of other labels flagged).
:func:`register` adds both as ``smallsample text train`` / ``classify``.

Files: labelled and unlabelled texts are CSV, TSV or JSON Lines, read by
:func:`smallsample.data.tables.read_texts` with the columns named; unlabelled texts and texts to
classify may also be a ``.txt`` file of one text a line.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from smallsample.data.files import DataError
from smallsample.data.tables import FORMATS, read_texts
from smallsample.data.text import TextSet, csv_rows, read_text
from smallsample.paths import user_dir

DEFAULT_TEACHER = "all-mpnet-base-v2"
DEFAULT_STUDENT = "all-MiniLM-L6-v2"
MIN_PER_CLASS = 2
TOP_K = 3
LINE_SUFFIXES = (".txt",)
OUTPUT_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson")


def teacher_cache_dir() -> Path:
    """Where teacher logits are cached: ``$SMALLSAMPLE_TEACHER_CACHE``, else
    ``~/.cache/smallsample/teacher``."""
    return user_dir("SMALLSAMPLE_TEACHER_CACHE", "teacher")


# --- reading and checking the inputs ------------------------------------------------------------

def read_lines(path: str | os.PathLike) -> list[str]:
    """The texts of a ``.txt`` file, one a line (stripped; blank lines skipped).

    Raises:
      DataError: naming the file when it is missing, empty, has no text or is not UTF-8.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} is missing" if not path.exists() else f"{path} is not a file")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty")
    texts = [line.strip() for line in read_text(path, encoding="utf-8-sig").splitlines()]
    texts = [t for t in texts if t]
    if not texts:
        raise DataError(f"{path}: no texts (every line is blank)")
    return texts


def _is_lines(path: Path) -> bool:
    return path.suffix.lower() in LINE_SUFFIXES


def _short(text: str, n: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= n else text[:n - 3] + "...")


def read_labelled(path: str | os.PathLike, *, text_column: str = "text",
                  label_column: str = "label") -> TextSet:
    """The labelled texts of a CSV, TSV or JSONL file, checked for training.

    Beyond :func:`~smallsample.data.tables.read_texts`' checks (a missing or empty file, an
    unknown column, an empty text or label, one class only), every class needs
    :data:`MIN_PER_CLASS` examples, and no text may carry two different labels.

    Raises:
      DataError: naming the file, the column and the classes or text at fault.
    """
    path = Path(path)
    if _is_lines(path):
        raise DataError(f"{path}: a .txt file has no labels; labelled texts are a CSV, TSV or "
                        f"JSONL file with a {text_column!r} and a {label_column!r} column")
    data = read_texts(path, text_column=text_column, label_column=label_column)
    counts = np.bincount(data.labels, minlength=data.num_classes)
    few = [(data.class_names[c], int(n)) for c, n in enumerate(counts) if n < MIN_PER_CLASS]
    if few:
        listed = ", ".join(f"{name!r} has {n}" for name, n in few)
        raise DataError(f"{path}: too few examples in {label_column!r}: {listed}; every class "
                        f"needs at least {MIN_PER_CLASS} (add examples or remove the class)")
    seen: dict[str, int] = {}
    for text, label in zip(data.texts, data.labels, strict=True):
        key = " ".join(text.split())
        if seen.setdefault(key, int(label)) != label:
            raise DataError(f"{path}: the text {_short(text)} is labelled both "
                            f"{data.class_names[seen[key]]!r} and {data.class_names[label]!r} "
                            f"in {label_column!r}")
    return data


def _table_columns(path: Path) -> dict[str, list[str]]:
    """Every column (JSONL: key) of a table that read_texts has read without error, with its
    non-empty values as strings."""
    fmt = FORMATS[path.suffix.lower()]
    columns: dict[str, list[str]] = {}
    if fmt == "jsonl":
        with open(path, encoding="utf-8-sig") as f:
            for line in f:
                if line.strip():
                    for k, v in json.loads(line).items():
                        values = columns.setdefault(str(k), [])
                        if v is not None and not isinstance(v, (dict, list)) and str(v).strip():
                            values.append(str(v).strip())
        return columns
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = csv_rows(path, csv.reader(f, delimiter="\t" if fmt == "tsv" else ","),
                        "utf-8-sig")
        header = [h.strip() for h in next(rows)]
        for name in header:
            columns.setdefault(name, [])
        for row in rows:
            for name, v in zip(header, row, strict=False):
                if v.strip():
                    columns[name].append(v.strip())
    return columns


_LABEL_PREFIX = re.compile(r"^\s*([^,\t:;|]{1,80}?)\s*[,\t:;|]\s*\S")


def read_unlabelled(path: str | os.PathLike, *, text_column: str = "text",
                    label_column: str | None = "label", class_names: Sequence[str] = (),
                    texts_only: bool = False) -> list[str]:
    """The texts of a file of unlabelled texts, checked to carry no labels.

    Args:
      path: a CSV, TSV or JSONL file (its ``text_column`` is read) or a ``.txt`` file (one text a
        line).
      text_column: the column holding the texts.
      label_column: the labelled file's label column: an unlabelled table must not have it.
      class_names: the labelled file's classes: no column (and, in a ``.txt`` file, no prefix
        ``name,`` / ``name<TAB>`` / ``name:`` of half the lines or more) may hold them.
      texts_only: read ``text_column`` and ignore every other column, unchecked (the
        ``--unlabelled-text-column`` option).

    Raises:
      DataError: naming the file and the column (or line) that holds labels; or, from
        :func:`~smallsample.data.tables.read_texts` / :func:`read_lines`, a missing or empty file,
        an unknown column.
    """
    path = Path(path)
    names = {str(c).strip().lower(): str(c) for c in class_names}
    if _is_lines(path):
        texts = read_lines(path)
        if names:
            hits = [(t, m.group(1)) for t in texts
                    if (m := _LABEL_PREFIX.match(t)) and m.group(1).strip().lower() in names]
            if hits and 2 * len(hits) >= len(texts):
                raise DataError(f"{path}: {len(hits)} of {len(texts)} lines start with a label "
                                f"(the first: {names[hits[0][1].strip().lower()]!r} in "
                                f"{_short(hits[0][0])}); a file of unlabelled texts holds one "
                                f"text a line and no labels")
        return texts
    texts = read_texts(path, text_column=text_column, label_column=None).texts
    if texts_only:
        return texts
    hint = ("it must be unlabelled: remove the labels, or name the column of texts with "
            "--unlabelled-text-column (unlabelled_text_column=) to read that column alone")
    columns = _table_columns(path)
    if label_column is not None and label_column in columns and label_column != text_column:
        raise DataError(f"{path}: has the label column {label_column!r} of the labelled file; "
                        f"{hint}")
    for column, values in columns.items():
        if column == text_column or not values or not names:
            continue
        labels = [v for v in values if v.lower() in names]
        if 2 * len(labels) >= len(values):
            found = sorted({names[v.lower()] for v in labels})
            raise DataError(f"{path}: column {column!r} holds labels of the labelled file "
                            f"({', '.join(map(repr, found[:5]))}{', ...' if len(found) > 5 else ''}"
                            f" in {len(labels)} of {len(values)} rows); {hint}")
    return texts


def drop_duplicates(unlabelled: Sequence[str], labelled: Sequence[str], *,
                    where: str = "unlabelled texts") -> tuple[list[str], int, int]:
    """``unlabelled`` without the texts of ``labelled`` and without repeats (texts compared with
    their whitespace collapsed); warns when a labelled text is dropped.

    Returns:
      (the kept texts in order, how many were labelled texts, how many were repeats).
    """
    norm = lambda t: " ".join(t.split())  # noqa: E731
    known = {norm(t) for t in labelled}
    kept, seen, in_labelled, repeats = [], set(), [], 0
    for t in unlabelled:
        k = norm(t)
        if k in known:
            in_labelled.append(t)
        elif k in seen:
            repeats += 1
        else:
            seen.add(k)
            kept.append(t)
    if in_labelled:
        k = len(in_labelled)
        warnings.warn(f"{where}: {k} text{'s are' if k > 1 else ' is'} also among the labelled "
                      f"texts (the first: {_short(in_labelled[0])}); dropped from the unlabelled "
                      "texts", UserWarning, stacklevel=2)
    return kept, len(in_labelled), repeats


def _check_int(name: str, value, *, minimum: int = 1) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _sha256(path: Path) -> str:
    from smallsample.models.transformer import file_sha256  # noqa: PLC0415

    return file_sha256(path)


# --- training -----------------------------------------------------------------------------------

def train_classifier(labelled: str | os.PathLike, *, out: str | os.PathLike,
                     text_column: str = "text", label_column: str = "label",
                     unlabelled: str | os.PathLike | None = None,
                     unlabelled_text_column: str | None = None,
                     teacher: str | os.PathLike | None = DEFAULT_TEACHER,
                     student: str | os.PathLike | None = None,
                     student_layers: int | None = None, seed: int = 0,
                     threshold: float | None = None, epochs: int | None = None,
                     student_epochs: int | None = None,
                     cache_dir: str | os.PathLike | None = None, cache: bool = True,
                     overwrite: bool = False, progress: bool = True) -> dict:
    """Trains a small text classifier on a file of labelled texts and writes it to ``out``.

    Every input is read and checked first (files, columns, classes, models, tokenizers, the
    output folder), so a mistake costs seconds, not a training run, and nothing is written.

    Args:
      labelled: a CSV, TSV or JSONL file of texts with labels (any strings).
      out: the classifier folder to write (see :func:`~smallsample.text.classifier
        .save_classifier`); refused if it exists, unless ``overwrite`` and it is empty or a
        classifier folder (one of other files is never replaced).
      text_column, label_column: the columns (JSONL: keys) of the text and of the label.
      unlabelled: optional file of unlabelled texts (CSV, TSV, JSONL, or ``.txt``, one a line)
        for distillation; it must carry no labels (:func:`read_unlabelled`). Texts also in
        ``labelled`` are dropped from it with a warning, repeats silently.
      unlabelled_text_column: the column of the unlabelled table to read, every other column
        ignored; default ``text_column`` with the file checked for labels.
      teacher: the large encoder fine-tuned first (a known name or a folder); ``None``: no
        teacher, the student is fine-tuned directly on the labelled texts.
      student: the small encoder distilled from the teacher (a known name or a folder); default
        all-MiniLM-L6-v2, or with ``student_layers`` and a teacher, the teacher's own layers.
      student_layers: the student keeps only its first ``student_layers`` layers. With a
        teacher, the student is then made of the fine-tuned teacher's first layers (as
        DistilBERT's student starts from its teacher), so it keeps the teacher's tokenizer: a
        ``student`` named beside it must have that tokenizer (a ``ValueError`` naming both
        otherwise). Without a teacher, the named student's first layers.
      seed: of the random key (the head's initialisation, the order of the batches).
      threshold: saved with the classifier: a text whose largest probability is below it is
        out-of-scope (``None``: never); in ``[0, 1]``.
      epochs: of the teacher's fine-tuning (or the student's, without a teacher); default
        :func:`~smallsample.distill.text.finetune_classifier`'s.
      student_epochs: of the distillation; default ``epochs`` if given, else
        :func:`~smallsample.distill.text.distill_classifier`'s.
      cache_dir: where teacher logits are cached; default :func:`teacher_cache_dir`.
      cache: ``False``: no cache.
      overwrite: replace an existing ``out``.
      progress: progress bars, and a line on standard error as each stage starts.

    Returns:
      A summary, JSON-serialisable but for ``classifier`` (the
      :class:`~smallsample.text.classifier.TextClassifier` written): ``folder``, ``classes``
      (name -> count), ``labelled``,
      ``unlabelled`` (texts used), ``unlabelled_dropped`` (labelled texts and repeats dropped),
      ``distilled_on`` (``'labelled+unlabelled'``, ``'labelled only'`` or ``None`` without a
      teacher), ``teacher`` / ``student`` (name, layers, parameters, seconds, training
      accuracy), ``agreement`` (the fraction of the texts on which the student's class is the
      teacher's), ``unlabelled_confidence`` (the median and 10% quantile of the student's
      largest probability on the unlabelled texts, a guide to the threshold), ``seconds``,
      ``peak_rss_mb``, ``notes``.

    Raises:
      DataError: a file that is missing, empty, has an unknown column, one class, a class with
        fewer than :data:`MIN_PER_CLASS` texts, labels in the unlabelled file.
      ValueError: a bad option (threshold outside [0, 1], student_layers, epochs), or teacher
        and student of different tokenizers with ``student_layers``.
      FileExistsError: ``out`` exists and not ``overwrite``, or is not a classifier folder.
    """
    from smallsample.text.classifier import check_threshold  # noqa: PLC0415

    started = time.perf_counter()
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else \
        (lambda msg: None)
    # options and the output folder first: they cost nothing to check
    if threshold is not None:
        threshold = check_threshold(threshold)
    student_layers = _check_int("student_layers", student_layers)
    epochs = _check_int("epochs", epochs)
    student_epochs = _check_int("student_epochs", student_epochs)
    seed = _check_int("seed", seed, minimum=0)
    for name, col in (("text_column", text_column), ("label_column", label_column)):
        if not isinstance(col, str) or not col:
            raise ValueError(f"{name} must be a non-empty string, got {col!r}")
    if text_column == label_column:
        raise ValueError(f"text_column and label_column are both {text_column!r}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another folder or pass --overwrite "
                              f"(overwrite=True) to replace it")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not (out / "classifier.json").is_file():
        # overwrite replaces the whole folder: never a folder of the user's other files
        raise FileExistsError(f"{out} is a folder of other files, not a classifier folder (no "
                              f"classifier.json); --overwrite replaces classifier folders only")

    # the files
    labelled = Path(labelled)
    data = read_labelled(labelled, text_column=text_column, label_column=label_column)
    names = list(data.class_names)
    counts = {n: int(c) for n, c in zip(names, np.bincount(data.labels, minlength=len(names)),
                                        strict=True)}
    notes: list[str] = []
    unl_texts: list[str] = []
    dropped = {"labelled": 0, "repeats": 0}
    if unlabelled is not None:
        unlabelled = Path(unlabelled)
        if unlabelled_text_column is not None and _is_lines(unlabelled):
            raise ValueError(f"--unlabelled-text-column {unlabelled_text_column!r} names a "
                             f"column, but {unlabelled} is a text file of one text a line")
        try:
            raw = read_unlabelled(unlabelled, text_column=unlabelled_text_column or text_column,
                                  label_column=label_column, class_names=names,
                                  texts_only=unlabelled_text_column is not None)
        except DataError as e:
            if unlabelled_text_column is None and re.search(r": no (column|key) ", str(e)):
                raise DataError(f"{e} (name its column of texts with --unlabelled-text-column)") \
                    from None
            raise
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            unl_texts, dropped["labelled"], dropped["repeats"] = drop_duplicates(
                raw, data.texts, where=str(unlabelled))
        for w in caught:
            notes.append(str(w.message))
            warnings.warn(str(w.message), UserWarning, stacklevel=2)
        if dropped["repeats"]:
            notes.append(f"{unlabelled}: {dropped['repeats']} repeated texts dropped")
        if not unl_texts:
            raise DataError(f"{unlabelled}: no unlabelled texts left once the labelled texts "
                            f"are dropped ({len(raw)} texts, all also in {labelled})")
    elif unlabelled_text_column is not None:
        raise ValueError("unlabelled_text_column is given without an unlabelled file")

    # the models (loading is seconds; the tokenizers are compared before any training)
    from smallsample.distill import text as dtext  # noqa: PLC0415
    from smallsample.text.classifier import (  # noqa: PLC0415
        num_params,
        predict_logits,
        truncate_encoder,
    )
    from smallsample.text.encode import load_sentence_encoder  # noqa: PLC0415

    teacher_enc = None
    if teacher is not None:
        say(f"loading the teacher {teacher}")
        teacher_enc = load_sentence_encoder(teacher)
    student_name = student
    if student_layers is not None and teacher_enc is not None:
        if student is not None:
            named = load_sentence_encoder(student)
            dtext.check_same_tokenizer(
                teacher_enc, named,
                where=f"--student-layers {student_layers} builds the student from the first "
                      f"layers of the teacher {teacher}, so it keeps the teacher's tokenizer, "
                      f"which the student {student} does not have (leave out --student)")
        base = teacher_enc
        student_name = f"{teacher} (first {student_layers} layers)"
    else:
        student = DEFAULT_STUDENT if student is None else student
        student_name = str(student)
        say(f"loading the student {student}")
        base = load_sentence_encoder(student)
    total_layers = base.config.num_hidden_layers
    if student_layers is not None and student_layers > total_layers:
        raise ValueError(f"student_layers={student_layers}: "
                         f"{teacher if base is teacher_enc else student} has {total_layers} "
                         f"layers")
    if student_layers is not None and teacher_enc is None:
        base = truncate_encoder(base, student_layers)
        student_name = f"{student} (first {student_layers} layers)"

    import jax  # noqa: PLC0415

    key_teacher, key_student = jax.random.split(jax.random.key(seed))
    ft_opts = {} if epochs is None else {"epochs": epochs}
    st_epochs = student_epochs if student_epochs is not None else epochs
    ds_opts = {} if st_epochs is None else {"epochs": st_epochs}
    n = len(data.texts)
    summary_teacher = None
    distilled_on = None
    agreement = None
    if teacher_enc is None:
        say(f"fine-tuning {student_name} on {n} labelled texts (no teacher)")
        t0 = time.perf_counter()
        clf = dtext.finetune_classifier(key_student, base, data.texts, data.labels,
                                        label_names=names, progress=progress, **ft_opts)
        student_seconds = time.perf_counter() - t0
        student_logits = predict_logits(clf, data.texts + unl_texts)
        if unl_texts:
            notes.append(f"no teacher: the {len(unl_texts)} unlabelled texts were not used")
    else:
        say(f"fine-tuning the teacher {teacher} on {n} labelled texts")
        t0 = time.perf_counter()
        teacher_clf = dtext.finetune_classifier(key_teacher, teacher_enc, data.texts,
                                                data.labels, label_names=names,
                                                progress=progress, **ft_opts)
        teacher_seconds = time.perf_counter() - t0
        say(f"teacher logits on {n} + {len(unl_texts)} texts")
        t0 = time.perf_counter()
        logits = np.asarray(dtext.teacher_logits(
            teacher_clf, data.texts + unl_texts, progress=progress,
            cache_dir=(cache_dir or teacher_cache_dir()) if cache else None))
        logits_seconds = time.perf_counter() - t0
        summary_teacher = {
            "name": str(teacher), "layers": teacher_enc.config.num_hidden_layers,
            "parameters": num_params(teacher_clf.encoder.params) + num_params(teacher_clf.head),
            "seconds": round(teacher_seconds, 2), "logits_seconds": round(logits_seconds, 2),
            "train_accuracy": float(np.mean(logits[:n].argmax(-1) == data.labels)),
        }
        if student_layers is not None:
            base = truncate_encoder(teacher_clf.encoder, student_layers)
        distilled_on = "labelled+unlabelled" if unl_texts else "labelled only"
        if not unl_texts:
            notes.append("no unlabelled texts: the student was distilled on the labelled texts "
                         "alone (a file of unlabelled texts of the same kind, --unlabelled, "
                         "usually brings the student closer to the teacher)")
        say(f"distilling the student {student_name} on {n} labelled + {len(unl_texts)} "
            f"unlabelled texts")
        t0 = time.perf_counter()
        clf = dtext.distill_classifier(key_student, base, data.texts, data.labels, unl_texts,
                                       logits, label_names=names, progress=progress,
                                       **ds_opts)
        student_seconds = time.perf_counter() - t0
        student_logits = predict_logits(clf, data.texts + unl_texts)
        agreement = float(np.mean(student_logits.argmax(-1) == logits.argmax(-1)))
    if tuple(clf.labels) != tuple(names):
        raise RuntimeError(f"the trained classifier's labels {clf.labels} are not the file's "
                           f"{names}")
    clf = clf._replace(threshold=threshold)
    summary_student = {
        "name": student_name, "layers": clf.encoder.config.num_hidden_layers,
        "parameters": num_params(clf.encoder.params) + num_params(clf.head),
        "seconds": round(student_seconds, 2),
        "train_accuracy": float(np.mean(student_logits[:n].argmax(-1) == data.labels)),
    }
    confidence = None
    if unl_texts:
        z = student_logits[n:].astype(np.float64)
        top = 1.0 / np.exp(z - z.max(-1, keepdims=True)).sum(-1)  # the largest probability
        confidence = {"p10": round(float(np.quantile(top, 0.1)), 4),
                      "median": round(float(np.median(top)), 4)}
    from smallsample.bench.memory import peak_rss_mb  # noqa: PLC0415
    from smallsample.text.classifier import save_classifier  # noqa: PLC0415

    inputs = {"labelled": {"path": str(labelled), "sha256": _sha256(labelled),
                           "text_column": text_column, "label_column": label_column,
                           "texts": n}}
    if unlabelled is not None:
        inputs["unlabelled"] = {"path": str(unlabelled), "sha256": _sha256(unlabelled),
                                "text_column": None if _is_lines(unlabelled) else
                                (unlabelled_text_column or text_column),
                                "texts": len(unl_texts), "dropped": dropped}
    summary = {
        "folder": str(out),
        "classes": counts,
        "labelled": n,
        "unlabelled": len(unl_texts),
        "unlabelled_dropped": dropped,
        "distilled_on": distilled_on,
        "teacher": summary_teacher,
        "student": summary_student,
        "agreement": agreement,
        "unlabelled_confidence": confidence,
        "threshold": threshold,
        "notes": notes,
    }
    info = {
        "trained_by": "smallsample text train",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "inputs": inputs,
        "settings": {"teacher": None if teacher is None else str(teacher),
                     "student": None if student is None else str(student),
                     "student_layers": student_layers, "seed": seed, "epochs": epochs,
                     "student_epochs": student_epochs, "threshold": threshold},
        **{k: summary[k] for k in ("classes", "distilled_on", "teacher", "student",
                                   "agreement", "unlabelled_confidence", "notes")},
    }
    say(f"writing {out}")
    save_classifier(clf, out, info=info, overwrite=overwrite)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    summary["peak_rss_mb"] = round(peak_rss_mb(), 1)
    summary["classifier"] = clf
    return summary


# --- classifying --------------------------------------------------------------------------------

def read_inputs(path: str | os.PathLike, *, text_column: str = "text") -> list[str]:
    """Texts to classify: a ``.txt`` file (one a line) or ``text_column`` of a CSV, TSV or JSONL
    file (other columns ignored)."""
    path = Path(path)
    if _is_lines(path):
        return read_lines(path)
    return read_texts(path, text_column=text_column, label_column=None).texts


def _output_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: cannot tell the output format from the suffix "
                         f"{path.suffix!r}; use .csv, .tsv or .jsonl")
    return fmt


def prediction_rows(prediction, texts: Sequence[str], labels: Sequence[str], *,
                    top: int = TOP_K) -> list[dict]:
    """One dict per text: ``text``, ``label`` (``None`` when out-of-scope), ``confidence``,
    ``out_of_scope``, ``top`` (the ``top`` most likely ``(label, probability)``)."""
    rows = []
    k = min(top, len(labels))
    for i, text in enumerate(texts):
        p = prediction.probabilities[i]
        best = np.argsort(-p, kind="stable")[:k]
        rows.append({"text": text, "label": prediction.labels[i],
                     "confidence": float(prediction.confidence[i]),
                     "out_of_scope": bool(prediction.out_of_scope[i]),
                     "top": [(labels[j], float(p[j])) for j in best]})
    return rows


def write_predictions(rows: Sequence[dict], path: str | os.PathLike) -> Path:
    """Writes :func:`prediction_rows` to a CSV / TSV (columns ``text, label, confidence,
    out_of_scope, top1, p1, top2, p2, top3, p3`` and ``true_label`` when the rows have one; an
    empty label when out-of-scope) or JSONL file (``label`` null when out-of-scope; ``top`` a
    list of ``[label, probability]``), atomically (a temporary file beside it, renamed)."""
    path = Path(path)
    fmt = _output_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            if fmt == "jsonl":
                for r in rows:
                    f.write(json.dumps({**r, "top": [list(t) for t in r["top"]]},
                                       ensure_ascii=False) + "\n")
            else:
                k = max((len(r["top"]) for r in rows), default=0)
                truth = any("true_label" in r for r in rows)
                w = csv.writer(f, delimiter="\t" if fmt == "tsv" else ",")
                w.writerow(["text", "label", "confidence", "out_of_scope"] +
                           [c for j in range(1, k + 1) for c in (f"top{j}", f"p{j}")] +
                           ["true_label"] * truth)
                for r in rows:
                    w.writerow([r["text"], r["label"] or "", f"{r['confidence']:.6f}",
                                str(r["out_of_scope"]).lower()] +
                               [c for name, p in r["top"] for c in (name, f"{p:.6f}")] +
                               [r.get("true_label", "")] * truth)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def classify_file(folder: str | os.PathLike, inputs: str | os.PathLike | Sequence[str], *,
                  text_column: str = "text", label_column: str | None = None,
                  out: str | os.PathLike | None = None, threshold: float | None = None,
                  overwrite: bool = False, batch_size: int = 64,
                  progress: bool = False) -> list[dict]:
    """Classifies texts with the classifier saved in ``folder``.

    Args:
      folder: written by :func:`train_classifier` (or
        :func:`~smallsample.text.classifier.save_classifier`).
      inputs: a file (a path: ``.txt`` one text a line, or the ``text_column`` of a CSV, TSV or
        JSONL file) or the texts themselves (a list of strings).
      text_column: the column of the texts in a table.
      label_column: a column of the table holding each text's true label (any string: a label
        the classifier does not know marks a text that should be out-of-scope); each row then
        has ``true_label`` too, for :func:`score_predictions`.
      out: a ``.csv``, ``.tsv`` or ``.jsonl`` file to write the rows to
        (:func:`write_predictions`); refused if it exists unless ``overwrite``, and never the
        input file.
      threshold: out-of-scope below this confidence; default the classifier's own.

    Returns:
      :func:`prediction_rows`, one per text in input order.
    """
    from smallsample.text.classifier import (  # noqa: PLC0415
        check_threshold,
        classify,
        load_classifier,
    )

    if threshold is not None:
        threshold = check_threshold(threshold)
    source = None
    if isinstance(inputs, (str, os.PathLike)):
        source = Path(inputs)
    if out is not None:
        out = Path(out)
        _output_format(out)
        if source is not None and out.resolve() == source.resolve():
            raise ValueError(f"{out} is the input file; write the predictions to another file")
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists; choose another file or pass --overwrite "
                                  f"(overwrite=True) to replace it")
    if label_column is not None and (source is None or _is_lines(source)):
        raise ValueError(f"label_column={label_column!r} needs a CSV, TSV or JSONL file of texts"
                         f"{'' if source is None else f', not {source}'}")
    if label_column is not None and label_column == text_column:
        raise ValueError(f"text_column and label_column are both {text_column!r}")
    clf = load_classifier(folder)
    truth = None
    if source is not None:
        texts = read_inputs(source, text_column=text_column)
        if label_column is not None:
            # the label column read as texts: every row, in order, one class or many
            truth = [t.strip() for t in read_texts(source, text_column=label_column,
                                                   label_column=None).texts]
    else:
        from smallsample.text.tokenize import check_texts  # noqa: PLC0415

        texts = check_texts(inputs)
        empty = [i for i, t in enumerate(texts) if not t.strip()]
        if not texts or empty:
            raise ValueError("no texts to classify" if not texts else
                             f"text {empty[0] + 1} of {len(texts)} is empty")
    pred = classify(clf, texts, threshold=threshold, batch_size=batch_size, progress=progress)
    rows = prediction_rows(pred, texts, clf.labels)
    if truth is not None:
        for r, t in zip(rows, truth, strict=True):
            r["true_label"] = t
    if out is not None:
        write_predictions(rows, out)
    return rows


def score_predictions(rows: Sequence[dict], labels: Sequence[str]) -> dict:
    """How rows with a ``true_label`` (:func:`classify_file` with ``label_column``) fared.

    Returns:
      ``known``: texts whose true label is one of ``labels``; ``accuracy``: the fraction of
      those whose label is right (out-of-scope counts as wrong; ``None`` without any);
      ``known_flagged``: how many of those were flagged out-of-scope; ``unknown``: texts of
      other labels (should be out-of-scope), ``unknown_labels`` their sorted labels,
      ``unknown_flagged`` how many of them were flagged.
    """
    names = set(labels)
    known = [r for r in rows if r["true_label"] in names]
    unknown = [r for r in rows if r["true_label"] not in names]
    return {
        "known": len(known),
        "accuracy": (sum(r["label"] == r["true_label"] for r in known) / len(known)
                     if known else None),
        "known_flagged": sum(r["out_of_scope"] for r in known),
        "unknown": len(unknown),
        "unknown_labels": sorted({r["true_label"] for r in unknown}),
        "unknown_flagged": sum(r["out_of_scope"] for r in unknown),
    }


def format_score(score: dict) -> str:
    """The lines ``smallsample text classify --label-column`` prints."""
    lines = []
    if score["known"]:
        lines.append(f"accuracy on the {score['known']} texts of the classifier's classes: "
                     f"{100 * score['accuracy']:.1f}% ({score['known_flagged']} of them flagged "
                     "out-of-scope, counted wrong)")
    if score["unknown"]:
        shown = ", ".join(map(repr, score["unknown_labels"][:5]))
        more = ", ..." if len(score["unknown_labels"]) > 5 else ""
        lines.append(f"{score['unknown']} texts of other labels ({shown}{more}): "
                     f"{score['unknown_flagged']} flagged out-of-scope")
    return "\n".join(lines)


# --- the command line ---------------------------------------------------------------------------

def _fraction(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _model_or_none(text: str) -> str | None:
    return None if text.lower() == "none" else text


def cmd_train(args) -> int:
    teacher = None if args.no_teacher else args.teacher
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        summary = train_classifier(
            args.labelled, out=args.out, text_column=args.text_column,
            label_column=args.label_column, unlabelled=args.unlabelled,
            unlabelled_text_column=args.unlabelled_text_column, teacher=teacher,
            student=args.student, student_layers=args.student_layers, seed=args.seed,
            threshold=args.threshold, epochs=args.epochs, student_epochs=args.student_epochs,
            cache_dir=args.cache_dir, cache=not args.no_cache, overwrite=args.overwrite,
            progress=not args.no_progress)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    print(format_summary(summary))
    return 0


def format_summary(summary: dict) -> str:
    """The lines ``smallsample text train`` prints."""
    lines = ["classes: " + ", ".join(f"{k} ({v})" for k, v in summary["classes"].items())]
    t, s = summary["teacher"], summary["student"]
    if t is not None:
        lines.append(f"teacher: {t['name']}, {t['parameters'] / 1e6:.1f}M parameters, "
                     f"fine-tuned on {summary['labelled']} texts in {t['seconds']:.0f} s "
                     f"(training accuracy {100 * t['train_accuracy']:.0f}%)")
        what = (f"{summary['labelled']} labelled + {summary['unlabelled']} unlabelled texts"
                if summary["unlabelled"] else f"the {summary['labelled']} labelled texts alone")
        lines.append(f"student: {s['name']}, {s['parameters'] / 1e6:.1f}M parameters, "
                     f"distilled on {what} in {s['seconds']:.0f} s (training accuracy "
                     f"{100 * s['train_accuracy']:.0f}%; agrees with the teacher on "
                     f"{100 * summary['agreement']:.0f}% of the texts)")
    else:
        lines.append(f"student: {s['name']}, {s['parameters'] / 1e6:.1f}M parameters, "
                     f"fine-tuned on {summary['labelled']} texts in {s['seconds']:.0f} s "
                     f"(training accuracy {100 * s['train_accuracy']:.0f}%; no teacher)")
    conf = summary.get("unlabelled_confidence")
    if conf is not None:
        lines.append(f"student's confidence on the unlabelled texts: median {conf['median']:.3f}, "
                     f"10th percentile {conf['p10']:.3f}")
    lines += [f"note: {n}" for n in summary["notes"] if "also among the labelled" not in n]
    if summary["threshold"] is not None:
        lines.append(f"out-of-scope below confidence {summary['threshold']}")
    lines.append(f"wrote {summary['folder']} ({summary['seconds']:.0f} s, peak RSS "
                 f"{summary['peak_rss_mb']:.0f} MB)")
    return "\n".join(lines)


def format_rows(rows: Sequence[dict], *, width: int = 72) -> str:
    """The table ``smallsample text classify`` prints: label (or ``out-of-scope``),
    confidence, text (shortened to ``width`` characters)."""
    labels = [r["label"] if r["label"] is not None else "out-of-scope" for r in rows]
    w = max([len("label")] + [len(x) for x in labels])
    lines = [f"{'label':<{w}}  confidence  text"]
    for label, r in zip(labels, rows, strict=True):
        text = " ".join(r["text"].split())
        text = text if len(text) <= width else text[:width - 3] + "..."
        lines.append(f"{label:<{w}}  {r['confidence']:>10.3f}  {text}")
    return "\n".join(lines)


def cmd_classify(args) -> int:
    if (args.input is None) == (not args.text):
        raise ValueError("give an input file or --text, not both" if args.input else
                         "nothing to classify: give an input file or --text \"...\"")
    rows = classify_file(args.folder, args.input if args.input is not None else args.text,
                         text_column=args.text_column, label_column=args.label_column,
                         out=args.out, threshold=args.threshold, overwrite=args.overwrite)
    print(format_rows(rows))
    oos = sum(r["out_of_scope"] for r in rows)
    if oos:
        print(f"{oos} of {len(rows)} out-of-scope")
    if args.label_column is not None:
        from smallsample.text.classifier import read_meta  # noqa: PLC0415

        print(format_score(score_predictions(rows, read_meta(args.folder)["labels"])))
    if args.out:
        print(f"wrote {args.out}")
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Adds ``text`` (``text train`` and ``text classify``) to a command's subparsers."""
    p = subparsers.add_parser("text", help="train a small text classifier on your labelled "
                              "texts; classify new texts with it")
    sub = p.add_subparsers(dest="text_command", required=True)

    t = sub.add_parser("train", help="fine-tune a teacher on labelled texts, distil it into a "
                       "small student, write the student to a folder",
                       description="Fine-tunes a teacher encoder on a file of labelled texts, "
                       "distils it into a small student (on the unlabelled texts too, if given) "
                       "and writes the student to a folder for `smallsample text classify`.")
    t.add_argument("labelled", help="CSV, TSV or JSONL file of labelled texts")
    t.add_argument("--out", required=True, metavar="FOLDER", help="classifier folder to write")
    t.add_argument("--unlabelled", default=None, metavar="FILE",
                   help="file of unlabelled texts (CSV, TSV, JSONL, or .txt one a line)")
    t.add_argument("--text-column", default="text", metavar="NAME",
                   help="column of the texts (default text)")
    t.add_argument("--label-column", default="label", metavar="NAME",
                   help="column of the labels (default label)")
    t.add_argument("--unlabelled-text-column", default=None, metavar="NAME",
                   help="read only this column of the unlabelled file (others ignored)")
    t.add_argument("--teacher", default=DEFAULT_TEACHER, type=_model_or_none,
                   metavar="NAME|FOLDER|none",
                   help=f"teacher model name or folder, or 'none' (default {DEFAULT_TEACHER})")
    t.add_argument("--no-teacher", action="store_true",
                   help="no teacher: fine-tune the student directly")
    t.add_argument("--student", default=None, metavar="NAME|FOLDER",
                   help=f"student model name or folder (default {DEFAULT_STUDENT}; with "
                   "--student-layers, the teacher's layers)")
    t.add_argument("--student-layers", type=int, default=None, metavar="N",
                   help="keep the first N layers: of the fine-tuned teacher (a DistilBERT-style "
                   "student), or without a teacher, of the student")
    t.add_argument("--epochs", type=int, default=None, metavar="N",
                   help="epochs of fine-tuning (and of distillation unless --student-epochs)")
    t.add_argument("--student-epochs", type=int, default=None, metavar="N",
                   help="epochs of distillation")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threshold", type=_fraction, default=None, metavar="P",
                   help="saved with the classifier: out-of-scope below this confidence")
    t.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="teacher logits cache (default ~/.cache/smallsample/teacher)")
    t.add_argument("--no-cache", action="store_true", help="do not cache teacher logits")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    t.add_argument("--no-progress", action="store_true", help="no progress bars or stage lines")
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("classify", help="classify texts with a trained classifier folder")
    c.add_argument("folder", help="folder written by `smallsample text train`")
    c.add_argument("input", nargs="?", default=None,
                   help="file of texts: .txt (one a line), or CSV, TSV, JSONL (--text-column)")
    c.add_argument("--text", action="append", default=[], metavar="TEXT",
                   help="a text to classify (repeat for more)")
    c.add_argument("--text-column", default="text", metavar="NAME",
                   help="column of the texts (default text)")
    c.add_argument("--label-column", default=None, metavar="NAME",
                   help="a column of true labels: report the accuracy (a label the classifier "
                   "does not know: the text should be out-of-scope)")
    c.add_argument("--out", default=None, metavar="FILE",
                   help="write the predictions (.csv, .tsv or .jsonl)")
    c.add_argument("--threshold", type=_fraction, default=None, metavar="P",
                   help="out-of-scope below this confidence (default: the classifier's own)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    c.set_defaults(func=cmd_classify)
    return p


__all__ = [
    "DEFAULT_STUDENT",
    "DEFAULT_TEACHER",
    "MIN_PER_CLASS",
    "classify_file",
    "drop_duplicates",
    "format_rows",
    "format_score",
    "format_summary",
    "prediction_rows",
    "read_inputs",
    "read_labelled",
    "read_lines",
    "read_unlabelled",
    "register",
    "score_predictions",
    "teacher_cache_dir",
    "train_classifier",
    "write_predictions",
]
