"""Out-of-scope detection on CLINC150 with prototypes on all-MiniLM-L6-v2 embeddings.

Prototypes of K random training utterances per intent (and of all 100); an utterance is called
out-of-scope when its confidence is below a threshold, either the negative distance to the
nearest prototype or the largest softmax probability of ``-|x - c|^2 / T``. The threshold
maximises (in-scope accuracy + out-of-scope recall) / 2 on the validation split (``val`` +
``oos_val``), and is then applied to the test split (``test`` + ``oos_test``). Reported: in-scope
accuracy (right intent and accepted) and out-of-scope recall, mean +- 95% CI over seeds.

    SMALLSAMPLE_DATA=/work/shared/data python scripts/text_oos.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from smallsample.data.text import k_shot_indices, load_clinc150
from smallsample.evaluate import mean_ci95
from smallsample.learners.protonet import class_means
from smallsample.text import fewshot, load_sentence_encoder

CACHE = Path.home() / ".cache" / "smallsample" / "embeddings"


def run_once(key, emb, sets, *, shots, kind, temperature):
    train = sets["train"]
    c = train.num_classes
    if shots is None:
        idx = np.arange(len(train.labels))
    else:
        idx = k_shot_indices(key, train.labels, num_classes=c, shots=shots).ravel()
    protos = class_means(jnp.asarray(emb["train"][idx]), jnp.asarray(train.labels[idx]), c)

    def score(split):
        pred, conf = fewshot.prototype_scores(protos, jnp.asarray(emb[split]), kind=kind,
                                              temperature=temperature)
        return np.asarray(pred), np.asarray(conf, np.float64)

    vp, vc = score("val")
    _, ovc = score("oos_val")
    t = fewshot.choose_threshold(vc, vp == sets["val"].labels, ovc)
    tp, tc = score("test")
    _, otc = score("oos_test")
    m = fewshot.oos_metrics(tc, tp == sets["test"].labels, otc, t)
    no_reject = float((tp == sets["test"].labels).mean())
    return m.in_scope_accuracy, m.oos_recall, no_reject


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shots", type=int, nargs="+", default=[5, 10, 0],
                   help="training utterances per intent; 0 = all 100")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--temperature", type=float, default=0.05)
    p.add_argument("--cache-dir", type=Path, default=CACHE)
    p.add_argument("--out", type=Path, default=Path("results/text_oos.json"))
    p.add_argument("--md", type=Path, default=Path("results/text_oos.md"))
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    sets = load_clinc150()
    emb = fewshot.embed_splits(sets, encoder=load_sentence_encoder(), cache_dir=args.cache_dir)
    results = {}
    for shots in args.shots:
        for kind in ("distance", "probability"):
            seeds = range(args.seeds) if shots else range(1)
            runs = np.array([run_once(jax.random.key(s), emb, sets, shots=shots or None,
                                      kind=kind, temperature=args.temperature) for s in seeds])
            name = f"{shots or 'all'}shot/{kind}"
            metrics = ("in_scope_accuracy", "oos_recall", "accuracy_without_rejection")
            results[name] = {m: {"mean": r.mean, "ci95": r.ci95, "values": r.accuracies.tolist()}
                             for i, m in enumerate(metrics) for r in (mean_ci95(runs[:, i]),)}
            print(name, {m: f"{100 * v['mean']:.2f} +- {100 * v['ci95']:.2f}"
                         for m, v in results[name].items()}, flush=True)
    seconds = time.perf_counter() - t0
    command = "SMALLSAMPLE_DATA=/work/shared/data python scripts/text_oos.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    lines = ["# CLINC150 out-of-scope detection: prototypes on MiniLM embeddings", "",
             f"Command: `{command.strip()}`", "",
             "Threshold on the confidence chosen on val + oos_val to maximise (in-scope accuracy "
             "+ OOS recall) / 2; metrics on test (4,500 in-scope) + oos_test (1,000). "
             f"`probability`: max softmax of -d²/T, T = {args.temperature}. Mean ± 95% CI over "
             f"{args.seeds} seeds of the K-shot draw (one run for all 100 per intent). "
             "'no rejection': in-scope accuracy when nothing is rejected.", "",
             "| prototypes from | confidence | in-scope acc % | OOS recall % | no rejection % |",
             "|---|---|---|---|---|"]
    for name, r in results.items():
        shots, kind = name.split("/")
        cells = [f"{100 * r[m]['mean']:.2f} ± {100 * r[m]['ci95']:.2f}"
                 for m in ("in_scope_accuracy", "oos_recall", "accuracy_without_rejection")]
        lines.append(f"| {shots.replace('shot', '')} per intent | {kind} | " + " | ".join(cells)
                     + " |")
    lines += ["", f"Whole run: {seconds:.0f} s.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results, "seconds": seconds,
                                    "temperature": args.temperature}, indent=1))
    args.md.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
