"""Frozen-encoder baselines (prototypes, linear probe) on one support draw per class budget, to
compare paired with the single-seed fine-tuning runs of ``scripts/text_fewshot.py``
(``kshot_accuracy`` with ``jax.random.key(0)`` draws the same examples there and here).

    SMALLSAMPLE_DATA=../shared/data python scripts/text_same_draw.py
"""
import jax
from text_fewshot import CACHE, cheap_learners  # scripts/ is on sys.path when run as a script

from smallsample.data.text import load_banking77, load_clinc150
from smallsample.text import fewshot, load_sentence_encoder


def main():
    enc = load_sentence_encoder()
    for name, loader in (("clinc150", load_clinc150), ("banking77", load_banking77)):
        sets = loader()
        emb = fewshot.embed_splits(sets, encoder=enc, cache_dir=CACHE)
        tr, te = sets["train"], sets["test"]
        keep = te.labels >= 0
        for shots in (5, 10):
            learners = cheap_learners(tr.num_classes)
            for lname in ("prototypes", "linear_probe"):
                learner = learners[lname]
                acc = fewshot.kshot_accuracy(jax.random.key(0), learner, learner.init(None, None),
                                             emb["train"], tr.labels, emb["test"][keep],
                                             te.labels[keep], num_classes=tr.num_classes,
                                             shots=shots)
                print(name, shots, lname, "seed 0:", round(100 * acc, 2), flush=True)


if __name__ == "__main__":
    main()
