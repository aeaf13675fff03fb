"""Out-of-scope detection of saved text classifiers on CLINC150 (its 100 + 1,000 out-of-scope
utterances), with the confidence threshold of ``smallsample text classify --threshold``.

For each classifier folder (from ``smallsample text train``, ``save_classifier``, or the teachers
``scripts/distill_text.py`` keeps under ``~/.cache/smallsample/teachers``): the threshold is
chosen on the validation split (in-scope 3,000 + out-of-scope 100, maximising (in-scope accuracy +
out-of-scope recall) / 2, ``fewshot.choose_threshold``), then applied to the test split (4,500 +
1,000); fixed thresholds 0.5, 0.7 and 0.9 for comparison, and the AUROC of the confidence
(in-scope against out-of-scope). In-scope accuracy counts a text as right only when its class is
right and it is not flagged.

    SMALLSAMPLE_DATA=../shared/data python scripts/oos_clinc.py FOLDER [FOLDER ...] \\
        --out results/oos_clinc150.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import mannwhitneyu

from smallsample.data.text import load_clinc150
from smallsample.text.classifier import classify, load_classifier
from smallsample.text.fewshot import choose_threshold, oos_metrics


def auroc(in_scores: np.ndarray, oos_scores: np.ndarray) -> float:
    """P(an in-scope confidence > an out-of-scope one), ties counted half (Mann-Whitney U)."""
    u = mannwhitneyu(in_scores, oos_scores, alternative="two-sided").statistic
    return float(u / (in_scores.size * oos_scores.size))


def evaluate(folder: Path, sets) -> dict:
    clf = load_classifier(folder)
    names = list(sets["train"].class_names)
    if list(clf.labels) != names:
        raise SystemExit(f"{folder}: its labels are not CLINC150's 150 intents")

    def scores(split):
        s = sets[split]
        p = classify(clf, s.texts)
        return p.confidence, p.classes == s.labels

    val_in, val_ok = scores("val")
    val_oos, _ = scores("oos_val")
    test_in, test_ok = scores("test")
    test_oos, _ = scores("oos_test")
    chosen = choose_threshold(val_in, val_ok, val_oos)
    home = str(Path.home())
    shown = "~" + str(folder)[len(home):] if str(folder).startswith(home + "/") else str(folder)
    row = {"folder": shown, "in_scope_accuracy_no_threshold": float(test_ok.mean()),
           "auroc": auroc(test_in, test_oos), "threshold_from_val": chosen}
    for name, t in (("val", chosen), ("0.5", 0.5), ("0.7", 0.7), ("0.9", 0.9)):
        m = oos_metrics(test_in, test_ok, test_oos, t)
        row[f"at_{name}"] = {"threshold": t, "in_scope_accuracy": m.in_scope_accuracy,
                             "oos_recall": m.oos_recall}
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    sets = load_clinc150()
    rows = []
    for folder in args.folders:
        row = evaluate(folder, sets)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
