"""Text distillation with K labels per class: all-mpnet-base-v2 teaches MiniLM students.

For each data set (CLINC150's 150 in-scope intents, Banking77's 77), K and seed:

- K labelled training texts per class are drawn with the seed (``k_shot_indices``); the rest of
  the training split, labels removed, is the unlabelled pool (``--unlabelled N`` keeps N of it).
- frozen prototypes (nearest class mean of the pretrained embeddings) of the teacher and of the
  student;
- the teacher: all-mpnet-base-v2 fine-tuned with a head on the K labels
  (:func:`smallsample.distill.text.finetune_classifier`);
- students (all-MiniLM-L6-v2, and its first ``--small-layers`` layers): distilled on the
  teacher's logits over labelled + unlabelled texts, and the same student trained on the K labels
  alone;
- accuracy on the whole test split, parameters, sentences/s (a warm pass over up to 2,000 test
  texts, each model in turn in this process; in the first cell of each data set only, since they
  do not depend on the weights) and peak RSS of each training stage.

Optionally (``--curve N1 N2 ...``) the L6 student is distilled on N unlabelled texts, same number
of optimizer steps as with the whole pool, for the first data set, K and seed.

Each (data set, K, seed) is appended to ``--out`` (JSON) as it finishes; a rerun skips those
already there, so the script can be stopped and continued. ``--md`` gets the table (mean +-
Student-t 95% CI over seeds). Teacher logits are cached under ``--cache-dir`` keyed by model and
texts, and each fine-tuned teacher is kept there (``teachers/``), so a cell stopped midway
restarts after it.

    SMALLSAMPLE_DATA=/work/shared/data python scripts/distill_text.py \\
        --datasets banking77 clinc150 --shots 10 5 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np

from smallsample.bench.memory import peak_rss_mb, reset_peak_rss
from smallsample.data.text import k_shot_indices, load_banking77, load_clinc150
from smallsample.distill import text as dt
from smallsample.evaluate import mean_ci95_runs
from smallsample.text import encode, load_sentence_encoder
from smallsample.text.classifier import (
    TextClassifier,
    load_classifier,
    num_params,
    predict_logits,
    read_meta,
    save_classifier,
    truncate_encoder,
)

LOADERS = {"clinc150": load_clinc150, "banking77": load_banking77}
CACHE = Path.home() / ".cache" / "smallsample"


def stage(fn, *args, **kwargs):
    """(result, seconds, peak RSS in MB) of one training stage."""
    reset_peak_rss()
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t, peak_rss_mb()


def throughput(clf: TextClassifier, texts: list[str]) -> float:
    predict_logits(clf, texts[:256])  # compile the buckets
    predict_logits(clf, texts)
    t = time.perf_counter()
    predict_logits(clf, texts)
    return len(texts) / (time.perf_counter() - t)


def frozen_prototypes(encoder, texts, y, test_texts, test_y, num_classes, cache) -> float:
    z = encode(texts, encoder=encoder, cache_dir=cache, progress=False)
    zt = encode(test_texts, encoder=encoder, cache_dir=cache, progress=False)
    c = np.zeros((num_classes, z.shape[1]))
    np.add.at(c, y, z)
    c /= np.bincount(y, minlength=num_classes)[:, None]
    d = ((zt[:, None, :] - c[None]) ** 2).sum(-1)
    return float((d.argmin(-1) == test_y).mean())


def run_cell(name, shots, seed, args, encoders, results):
    sets = LOADERS[name]()
    train, test = sets["train"], sets["test"]
    inscope = train.labels >= 0
    names = list(train.class_names)
    c = len(names)
    tr_idx = np.flatnonzero(inscope)
    tr_y = train.labels[tr_idx]
    te_idx = np.flatnonzero(test.labels >= 0)
    test_texts = [test.texts[i] for i in te_idx]
    test_y = test.labels[te_idx].astype(np.int32)
    key = jax.random.key(seed)
    k_pick, k_pool, k_teacher, k_student = jax.random.split(key, 4)
    pick = k_shot_indices(k_pick, tr_y, num_classes=c, shots=shots).ravel()
    lab = tr_idx[pick]
    texts = [train.texts[i] for i in lab]
    y = train.labels[lab].astype(np.int32)
    rest = np.setdiff1d(tr_idx, lab)
    seen = set(texts)
    rest = np.asarray([i for i in rest if train.texts[i] not in seen], int)
    rest = rest[np.asarray(jax.random.permutation(k_pool, len(rest)))]
    if args.unlabelled is not None:
        rest = rest[:args.unlabelled]
    unl = [train.texts[i] for i in rest]
    cell = {"dataset": name, "shots": shots, "seed": seed, "classes": c,
            "labelled": len(texts), "unlabelled": len(unl), "test": len(test_texts)}
    print(f"== {name} K={shots} seed={seed}: {len(texts)} labelled, {len(unl)} unlabelled, "
          f"{len(test_texts)} test", flush=True)
    teacher_enc, student_enc = encoders["teacher"], encoders["student"]
    cache = args.cache_dir / "embeddings"
    cell["teacher_frozen_prototypes"] = frozen_prototypes(teacher_enc, texts, y, test_texts,
                                                          test_y, c, cache)
    cell["student_frozen_prototypes"] = frozen_prototypes(student_enc, texts, y, test_texts,
                                                          test_y, c, cache)
    print(f"  frozen prototypes: teacher {cell['teacher_frozen_prototypes']:.4f}, student "
          f"{cell['student_frozen_prototypes']:.4f}", flush=True)

    recipe = {"ce": dt.finetune_classifier,
              "pairs": dt.contrastive_finetune_classifier}[args.teacher_recipe]
    # The fine-tuned teacher is kept (about 440 MB) so that a cell stopped after it restarts
    # from it; the folder name holds every setting the teacher depends on.
    saved = args.cache_dir / "teachers" / (
        f"{name}-K{shots}-seed{seed}-{args.teacher}-{args.teacher_recipe}-e{args.teacher_epochs}"
        f"-b{args.teacher_batch}-lr{args.teacher_lr:g}-acc{args.accumulate}")
    if (saved / "classifier.json").is_file():
        teacher = load_classifier(saved)
        secs, rss = (read_meta(saved)["info"][k] for k in ("train_seconds", "peak_rss_mb"))
        print(f"  teacher loaded from {saved}", flush=True)
    else:
        teacher, secs, rss = stage(recipe, k_teacher, teacher_enc, texts, y,
                                   label_names=names, epochs=args.teacher_epochs,
                                   batch_size=args.teacher_batch, learning_rate=args.teacher_lr,
                                   accumulate=args.accumulate, progress=args.progress)
        save_classifier(teacher, saved, info={"train_seconds": secs, "peak_rss_mb": rss},
                        overwrite=True)
    t_test = predict_logits(teacher, test_texts)
    cell["teacher"] = {"accuracy": float((t_test.argmax(-1) == test_y).mean()),
                       "train_seconds": secs, "peak_rss_mb": rss}
    cell["teacher"]["recipe"] = args.teacher_recipe
    print(f"  teacher ({args.teacher_recipe}): {cell['teacher']['accuracy']:.4f} ({secs:.0f} s, "
          f"{rss:.0f} MB)", flush=True)
    if args.teacher_only:
        return cell
    logits, secs, rss = stage(dt.teacher_logits, teacher, texts + unl,
                              cache_dir=args.cache_dir / "teacher", progress=args.progress)
    cell["teacher_logits"] = {"seconds": secs, "peak_rss_mb": rss}
    print(f"  teacher logits on {len(texts) + len(unl)} texts: {secs:.0f} s", flush=True)

    students = {"L6": student_enc,
                f"L{args.small_layers}": truncate_encoder(student_enc, args.small_layers)}
    models = {"teacher": teacher}
    for sname, enc in students.items():
        for mode in ("distilled", "alone"):
            if mode == "distilled":
                clf, secs, rss = stage(
                    dt.distill_classifier, k_student, enc, texts, y, unl, logits,
                    label_names=names, temperature=args.temperature, alpha=args.alpha,
                    epochs=args.student_epochs, batch_size=args.student_batch,
                    learning_rate=args.student_lr, accumulate=args.accumulate,
                    progress=args.progress)
            else:
                clf, secs, rss = stage(
                    dt.distill_classifier, k_student, enc, texts, y, [], None,
                    label_names=names, epochs=args.alone_epochs, batch_size=args.teacher_batch,
                    learning_rate=args.alone_lr, accumulate=args.accumulate,
                    progress=args.progress)
            s_test = predict_logits(clf, test_texts)
            acc = float((s_test.argmax(-1) == test_y).mean())
            agree = float((s_test.argmax(-1) == t_test.argmax(-1)).mean())
            cell[f"{sname}_{mode}"] = {"accuracy": acc, "agreement_with_teacher": agree,
                                       "train_seconds": secs, "peak_rss_mb": rss}
            models[f"{sname}_{mode}"] = clf
            if args.keep_students:
                save_classifier(clf, args.cache_dir / "students" / f"{saved.name}-{sname}_{mode}",
                                info=cell[f"{sname}_{mode}"], overwrite=True)
            print(f"  {sname} {mode}: {acc:.4f} (agrees with teacher on {agree:.3f}; {secs:.0f} s,"
                  f" {rss:.0f} MB)", flush=True)
    cell["params"] = {"teacher": num_params(teacher_enc.params),
                      **{s: num_params(e.params) for s, e in students.items()}}
    # Sentences/s depend on the architecture and the texts, not on the weights: measured in the
    # first cell of each data set only (about 6 minutes of this CPU saved per later cell).
    if not any(c["dataset"] == name and "sentences_per_second" in c for c in results["cells"]):
        probe = test_texts[:2000]
        cell["sentences_per_second"] = {m: throughput(models[m], probe)
                                        for m in ("teacher", "L6_distilled",
                                                  f"L{args.small_layers}_distilled")}
        print(f"  sentences/s: {cell['sentences_per_second']}", flush=True)
    if args.curve and not results.get("curve"):
        steps_full = args.student_epochs * -(-(len(texts) + len(unl)) // args.student_batch)
        curve = []
        for n in args.curve:
            n = min(n, len(unl))
            epochs = max(1, round(steps_full * args.student_batch / (len(texts) + n)))
            lg = np.concatenate([logits[:len(texts)], logits[len(texts):len(texts) + n]])
            clf, secs, rss = stage(dt.distill_classifier, k_student, student_enc, texts, y,
                                   unl[:n], lg, label_names=names,
                                   temperature=args.temperature, alpha=args.alpha, epochs=epochs,
                                   batch_size=args.student_batch, learning_rate=args.student_lr,
                                   accumulate=args.accumulate, progress=args.progress)
            acc = dt.accuracy(clf, test_texts, test_y)
            curve.append({"unlabelled": n, "epochs": epochs, "accuracy": acc, "seconds": secs})
            print(f"  curve: {n} unlabelled ({epochs} epochs): {acc:.4f}", flush=True)
        results["curve"] = {"dataset": name, "shots": shots, "seed": seed, "points": curve}
    return cell


MODELS = ("teacher_frozen_prototypes", "student_frozen_prototypes", "teacher", "L6_distilled",
          "L6_alone", "LS_distilled", "LS_alone")


def table(results, small: int) -> str:
    if any("L6_distilled" not in c for c in results["cells"]):
        return "\n".join(f"| {c['dataset']} | {c['shots']} | {c['seed']} | "
                         f"{c['teacher']['recipe']} | {100 * c['teacher']['accuracy']:.2f} | "
                         f"{c['teacher']['train_seconds']:.0f} s |" for c in results["cells"])
    rows = ["| data set | K | seeds | " + " | ".join(m.replace("LS", f"L{small}") for m in MODELS)
            + " |", "|" + " --- |" * (3 + len(MODELS))]
    groups = {}
    for cell in results["cells"]:
        groups.setdefault((cell["dataset"], cell["shots"]), []).append(cell)
    for (name, shots), cells in sorted(groups.items()):
        vals = []
        for m in MODELS:
            m = m.replace("LS", f"L{small}")
            accs = [c[m] if isinstance(c[m], float) else c[m]["accuracy"] for c in cells]
            if len(accs) > 1:
                r = mean_ci95_runs(accs)
                vals.append(f"{100 * r.mean:.2f} +- {100 * r.ci95:.2f}")
            else:
                vals.append(f"{100 * accs[0]:.2f}")
        rows.append(f"| {name} | {shots} | {len(cells)} | " + " | ".join(vals) + " |")
    pairs = (("L6_distilled", "L6_alone"), (f"L{small}_distilled", f"L{small}_alone"),
             ("teacher", "L6_distilled"))
    rows += ["", "Paired over the same seeds (the same K labels), points, mean +- t 95% CI:"]
    for (name, shots), cells in sorted(groups.items()):
        if len(cells) > 1:
            diffs = []
            for a, b in pairs:
                d = mean_ci95_runs([c[a]["accuracy"] - c[b]["accuracy"] for c in cells])
                diffs.append(f"{a} - {b} {100 * d.mean:+.2f} +- {100 * d.ci95:.2f}")
            rows.append(f"- {name}, K={shots}: " + "; ".join(diffs))
    last = results["cells"][-1]
    rows += ["", "Parameters: " + ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in
                                            last["params"].items())]
    for cell in results["cells"]:
        if "sentences_per_second" in cell:
            rows.append(f"Sentences/s ({cell['dataset']} test texts, this machine): " + ", ".join(
                f"{k} {v:.0f}" for k, v in cell["sentences_per_second"].items()))
    if results.get("curve"):
        cv = results["curve"]
        rows += ["", f"Curve ({cv['dataset']}, K={cv['shots']}, seed {cv['seed']}, L6 distilled, "
                     "same number of optimizer steps): " + ", ".join(
                         f"{p['unlabelled']} unlabelled -> {100 * p['accuracy']:.2f}"
                         for p in cv["points"])]
    return "\n".join(rows) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["banking77", "clinc150"],
                   choices=sorted(LOADERS))
    p.add_argument("--shots", type=int, nargs="+", default=[10, 5])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--teacher", default="all-mpnet-base-v2")
    p.add_argument("--student", default="all-MiniLM-L6-v2")
    p.add_argument("--small-layers", type=int, default=3)
    p.add_argument("--unlabelled", type=int, default=None, help="keep N unlabelled texts")
    p.add_argument("--teacher-epochs", type=int, default=3)
    p.add_argument("--teacher-batch", type=int, default=16)
    p.add_argument("--teacher-lr", type=float, default=2e-5)
    p.add_argument("--teacher-recipe", choices=["ce", "pairs"], default="ce",
                   help="ce: encoder + head on cross-entropy; pairs: SetFit's pair objective, "
                        "then a head on the tuned embeddings")
    p.add_argument("--teacher-only", action="store_true",
                   help="stop each cell after the teacher (to compare recipes)")
    p.add_argument("--student-epochs", type=int, default=2)
    p.add_argument("--student-batch", type=int, default=32)
    p.add_argument("--student-lr", type=float, default=1e-4)
    p.add_argument("--alone-epochs", type=int, default=6)
    p.add_argument("--alone-lr", type=float, default=5e-5)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--accumulate", type=int, default=1)
    p.add_argument("--keep-students", action="store_true",
                   help="also save each student under CACHE_DIR/students (e.g. for "
                        "scripts/oos_clinc.py)")
    p.add_argument("--curve", type=int, nargs="*", default=[])
    p.add_argument("--cache-dir", type=Path, default=CACHE)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--out", type=Path, default=Path("results/distill_text.json"))
    p.add_argument("--md", type=Path, default=Path("results/distill_text.md"))
    args = p.parse_args()
    results = {"cells": []}
    if args.out.is_file():
        results = json.loads(args.out.read_text())
    results["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "jax": jax.__version__, "device": str(jax.devices()[0])}
    results["settings"] = {k: (str(v) if isinstance(v, Path) else v)
                           for k, v in vars(args).items()}
    encoders = {"teacher": load_sentence_encoder(args.teacher),
                "student": load_sentence_encoder(args.student)}
    done = {(c["dataset"], c["shots"], c["seed"]) for c in results["cells"]}
    for name in args.datasets:
        for shots in args.shots:
            for seed in args.seeds:
                if (name, shots, seed) in done:
                    continue
                t = time.perf_counter()
                cell = run_cell(name, shots, seed, args, encoders, results)
                cell["seconds"] = time.perf_counter() - t
                results["cells"].append(cell)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                tmp = args.out.with_suffix(".tmp")
                tmp.write_text(json.dumps(results, indent=1) + "\n")
                os.replace(tmp, args.out)
                args.md.write_text(table(results, args.small_layers))
                print(f"  cell done in {cell['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
