"""Sentence-encoder throughput (sentences/s, warm) and peak memory on CLINC150 utterances: the
teacher (all-mpnet-base-v2) and the student (all-MiniLM-L6-v2) in smallsample, and with
``--peer PYTHON`` sentence-transformers (PyTorch) on the same texts, side by side in one run.

Each (implementation, model) runs in its own process, so each peak RSS is its own: load the
model, encode the texts once (compiles; reported as ``first_s``), then ``--repeats`` timed runs,
the best kept. smallsample runs :func:`smallsample.text.encode` as shipped (texts sorted by token
count, batches padded to the next bucket length); sentence-transformers runs
``SentenceTransformer.encode`` (also sorted by length, padded to each batch's longest) under
``torch.inference_mode``, in the interpreter given by ``--peer`` (a virtualenv with torch and
sentence-transformers, never this project's), on the model folder smallsample loads. Both use
the model's own maximum length (256 and 384 tokens) and all cores. The summary gives each ratio
and the largest difference between the two implementations' embeddings.

``--buckets 8,10,12,...`` (repeatable) adds the same model with those bucket lengths, and
``--buckets exact`` with every length one (each batch padded to its longest text, as
sentence-transformers pads: one compilation per length, the lower bound on padding).
``--powers-of-two`` adds, for smallsample, the same jitted model with buckets at the powers of two
only (16, 32, 64, ...: the default before 2026-12-07); ``--padding`` adds it with every batch
padded to the model's maximum length and to 128 tokens (what a fixed-length tokenizer setting
gives). Both run in the same process as the default buckets, whose peak RSS is then that of all.

    python benchmarks/bench_encoder.py --num 2000 --batch-size 64 --repeats 3 \
        --peer /tmp/stvenv/bin/python

Prints one JSON line per run and the ratios; ``--out FILE`` also writes them as one JSON file.
Results and their machine belong in ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("all-mpnet-base-v2", "all-MiniLM-L6-v2")  # teacher, student


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(run, repeats: int) -> tuple[object, float, float]:
    """(output of the first call, its seconds, the best of ``repeats`` later calls)."""
    t0 = time.perf_counter()
    out = run()
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return out, first, best


def fixed_length(encoder, texts, *, batch_size, length):
    """Embeddings with every batch padded to ``length`` tokens (longer texts keep their last
    token, the end-of-text mark)."""
    import numpy as np

    from smallsample.text import pad_ids
    from smallsample.text.encode import embed_batch

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


def ladder_of(spec: str, max_length: int) -> tuple[int, ...]:
    """Bucket lengths from ``--buckets``: comma-separated lengths, or ``exact`` (every length, so
    each batch is padded to its longest text only, as sentence-transformers does); the model's
    maximum length is always the last."""
    if spec == "exact":
        return tuple(range(1, max_length + 1))
    lengths = sorted({int(b) for b in spec.split(",")})
    if not lengths or lengths[0] < 1:
        raise ValueError(f"--buckets {spec!r}: give positive lengths, comma-separated, or exact")
    return tuple(b for b in lengths if b < max_length) + (max_length,)


def worker_ours(args, texts) -> list[dict]:
    import jax
    import numpy as np

    from smallsample.text import encode, load_sentence_encoder

    t0 = time.perf_counter()
    encoder = load_sentence_encoder(args.model)
    load = time.perf_counter() - t0
    runs = {"bucketed": lambda: encode(texts, encoder=encoder, batch_size=args.batch_size,
                                       progress=False)}
    if args.powers_of_two:
        pow2 = tuple(b for b in (16, 32, 64, 128, 256) if b < encoder.max_length)
        pow2_encoder = encoder._replace(buckets=pow2 + (encoder.max_length,))
        runs["powers-of-two"] = lambda: encode(texts, encoder=pow2_encoder,
                                               batch_size=args.batch_size, progress=False)
    for spec in args.buckets or ():
        ladder = ladder_of(spec, encoder.max_length)
        runs[f"buckets {spec}"] = (lambda e=encoder._replace(buckets=ladder): encode(
            texts, encoder=e, batch_size=args.batch_size, progress=False))
    if args.padding:
        for length in (encoder.max_length, 128):
            runs[f"fixed-{length}"] = (lambda n=length: fixed_length(
                encoder, texts, batch_size=args.batch_size, length=n))
    rows = []
    for name, run in runs.items():
        emb, first, best = timed(run, args.repeats)
        if name == "bucketed":
            np.save(args.embeddings, np.asarray(emb))
        rows.append({"impl": "smallsample", "config": name, "load_s": round(load, 2),
                     "first_s": round(first, 2), "seconds": round(best, 3),
                     "sentences_per_s": round(len(texts) / best, 1),
                     "backend": jax.default_backend(), "jax": jax.__version__})
    for row in rows:
        row["peak_rss_mb"] = round(peak_rss_mb())
    return rows


def worker_peer(args, texts) -> list[dict]:
    import numpy as np
    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    t0 = time.perf_counter()
    model = SentenceTransformer(args.model, device="cpu")
    model.eval()
    load = time.perf_counter() - t0

    def run():
        with torch.inference_mode():
            return model.encode(texts, batch_size=args.batch_size, convert_to_numpy=True,
                                show_progress_bar=False)

    emb, first, best = timed(run, args.repeats)
    np.save(args.embeddings, np.asarray(emb, np.float32))
    return [{"impl": "sentence-transformers", "config": "bucketed", "load_s": round(load, 2),
             "first_s": round(first, 2), "seconds": round(best, 3),
             "sentences_per_s": round(len(texts) / best, 1), "torch": torch.__version__,
             "torch_threads": torch.get_num_threads(),
             "sentence_transformers": sentence_transformers.__version__,
             "peak_rss_mb": round(peak_rss_mb())}]


def worker(args) -> None:
    """One (implementation, model) run; prints its rows as one JSON line last."""
    with open(args.texts, encoding="utf-8") as f:
        texts = json.load(f)
    rows = (worker_peer if args.worker == "peer" else worker_ours)(args, texts)
    print(json.dumps(rows))


def spawn(python: str, impl: str, model: str, texts: Path, embeddings: Path, args) -> list[dict]:
    # -I for the peer: not this folder on its sys.path (kernels.py here would shadow the
    # `kernels` package that transformers imports), nor this project's PYTHONPATH.
    isolated = ["-I"] if impl == "peer" else []
    cmd = [python, *isolated, str(Path(__file__).resolve()), "--worker", impl, "--model", model,
           "--texts", str(texts), "--embeddings", str(embeddings),
           "--batch-size", str(args.batch_size), "--repeats", str(args.repeats)]
    for flag in ("padding", "powers_of_two"):
        if getattr(args, flag) and impl == "ours":
            cmd.append("--" + flag.replace("_", "-"))
    for spec in args.buckets or ():
        if impl == "ours":
            cmd += ["--buckets", spec]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num", type=int, default=2000, help="CLINC150 test utterances")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the best is kept")
    parser.add_argument("--models", default=",".join(MODELS),
                        help="comma-separated model names or folders")
    parser.add_argument("--peer", default=None,
                        help="a Python with torch and sentence-transformers (not this project's)")
    parser.add_argument("--powers-of-two", action="store_true",
                        help="also time buckets at the powers of two only (the old default)")
    parser.add_argument("--buckets", action="append", metavar="LENGTHS",
                        help="also time these bucket lengths (comma-separated, or 'exact': "
                             "each batch padded to its longest text); repeatable")
    parser.add_argument("--padding", action="store_true",
                        help="also time fixed-length padding (smallsample only)")
    parser.add_argument("--root", default=None, help="data folder (default $SMALLSAMPLE_DATA)")
    parser.add_argument("--out", default=None, help="also write all rows to this JSON file")
    parser.add_argument("--worker", choices=("ours", "peer"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--texts", help=argparse.SUPPRESS)
    parser.add_argument("--embeddings", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    import numpy as np

    from smallsample.data.text import load_clinc150
    from smallsample.models.pretrained import find_model_dir

    texts = load_clinc150(root=args.root)["test"].texts[:args.num]
    machine = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
               "python": platform.python_version(), "sentences": len(texts),
               "batch_size": args.batch_size, "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                     time.gmtime())}
    print(json.dumps(machine))
    rows, speeds, diffs = [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        text_file = Path(tmp) / "texts.json"
        text_file.write_text(json.dumps(texts), encoding="utf-8")
        for model in args.models.split(","):
            folder = str(find_model_dir(model))  # assembles all-mpnet-base-v2 once if needed
            impls = [("ours", sys.executable, model)]
            if args.peer:
                impls.append(("peer", args.peer, folder))
            embs = {}
            for impl, python, name in impls:
                out = Path(tmp) / f"{impl}.npy"
                for row in spawn(python, impl, name, text_file, out, args):
                    row["model"] = model
                    rows.append(row)
                    print(json.dumps(row))
                    if row["config"] == "bucketed":
                        speeds[model, impl] = row["sentences_per_s"]
                    else:
                        speeds[model, row["config"]] = row["sentences_per_s"]
                embs[impl] = np.load(out)
            if "peer" in embs:
                diffs[model] = float(np.abs(embs["ours"] - embs["peer"]).max())
    for model in args.models.split(","):
        for key, value in speeds.items():
            if key[0] == model and key[1] not in ("ours", "peer"):
                print(f"{model}: bucketed / {key[1]}: {speeds[model, 'ours'] / value:.2f}x")
        if (model, "peer") in speeds:
            print(f"{model}: smallsample / sentence-transformers: "
                  f"{speeds[model, 'ours'] / speeds[model, 'peer']:.2f}x "
                  f"(max |embedding difference| {diffs[model]:.1e})")
    names = args.models.split(",")
    if len(names) == 2:
        for impl in ("ours", "peer"):
            if (names[0], impl) in speeds and (names[1], impl) in speeds:
                print(f"{impl}: {names[1]} / {names[0]} throughput: "
                      f"{speeds[names[1], impl] / speeds[names[0], impl]:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
