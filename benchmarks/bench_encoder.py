"""Sentence-encoder throughput (sentences/s) on CLINC150 utterances, side by side:

- ``bucketed``: :func:`smallsample.text.encode` as shipped: texts sorted by token count, batches
  padded to the next bucket length (16/32/64/128/256);
- ``fixed-256``: the same jitted model with every batch padded to the model's 256 tokens (what a
  fixed-length tokenizer setting would give);
- ``fixed-128``: padded to 128, the ``tokenizer.json`` default of all-MiniLM-L6-v2.

Compilation is excluded (each configuration runs once on the same texts before timing). Prints
one JSON line per configuration and the ratios.

    python benchmarks/bench_encoder.py --num 512 --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import numpy as np

from smallsample.data.text import load_clinc150
from smallsample.text import encode, load_sentence_encoder, pad_ids
from smallsample.text.encode import embed_batch


def fixed_length(encoder, texts, *, batch_size, length):
    ids = [e.ids for e in encoder.tokenizer.encode_batch(texts)]
    ids = [i[:length - 1] + i[-1:] if len(i) > length else i for i in ids]
    out = []
    for start in range(0, len(ids), batch_size):
        batch = pad_ids(ids[start:start + batch_size], buckets=(length,),
                        pad_id=encoder.config.pad_token_id, rows=batch_size)
        out.append(embed_batch(encoder.params, batch.input_ids, batch.attention_mask,
                               config=encoder.config, pooling=encoder.pooling,
                               normalize=encoder.normalize))
    return np.concatenate([np.asarray(o) for o in out])[:len(texts)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num", type=int, default=512, help="CLINC150 test utterances to encode")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs; the best is kept")
    parser.add_argument("--root", default=None, help="data folder (default $SMALLSAMPLE_DATA)")
    args = parser.parse_args()

    texts = load_clinc150(root=args.root)["test"].texts[:args.num]
    encoder = load_sentence_encoder()
    runs = {
        "bucketed": lambda: encode(texts, encoder=encoder, batch_size=args.batch_size,
                                   progress=False),
        "fixed-256": lambda: fixed_length(encoder, texts, batch_size=args.batch_size, length=256),
        "fixed-128": lambda: fixed_length(encoder, texts, batch_size=args.batch_size, length=128),
    }
    results, outputs = {}, {}
    for name, run in runs.items():
        outputs[name] = run()  # compile
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t0)
        results[name] = len(texts) / best
        print(json.dumps({"config": name, "sentences": len(texts), "batch_size": args.batch_size,
                          "seconds": round(best, 3), "sentences_per_s": round(results[name], 1),
                          "backend": jax.default_backend(), "cpus": os.cpu_count(),
                          "machine": platform.processor() or platform.machine()}))
    for name in ("fixed-256", "fixed-128"):
        diff = float(np.abs(outputs[name] - outputs["bucketed"]).max())
        print(f"bucketed / {name}: {results['bucketed'] / results[name]:.2f}x "
              f"(max |difference| {diff:.1e})")


if __name__ == "__main__":
    main()
