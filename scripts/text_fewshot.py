"""Few-shot intent classification on frozen all-MiniLM-L6-v2 embeddings (CLINC150, Banking77).

- Episodic N-way K-shot on class-disjoint test intents (``episodic_split``, seed 0): prototypes,
  linear probe, ridge head on ``--episodes`` episodes; whole-encoder fine-tuning on
  ``--finetune-episodes`` (expensive on CPU).
- K shots per class over all intents (150 / 77) with the full test split: mean +- 95% CI over
  ``--seeds`` seeds (fine-tuning: ``--finetune-seeds`` seeds at ``--finetune-kshot`` shots;
  ``--finetune-augment eda|both``: a variant trained with EDA token augmentation).
- Encoder throughput (sentences/s, uncached, this machine) and total time.

Writes ``--out`` (JSON) and ``--md`` (markdown table). Embeddings are cached under
``--cache-dir``, so only the first run encodes.

    SMALLSAMPLE_DATA=/work/shared/data python scripts/text_fewshot.py
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import jax

from smallsample.augment import text as text_augment
from smallsample.data.text import class_indexed, episodic_split, load_banking77, load_clinc150
from smallsample.evaluate import evaluate
from smallsample.text import encode, fewshot, load_sentence_encoder

LOADERS = {"clinc150": load_clinc150, "banking77": load_banking77}
CACHE = Path.home() / ".cache" / "smallsample" / "embeddings"


def cheap_learners(ways, skip=False):
    if skip:
        return {}
    return {"prototypes": fewshot.prototypes(ways),
            "linear_probe": fewshot.linear_probe(ways, steps=100, learning_rate=0.1),
            "ridge": fewshot.ridge(ways, lam=1.0)}


def eda(key, tokens, mask):
    """The text augmentation used with ``--finetune-augment eda``: EDA's random deletion (rate
    0.1) then one random swap."""
    k_del, k_swap = jax.random.split(key)
    tokens, mask = text_augment.random_deletion(k_del, tokens, mask, rate=0.1)
    return text_augment.random_swap(k_swap, tokens, mask, num_swaps=1)


def finetune_variants(encoder, ways, args):
    """name -> whole-encoder fine-tuning learner: plain, with EDA, or both
    (``--finetune-augment``)."""
    augments = {"none": {"finetune_encoder": None}, "eda": {"finetune_encoder+eda": eda},
                "both": {"finetune_encoder": None, "finetune_encoder+eda": eda}}
    augments = augments[args.finetune_augment]
    return {name: fewshot.encoder_finetune(encoder.config, ways, steps=args.finetune_steps,
                                           learning_rate=args.finetune_lr,
                                           pooling=encoder.pooling, normalize=encoder.normalize,
                                           augment=aug)
            for name, aug in augments.items()}


def fmt(r):
    return {"mean": r.mean, "ci95": r.ci95, "n": int(len(r.accuracies))}


def throughput(encoder, texts, n=512):
    encode(texts[:64], encoder=encoder, progress=False)  # compile the common buckets
    sample = texts[64:64 + n]
    t = time.perf_counter()
    encode(sample, encoder=encoder, progress=False)
    return len(sample) / (time.perf_counter() - t)


def run_dataset(name, encoder, args, log):
    out = {"episodic": {}, "kshot": {}}
    sets = LOADERS[name]()
    t0 = time.perf_counter()
    emb = fewshot.embed_splits(sets, encoder=encoder, cache_dir=args.cache_dir, progress=True)
    out["embed_s"] = time.perf_counter() - t0
    # Episodic, class-disjoint test intents.
    test = episodic_split(name, seed=0)["test"]
    idx = class_indexed(test.labels, num_classes=test.num_classes)
    data = jax.numpy.asarray(fewshot.lookup_embeddings(test.texts, sets, emb)[idx])
    log(f"{name}: episodic test part {data.shape}")
    ids = None
    for ways in args.ways:
        for shots in args.shots:
            key = f"{ways}way{shots}shot"
            res = {}
            for lname, learner in cheap_learners(ways, args.skip_cheap).items():
                r = evaluate(learner, learner.init(None, None), data, ways=ways, shots=shots,
                             queries=15, num_episodes=args.episodes, seed=0)
                res[lname] = fmt(r)
                log(f"{name} {key} {lname}: {r}")
            if args.finetune_episodes and ways in args.finetune_ways:
                if ids is None:
                    length = min(args.max_length, max(
                        len(e.ids) for e in encoder.tokenizer.encode_batch(test.texts)))
                    ids = jax.numpy.asarray(fewshot.token_id_matrix(
                        encoder.tokenizer, test.texts, length=length)[idx])
                    log(f"{name}: token ids {ids.shape}")
                for vname, ft in finetune_variants(encoder, ways, args).items():
                    t = time.perf_counter()
                    r = evaluate(ft, {"encoder": encoder.params}, ids, ways=ways, shots=shots,
                                 queries=15, num_episodes=args.finetune_episodes, seed=0, batch=5)
                    res[vname] = fmt(r) | {"seconds": time.perf_counter() - t}
                    log(f"{name} {key} {vname}: {r} ({time.perf_counter() - t:.0f}s)")
            if res:
                out["episodic"][key] = res
    # K shots per class over all intents, the full test split.
    train, test_full = sets["train"], sets["test"]
    keep = test_full.labels >= 0
    tx, ty = emb["test"][keep], test_full.labels[keep]
    for shots in args.kshot:
        res = {}
        for lname, learner in cheap_learners(train.num_classes, args.skip_cheap).items():
            r = fewshot.kshot_evaluate(learner, learner.init(None, None), emb["train"],
                                       train.labels, tx, ty, num_classes=train.num_classes,
                                       shots=shots, seeds=range(args.seeds))
            res[lname] = fmt(r)
            log(f"{name} {shots}-shot/class {lname}: {r}")
        if args.finetune_seeds and shots in args.finetune_kshot:
            length = min(args.max_length, max(
                len(e.ids) for e in encoder.tokenizer.encode_batch(train.texts + test_full.texts)))
            tr_ids = fewshot.token_id_matrix(encoder.tokenizer, train.texts, length=length)
            kept = [t for t, k in zip(test_full.texts, keep, strict=True) if k]
            te_ids = fewshot.token_id_matrix(encoder.tokenizer, kept, length=length)
            for vname, ft in finetune_variants(encoder, train.num_classes, args).items():
                ft_j = ft._replace(adapt=jax.jit(ft.adapt), predict=jax.jit(ft.predict))
                t = time.perf_counter()
                r = fewshot.kshot_evaluate(ft_j, {"encoder": encoder.params}, tr_ids,
                                           train.labels, te_ids, ty,
                                           num_classes=train.num_classes, shots=shots,
                                           seeds=range(args.finetune_seeds), predict_batch=512)
                res[vname] = fmt(r) | {"seconds": time.perf_counter() - t}
                log(f"{name} {shots}-shot/class {vname}: {r} ({time.perf_counter() - t:.0f}s)")
        if res:
            out["kshot"][f"{shots}shot"] = res
    out["throughput_sentences_per_s"] = throughput(encoder, sets["test"].texts)
    log(f"{name}: throughput {out['throughput_sentences_per_s']:.1f} sentences/s")
    return out


def pct(r):
    if r is None:
        return "-"
    ci = f" ± {100 * r['ci95']:.2f}" if r["n"] > 1 else ""
    return f"{100 * r['mean']:.2f}{ci} ({r['n']})"


def markdown(results, command):
    lines = ["# Few-shot intent classification on frozen all-MiniLM-L6-v2 embeddings", "",
             f"Command: `{command}`", "",
             "Accuracy % ± 95% CI (number of episodes, or of seeds for per-class columns). "
             "Episodic: N-way K-shot, 15 queries per class, class-disjoint test intents of "
             "`episodic_split(seed=0)` (CLINC150: 50 intents, Banking77: 27). Per class: K "
             "random training examples of every intent (150 / 77), the whole test split "
             "(4,500 / 3,080). `finetune_encoder`: all encoder weights and a prototype-initialised "
             f"head, {results['args']['finetune_steps']} full-batch Adam steps "
             f"(lr {results['args']['finetune_lr']}) on the support set, on far fewer episodes "
             "(CPU cost). `+eda`: each step also trains on an EDA-augmented copy of the "
             "support set (random deletion 0.1, one swap; `[CLS]`/`[SEP]` kept).", ""]
    learners = ["prototypes", "linear_probe", "ridge", "finetune_encoder",
                "finetune_encoder+eda"]
    for name, res in results["datasets"].items():
        cols = list(res["episodic"]) + [f"{k}/class" for k in res["kshot"]]
        lines += [f"## {name}", "", "| learner | " + " | ".join(cols) + " |",
                  "|---" * (len(cols) + 1) + "|"]
        for ln in learners:
            cells = [pct(res["episodic"][c].get(ln)) for c in res["episodic"]]
            cells += [pct(res["kshot"][c].get(ln)) for c in res["kshot"]]
            if any(c != "-" for c in cells):
                lines.append(f"| {ln} | " + " | ".join(cells) + " |")
        lines += ["", f"Encoder throughput (uncached, batch 64): "
                      f"{res['throughput_sentences_per_s']:.0f} sentences/s.", ""]
    lines += [f"Whole run: {results['seconds']:.0f} s on {results['machine']} (CPU shared with "
              "other jobs; embeddings read from the cache when present).", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["clinc150", "banking77"])
    p.add_argument("--ways", type=int, nargs="+", default=[5, 10])
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--kshot", type=int, nargs="+", default=[5, 10])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--finetune-episodes", type=int, default=20)
    p.add_argument("--finetune-seeds", type=int, default=0)
    p.add_argument("--finetune-steps", type=int, default=10)
    p.add_argument("--finetune-lr", type=float, default=5e-5)
    p.add_argument("--finetune-ways", type=int, nargs="+", default=[5])
    p.add_argument("--finetune-kshot", type=int, nargs="+", default=[5],
                   help="shots per class fine-tuned over all intents (with --finetune-seeds)")
    p.add_argument("--finetune-augment", choices=["none", "eda", "both"], default="none",
                   help="fine-tune without / with / both without and with EDA token "
                        "augmentation (deletion 0.1 + one swap)")
    p.add_argument("--skip-cheap", action="store_true",
                   help="only whole-encoder fine-tuning (the frozen-encoder learners are skipped)")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--cache-dir", type=Path, default=CACHE)
    p.add_argument("--out", type=Path, default=Path("results/text_fewshot.json"))
    p.add_argument("--md", type=Path, default=Path("results/text_fewshot.md"))
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    encoder = load_sentence_encoder()

    def log(msg):
        print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", flush=True)

    results = {"datasets": {}, "args": {k: (str(v) if isinstance(v, Path) else v)
                                        for k, v in vars(args).items()}}
    for name in args.datasets:
        results["datasets"][name] = run_dataset(name, encoder, args, log)
    results["seconds"] = time.perf_counter() - t0
    results["machine"] = f"{platform.processor() or platform.machine()}, jax {jax.__version__}"
    command = "SMALLSAMPLE_DATA=/work/shared/data python scripts/text_fewshot.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    args.md.write_text(markdown(results, command.strip()))
    log(f"wrote {args.out} and {args.md}")


if __name__ == "__main__":
    main()
