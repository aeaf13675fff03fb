"""Does augmentation help when each training class has only 5 of its 20 drawings?

Prototypical networks on Omniglot (Vinyals split), trained on only the first 5 drawings of each
training class, with and without an augmentation pipeline applied inside the jitted step; both
evaluated 5-way 1-shot on the same 600 fixed test episodes (all 20 drawings of unseen classes).

    python scripts/augment_experiment.py --steps 1500 [--data ../shared/data]

Writes results/augment.json and results/augment.md.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from smallsample.config import make_config
from smallsample.evaluate import mean_ci95
from smallsample.registry import load_data
from smallsample.train import train_and_evaluate

PIPELINE = "affine(max_degrees=10,max_pixels=2,min_scale=0.9,max_scale=1.1,max_shear=10)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default="results")
    ap.add_argument("--runs", default="runs/augment")
    ap.add_argument("--augment", default=PIPELINE)
    args = ap.parse_args()
    common = ["learner=protonet", "ways=5", "shots=1", "train_ways=20", "train_queries=4",
              "per_class=5", f"steps={args.steps}", "val_part=", "eval_every=500",
              "checkpoint_every=500", "test_episodes=600"]
    rows, per_episode = [], []
    data = None
    for name, extra in (("none", []), ("augmented", [f"augment={args.augment}"])):
        cfg = make_config(None, common + extra)
        data = data or load_data(cfg, root=args.data)
        t = time.time()
        res = train_and_evaluate(cfg, Path(args.runs) / name, progress=False, data=data)
        rows.append({"augmentation": cfg.augment or "none", "test_accuracy": res.test.mean,
                     "ci95": res.test.ci95, "episodes": len(res.test.accuracies),
                     "steps": res.steps, "seconds": time.time() - t})
        per_episode.append(np.asarray(res.test.accuracies))
        print(rows[-1], flush=True)
    # The same 600 episodes for both: the paired difference is the sharper comparison.
    diff = mean_ci95(per_episode[1] - per_episode[0])
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    summary = {"runs": rows, "paired_difference": {"mean": diff.mean, "ci95": diff.ci95}}
    (out / "augment.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = ["| training augmentation | 5-way 1-shot test accuracy | steps | time |",
             "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['augmentation']}` | {100 * r['test_accuracy']:.2f} +- "
                     f"{100 * r['ci95']:.2f}% | {r['steps']} | {r['seconds']:.0f} s |")
    lines += ["", f"Paired difference (augmented - none) over the same {len(diff.accuracies)} "
              f"episodes: {100 * diff.mean:+.2f} +- {100 * diff.ci95:.2f} points."]
    (out / "augment.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
