"""Reproduces the protonet Omniglot table (see smallsample/reproduce.py for the paper's numbers).

    python scripts/reproduce_protonet_omniglot.py [key=value ...] [--only PRESET] [--data DIR]

Full-length runs use the presets as they are (the paper's protocol; meant for a GPU); on a CPU pass
fewer steps, e.g. `steps=2000`. Results go to results/protonet-omniglot.{json,md}; interrupted runs
resume from their checkpoints.
"""

import argparse

from smallsample.reproduce import run_table

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("overrides", nargs="*", help="key=value settings applied to every preset")
    ap.add_argument("--only", action="append", default=[], help="run only this preset (repeatable)")
    ap.add_argument("--data", default=None)
    ap.add_argument("--episodes", type=int, default=600)
    args = ap.parse_args()
    run_table("protonet-omniglot", overrides=tuple(args.overrides), root=args.data,
              only=tuple(args.only), episodes=args.episodes)
