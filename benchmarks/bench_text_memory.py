"""Peak resident memory of whole-encoder fine-tuning (``distill.text.finetune_classifier``).

K Banking77 training texts for each of its first C classes (``k_shot_indices``, key 0), one model
loaded, the peak RSS reset, then ``--epochs`` of fine-tuning with ``--batch-size`` rows: prints
the seconds, the RSS before training and its peak during it. Run it on two commits to compare.

    SMALLSAMPLE_DATA=../shared/data python benchmarks/bench_text_memory.py all-mpnet-base-v2

Results and their machine belong in ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from smallsample.bench.memory import peak_rss_mb, reset_peak_rss
from smallsample.data.text import k_shot_indices, load_banking77
from smallsample.distill import text as dt
from smallsample.text import load_sentence_encoder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default="all-MiniLM-L6-v2")
    p.add_argument("--classes", type=int, default=64)
    p.add_argument("--shots", type=int, default=10)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--accumulate", type=int, default=1)
    args = p.parse_args()
    train = load_banking77()["train"]
    keep = np.flatnonzero((train.labels >= 0) & (train.labels < args.classes))
    pick = keep[k_shot_indices(jax.random.key(0), train.labels[keep], num_classes=args.classes,
                               shots=args.shots).ravel()]
    texts = [train.texts[i] for i in pick]
    labels = train.labels[pick].astype(np.int32)
    encoder = load_sentence_encoder(args.model)
    reset_peak_rss()
    before = peak_rss_mb()
    t = time.perf_counter()
    dt.finetune_classifier(jax.random.key(1), encoder, texts, labels,
                           label_names=[str(c) for c in range(args.classes)], epochs=args.epochs,
                           batch_size=args.batch_size, accumulate=args.accumulate,
                           learning_rate=2e-5, progress=False)
    print(f"{args.model}: {len(texts)} texts, {args.epochs} epoch(s), batch {args.batch_size} x "
          f"{args.accumulate}: {time.perf_counter() - t:.0f} s, RSS before {before:.0f} MB, "
          f"peak {peak_rss_mb():.0f} MB", flush=True)


if __name__ == "__main__":
    main()
