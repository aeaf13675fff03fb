"""Reproduces the protonet Omniglot table (see smallsample/reproduce.py for the paper's numbers).

    python scripts/reproduce_protonet_omniglot.py [key=value ...] [--only PRESET] [--data DIR]

Full-length runs use the presets as they are (the paper's protocol; meant for a GPU); on a CPU pass
fewer steps, e.g. `steps=2000`. Results go to results/protonet-omniglot.{json,md}; interrupted runs
resume from their checkpoints.
"""

from smallsample.reproduce import main

if __name__ == "__main__":
    main("protonet-omniglot")
