"""Which examples to label on a fixed budget? Random vs coreset vs active choice, for prototypes
on all-MiniLM-L6-v2 embeddings of CLINC150 (issue 4's experiment).

The pool is CLINC150's ``train`` split (15,000 utterances, 150 intents x 100); a budget of ``k``
labels per class is ``150 k`` labelled examples; the score is the accuracy of the prototype
classifier of the labelled examples on the whole in-scope ``test`` split (4,500), mean +- 95% CI
over ``--seeds`` seeds. Strategies:

- per class (the intent of every pool example is known, only ``k`` per intent are kept, as in
  exemplar selection): ``random_per_class``, ``herding_per_class`` (iCaRL herding: the mean of
  the chosen is closest to the class mean; deterministic), ``kcenter_per_class`` (greedy k-center
  from a random first point).
- pool-wide (intents unknown until labelled; a class may end with no example, and is then never
  predicted): ``random_pool``, ``kcenter_pool`` (greedy k-center from a random first point),
  ``kmeanspp_pool`` (k-means++ seeding).
- active (``k >= 2`` only): a random seed set of one example per intent, then ``k - 1`` rounds
  of 150 labels each chosen from the prototype model of everything labelled so far (logits
  ``-|x - c|^2 / T``, ``T = 0.05``): ``uncertainty_entropy`` (highest predictive entropy) and
  ``badge`` (k-means++ on BADGE gradient embeddings; the features are projected on their first
  32 principal components to keep the ``[15000, 150 x d]`` embeddings in memory).

    SMALLSAMPLE_DATA=/work/shared/data python scripts/select_budget.py
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

from smallsample.data.text import class_indexed, k_shot_indices, load_banking77, load_clinc150
from smallsample.evaluate import mean_ci95
from smallsample.learners.protonet import squared_distances
from smallsample.select import (
    badge_select,
    herding,
    k_center_greedy,
    kmeans_plus_plus,
    uncertainty_select,
    uniform,
)
from smallsample.text import fewshot, load_sentence_encoder

CACHE = Path.home() / ".cache" / "smallsample" / "embeddings"
TEMPERATURE = 0.05
PCA_DIM = 32


def prototypes_of(x, y, chosen, num_classes):
    """Prototypes ``[C, d]`` and a ``[C]`` mask of classes with at least one labelled example."""
    onehot = np.zeros((len(chosen), num_classes))
    onehot[np.arange(len(chosen)), y[chosen]] = 1
    counts = onehot.sum(0)
    protos = (onehot.T @ x[chosen]) / np.maximum(counts, 1)[:, None]
    return protos.astype(np.float32), counts > 0


def proto_logits(x, protos, present):
    logits = -squared_distances(jnp.asarray(x), jnp.asarray(protos))
    return jnp.where(jnp.asarray(present)[None, :], logits, -jnp.inf)


def accuracy(x, y, chosen, test_x, test_y, num_classes):
    protos, present = prototypes_of(x, y, chosen, num_classes)
    pred = np.asarray(jnp.argmax(proto_logits(test_x, protos, present), -1))
    return float((pred == test_y).mean()), int(present.sum())


def per_class_select(fn, by_class, keys):
    """Applies ``fn(key, x_c [m, d]) -> [k]`` to each class: pool indices ``[C * k]``."""
    local = jax.jit(jax.vmap(fn))(keys, jnp.asarray(by_class["x"]))
    return np.take_along_axis(by_class["idx"], np.asarray(local), 1).ravel()


def active_select(key, x, y, *, num_classes, k, method, pca):
    """Seed one random example per class, then ``k - 1`` rounds of ``num_classes`` labels."""
    k_seed, k_rounds = jax.random.split(key)
    chosen = list(k_shot_indices(k_seed, y, num_classes=num_classes, shots=1).ravel())
    feats = jnp.asarray(x @ pca)
    for r in range(k - 1):
        protos, present = prototypes_of(x, y, np.asarray(chosen), num_classes)
        logits = proto_logits(x, protos, present) / TEMPERATURE
        logits = jnp.where(jnp.isfinite(logits), logits, -1e9)
        labeled = jnp.zeros(len(x), bool).at[jnp.asarray(chosen)].set(True)
        if method == "uncertainty_entropy":
            sel = uncertainty_select(logits, k=num_classes, method="entropy", labeled=labeled)
        else:
            sel = badge_select(jax.random.fold_in(k_rounds, r), logits, feats, k=num_classes,
                               labeled=labeled)
        chosen += list(np.asarray(sel.indices)[np.asarray(sel.valid)])
    return np.asarray(chosen)


def strategies_for(k, x, y, by_class, *, num_classes, pca):
    """name -> ``(key) -> chosen pool indices`` for a budget of ``k`` labels per class."""
    budget = num_classes * k
    per = by_class["idx"].shape[1]
    strategies = {
        "random_per_class": lambda key: k_shot_indices(key, y, num_classes=num_classes,
                                                       shots=k).ravel(),
        "herding_per_class": lambda key: per_class_select(
            lambda kk, xc: herding(xc, k=k), by_class,
            jax.random.split(key, num_classes)),
        "kcenter_per_class": lambda key: per_class_select(
            lambda kk, xc: k_center_greedy(xc, k=k, first=jax.random.randint(
                kk, (), 0, per)).indices, by_class, jax.random.split(key, num_classes)),
        "random_pool": lambda key: np.asarray(uniform(key, len(x), k=budget)),
        "kcenter_pool": lambda key: np.asarray(k_center_greedy(
            jnp.asarray(x), k=budget, first=jax.random.randint(key, (), 0, len(x))).indices),
        "kmeanspp_pool": lambda key: np.asarray(kmeans_plus_plus(key, jnp.asarray(x),
                                                                 k=budget)),
    }
    if k >= 2:
        for m in ("uncertainty_entropy", "badge"):
            strategies[m] = (lambda key, m=m: active_select(
                key, x, y, num_classes=num_classes, k=k, method=m, pca=pca))
    return strategies


def run(args, log):
    sets = {"clinc150": load_clinc150, "banking77": load_banking77}[args.dataset]()
    encoder = load_sentence_encoder()
    emb = fewshot.embed_splits({s: sets[s] for s in ("train", "test")}, encoder=encoder,
                               cache_dir=args.cache_dir)
    x, y = emb["train"], sets["train"].labels
    keep = sets["test"].labels >= 0
    test_x, test_y = emb["test"][keep], sets["test"].labels[keep]
    num_classes = sets["train"].num_classes
    ci = class_indexed(y, num_classes=num_classes)
    by_class = {"idx": ci, "x": x[ci]}
    centred = x - x.mean(0)
    pca = np.linalg.svd(centred, full_matrices=False)[2][:PCA_DIM].T.astype(np.float32)
    results = {}
    for k in args.budgets:
        budget = num_classes * k
        strategies = strategies_for(k, x, y, by_class, num_classes=num_classes, pca=pca)
        res = {}
        for name, fn in strategies.items():
            t = time.perf_counter()
            accs, covered = [], []
            for s in range(args.seeds):
                chosen = np.asarray(fn(jax.random.key(1000 + s)))
                assert len(np.unique(chosen)) == len(chosen) <= budget, name
                a, c = accuracy(x, y, chosen, test_x, test_y, num_classes)
                accs.append(a)
                covered.append(c)
            r = mean_ci95(accs)
            res[name] = {"mean": r.mean, "ci95": r.ci95, "accuracies": accs,
                         "classes_covered": float(np.mean(covered)),
                         "seconds": time.perf_counter() - t}
            log(f"k={k} {name}: {100 * r.mean:.2f} +- {100 * r.ci95:.2f} "
                f"(classes covered {np.mean(covered):.1f}/{num_classes}, "
                f"{time.perf_counter() - t:.0f}s)")
        results[f"{k}_per_class"] = res
    return results, num_classes, len(x), len(test_y)


def markdown(results, meta, command):
    lines = [f"# Labelling budget: random vs coreset vs active choice ({meta['dataset']}, "
             "prototypes on MiniLM embeddings)", "", f"Command: `{command}`", "",
             f"Pool: the {meta['pool']} training utterances; budget k labels per class "
             f"({meta['classes']} k in all); accuracy % of the prototype classifier on the "
             f"{meta['test']} in-scope test utterances, mean ± 95% CI over {meta['seeds']} seeds "
             "(herding per class is deterministic: its CI is 0). `covered`: intents with at "
             "least one labelled example (pool-wide and active choices can miss some; those are "
             "never predicted). See the script's docstring for the strategies.", ""]
    budgets = list(results)
    lines += ["| strategy | " + " | ".join(f"{b.split('_')[0]} per class (covered)"
                                           for b in budgets) + " |",
              "|---" * (len(budgets) + 1) + "|"]
    names = list(dict.fromkeys(n for b in budgets for n in results[b]))
    for n in names:
        cells = []
        for b in budgets:
            r = results[b].get(n)
            cells.append("-" if r is None else f"{100 * r['mean']:.2f} ± {100 * r['ci95']:.2f} "
                                               f"({r['classes_covered']:.0f})")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", f"Whole run: {meta['seconds']:.0f} s (2 shared CPU cores).", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=["clinc150", "banking77"], default="clinc150")
    p.add_argument("--budgets", type=int, nargs="+", default=[1, 5])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--cache-dir", type=Path, default=CACHE)
    p.add_argument("--out", type=Path, default=Path("results/select_budget.json"))
    p.add_argument("--md", type=Path, default=Path("results/select_budget.md"))
    args = p.parse_args(argv)
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", flush=True)

    results, classes, pool, test = run(args, log)
    meta = {"dataset": args.dataset, "classes": classes, "pool": pool, "test": test,
            "seeds": args.seeds, "seconds": time.perf_counter() - t0,
            "temperature": TEMPERATURE, "pca_dim": PCA_DIM}
    command = "SMALLSAMPLE_DATA=/work/shared/data python scripts/select_budget.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    args.md.write_text(markdown(results, meta, command.strip()))
    log(f"wrote {args.out} and {args.md}")


if __name__ == "__main__":
    main()
