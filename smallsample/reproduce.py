"""Published tables as data, and the runs that reproduce them (used by ``scripts/reproduce_*``).

Each entry trains a preset (optionally with fewer steps) and evaluates it with the paper's test
protocol on fixed episodes, writing ``results/<table>.json`` and a markdown table with the paper's
number beside ours.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from smallsample.config import make_config
from smallsample.evaluate import evaluate
from smallsample.registry import build_learner, load_data
from smallsample.train import load_params, run_checkpoint, train_and_evaluate
from smallsample.train.checkpoint import has_checkpoint

# table -> list of (training preset, [(ways, shots, paper accuracy %), ...])
TABLES = {
    # Snell, Swersky & Zemel 2017, Table 1 (Omniglot, Vinyals split, 1000 test episodes there).
    "protonet-omniglot": [
        ("omniglot-protonet-20w1s", [(5, 1, 98.8), (20, 1, 96.0)]),
        ("omniglot-protonet-20w5s", [(5, 5, 99.7), (20, 5, 98.9)]),
    ],
    # Finn, Abbeel & Levine 2017, Table 1 (Omniglot).
    "maml-omniglot": [
        ("omniglot-maml-5w1s", [(5, 1, 98.7)]),
        ("omniglot-maml-5w5s", [(5, 5, 99.9)]),
        ("omniglot-maml-20w1s", [(20, 1, 95.8)]),
        ("omniglot-maml-20w5s", [(20, 5, 98.9)]),
    ],
    # mini-ImageNet (Ravi & Larochelle's split): MAML, Finn et al. 2017 Table 2 (Conv-4, 32
    # filters); prototypical networks, Snell et al. 2017 Table 2 (Conv-4, 30-/20-way training);
    # prototypical networks on ResNet-12, Lee et al. 2019 (MetaOptNet) Table 1.
    "maml-mini-imagenet": [
        ("mini-imagenet-maml-5w1s", [(5, 1, 48.70)]),
        ("mini-imagenet-maml-5w5s", [(5, 5, 63.11)]),
    ],
    "protonet-mini-imagenet": [
        ("mini-imagenet-protonet-5w1s", [(5, 1, 49.42)]),
        ("mini-imagenet-protonet-5w5s", [(5, 5, 68.20)]),
        ("mini-imagenet-protonet-resnet12-5w1s", [(5, 1, 59.25)]),
        ("mini-imagenet-protonet-resnet12-5w5s", [(5, 5, 75.60)]),
    ],
    # CIFAR-FS: no Conv-4 ProtoNet number is quoted here until checked against the paper; the
    # table reports ours alone.
    "protonet-cifar-fs": [
        ("cifar-fs-protonet-5w1s", [(5, 1, None)]),
        ("cifar-fs-protonet-5w5s", [(5, 5, None)]),
    ],
}


def run_table(table: str, *, overrides: tuple[str, ...] = (), root=None, runs="runs",
              out="results", only: tuple[str, ...] = (), episodes: int = 600,
              progress: bool = True) -> list[dict]:
    """Trains and evaluates every row of ``table``; returns and writes the rows."""
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; choose from {', '.join(TABLES)}")
    rows = []
    for preset, evals in TABLES[table]:
        if only and preset not in only:
            continue
        config = make_config(preset, list(overrides))
        data = load_data(config, root=root)
        run_dir = Path(runs) / table / preset
        t0 = time.time()
        resume = has_checkpoint(run_dir)
        result = train_and_evaluate(config, run_dir, resume=resume, progress=progress, data=data)
        seconds = time.time() - t0
        params = load_params(run_checkpoint(run_dir)[0])
        for ways, shots, paper in evals:
            learner = build_learner(config, ways=ways, test=True)
            res = evaluate(learner, params, jnp.asarray(data["test"]), ways=ways, shots=shots,
                           queries=config.queries, num_episodes=episodes,
                           seed=config.eval_seed)
            rows.append({"table": table, "preset": preset, "ways": ways, "shots": shots,
                         "paper": paper, "ours": 100 * res.mean, "ci95": 100 * res.ci95,
                         "episodes": len(res.accuracies), "steps": result.steps,
                         "train_seconds": seconds, "overrides": list(overrides),
                         "device": jax.devices()[0].device_kind})
            print(f"{preset}: {ways}-way {shots}-shot {100 * res.mean:.2f} +- "
                  f"{100 * res.ci95:.2f}% (paper {'-' if paper is None else paper})", flush=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{table}.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| setting | paper | ours (600 episodes, 95% CI) | steps | train time | hardware |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        paper = "-" if r["paper"] is None else r["paper"]
        lines.append(f"| {r['ways']}-way {r['shots']}-shot ({r['preset']}) | {paper} | "
                     f"{r['ours']:.2f} +- {r['ci95']:.2f} | {r['steps']} | "
                     f"{r['train_seconds'] / 60:.0f} min | {r['device']} |")
    (out / f"{table}.md").write_text("\n".join(lines) + "\n")
    return rows


def main(table: str, argv: list[str] | None = None) -> list[dict]:
    """Command line of ``scripts/reproduce_<table>.py``: ``[key=value ...] [--only PRESET]``."""
    ap = argparse.ArgumentParser(description=f"Reproduce the {table} table.")
    ap.add_argument("overrides", nargs="*", help="key=value settings applied to every preset")
    ap.add_argument("--only", action="append", default=[],
                    help="run only this preset (repeatable)")
    ap.add_argument("--data", default=None)
    ap.add_argument("--episodes", type=int, default=600)
    args = ap.parse_args(argv)
    return run_table(table, overrides=tuple(args.overrides), root=args.data,
                     only=tuple(args.only), episodes=args.episodes)
