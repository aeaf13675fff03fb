"""Does a small prototypical network learn more from a wider teacher than from the labels alone?

On Omniglot (Vinyals split), for two settings:

- ``20w1s``: the preset ``omniglot-protonet-20w1s`` (60-way 1-shot training episodes, 5 queries,
  the rate halved five times over the run), tested 20-way 1-shot;
- ``5of20``: the augmentation experiment's setting (``scripts/augment_experiment.py``): only the
  first 5 of the 20 drawings of each training class, 20-way 1-shot training episodes with 4
  queries, tested 5-way 1-shot;

three models are trained with the same seed and the same affine augmentation: the teacher
(Conv-4, ``--teacher-width`` filters), the student alone (Conv-4, ``--student-width``) and the
student distilled from the teacher (``teacher=RUN``: the teacher sees the same augmented episode
and the student's query loss is ``(1 - alpha) CE + alpha T^2 KL(teacher || student)``). The
teacher of ``5of20`` is trained on the same 5 drawings: no image the student does not see. All
three are tested on the same 600 episodes, so the comparisons are paired: the mean per-episode
difference with its 95% interval.

    python scripts/distill_omniglot.py                   # the full-length recipe (GPU)
    python scripts/distill_omniglot.py --steps 2000 20w1s=1000   # what a 2-core CPU affords

Writes results/distill_omniglot.json and .md; runs go to runs/distill-omniglot/SETTING/MODEL and
resume from their checkpoints when the script is run again.
"""

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

from smallsample.config import make_config
from smallsample.evaluate import mean_ci95
from smallsample.registry import load_data
from smallsample.train import load_params, run_checkpoint, train_and_evaluate
from smallsample.train.checkpoint import has_checkpoint

AFFINE = "affine(max_degrees=10,max_pixels=2,min_scale=0.9,max_scale=1.1,max_shear=10)"


def settings(steps: dict[str, int]) -> dict[str, tuple[str | None, list[str]]]:
    """``name -> (preset, overrides)`` of the two settings; ``steps``: each setting's training
    steps where shorter than the full length (10,000)."""
    full20, full5 = [], [f"steps={steps.get('5of20', 10000)}"]
    if "20w1s" in steps:  # the preset's schedule (halved every fifth of the run), shortened
        n = steps["20w1s"]
        decay = max(10, n // 5 // 10 * 10)
        full20 = [f"steps={n}", f"lr_decay_every={decay}", f"checkpoint_every={decay}",
                  f"eval_every={max(decay, n // 2 // decay * decay)}"]
    return {
        "5of20": (None, ["learner=protonet", "ways=5", "shots=1", "train_ways=20",
                         "train_queries=4", "per_class=5", "val_part=", "eval_every=500",
                         "checkpoint_every=500", *full5]),
        "20w1s": ("omniglot-protonet-20w1s", ["val_episodes=100", *full20]),
    }


def n_params(run: Path) -> int:
    return int(sum(np.size(x) for x in jax.tree.leaves(load_params(run_checkpoint(run)[0]))))


def train(config, run: Path, data) -> dict:
    t0 = time.time()
    res = train_and_evaluate(config, run, resume=has_checkpoint(run), progress=False, data=data)
    return {"run": str(run), "width": config.width, "parameters": n_params(run),
            "test_accuracy": res.test.mean, "ci95": res.test.ci95, "steps": res.steps,
            "train_seconds": json.loads((run / "results.json").read_text())["train_seconds"],
            "wall_seconds": time.time() - t0, "accuracies": np.asarray(res.test.accuracies)}


def paired(a: np.ndarray, b: np.ndarray) -> dict:
    d = mean_ci95(a - b)
    return {"mean": d.mean, "ci95": d.ci95, "episodes": len(a)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", nargs="+", default=[], metavar="[SETTING=]N",
                    help="training steps of every model, of all settings (N) or of one "
                         "(5of20=N, 20w1s=N); default: the full recipe, 10,000")
    ap.add_argument("--teacher-width", type=int, default=64)
    ap.add_argument("--student-width", type=int, default=16)
    ap.add_argument("--weight", type=float, default=0.5, help="alpha, the KD term's weight")
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--augment", default=AFFINE)
    ap.add_argument("--only", choices=("5of20", "20w1s"), action="append", default=[])
    ap.add_argument("--data", default=None)
    ap.add_argument("--runs", default="runs/distill-omniglot")
    ap.add_argument("--out", default="results")
    args = ap.parse_args(argv)
    steps = {}
    for item in args.steps:
        name, _, n = item.rpartition("=")
        if name not in ("", "5of20", "20w1s") or not n.isdigit() or int(n) < 10:
            raise SystemExit(f"error: --steps {item!r}: give N or SETTING=N (5of20, 20w1s), "
                             f"N >= 10")
        steps.update({name: int(n)} if name else {"5of20": int(n), "20w1s": int(n)})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"teacher_width": args.teacher_width,
               "student_width": args.student_width, "distill_weight": args.weight,
               "distill_temperature": args.temperature, "augment": args.augment,
               "device": jax.devices()[0].device_kind, "jax": jax.__version__, "settings": {}}
    t_all = time.time()
    for name, (preset, overrides) in settings(steps).items():
        if args.only and name not in args.only:
            continue
        base = make_config(preset, [*overrides, f"augment={args.augment}"])
        data = load_data(base, root=args.data)
        runs = Path(args.runs) / name
        teacher_cfg = base.replace(width=args.teacher_width)
        models = {"teacher": train(teacher_cfg, runs / "teacher", data)}
        print(name, "teacher", {k: v for k, v in models["teacher"].items() if k != "accuracies"},
              flush=True)
        student = base.replace(width=args.student_width)
        models["student_alone"] = train(student, runs / "student-alone", data)
        kd = student.replace(teacher=str(runs / "teacher"), distill_weight=args.weight,
                             distill_temperature=args.temperature)
        models["student_kd"] = train(kd, runs / "student-kd", data)
        acc = {k: m.pop("accuracies") for k, m in models.items()}
        summary["settings"][name] = {
            "steps": base.steps, "lr_decay_every": base.lr_decay_every,
            "test": f"{base.ways}-way {base.shots}-shot, {len(acc['teacher'])} episodes",
            "train": f"{base.effective_train_ways}-way {base.effective_train_shots}-shot, "
                     f"{base.train_queries} queries"
                     + (f", first {base.per_class} drawings per class" if base.per_class else ""),
            "models": models,
            "paired": {"student_kd - student_alone": paired(acc["student_kd"],
                                                            acc["student_alone"]),
                       "student_kd - teacher": paired(acc["student_kd"], acc["teacher"]),
                       "student_alone - teacher": paired(acc["student_alone"], acc["teacher"])}}
        print(name, json.dumps(summary["settings"][name]["paired"]), flush=True)
    summary["wall_seconds"] = time.time() - t_all
    (out / "distill_omniglot.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "distill_omniglot.md").write_text(markdown(summary))
    print(markdown(summary))


def markdown(summary: dict) -> str:
    lines = [f"Omniglot, Conv-4 prototypical networks: teacher width {summary['teacher_width']}, "
             f"students width {summary['student_width']}, the same training steps for the "
             f"three models of a setting, augmentation `{summary['augment']}` for all; KD: alpha = "
             f"{summary['distill_weight']}, T = {summary['distill_temperature']}, on the "
             f"query logits, the teacher fed the student's augmented episode. Device: "
             f"{summary['device']}; whole experiment {summary['wall_seconds'] / 60:.0f} min.", "",
             "| setting | model | parameters | steps | test accuracy (95% CI) | train time |",
             "|---|---|---|---|---|---|"]
    for name, s in summary["settings"].items():
        for model, m in s["models"].items():
            lines.append(f"| {name} ({s['test']}) | {model} | {m['parameters']:,} | "
                         f"{m['steps']} | "
                         f"{100 * m['test_accuracy']:.2f} +- {100 * m['ci95']:.2f} | "
                         f"{m['train_seconds'] / 60:.1f} min |")
    lines += ["", "Paired over the same test episodes (mean per-episode difference, points, "
                  "95% CI):", "", "| setting | difference | mean +- CI |", "|---|---|---|"]
    for name, s in summary["settings"].items():
        for what, d in s["paired"].items():
            lines.append(f"| {name} | {what} | {100 * d['mean']:+.2f} +- "
                         f"{100 * d['ci95']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
