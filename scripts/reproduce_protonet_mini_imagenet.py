"""Reproduces the prototypical-network mini-ImageNet (Conv-4 and ResNet-12) table
(smallsample/reproduce.py has the papers' numbers).

    python scripts/reproduce_protonet_mini_imagenet.py [key=value ...] [--only PRESET] [--data DIR]

Needs the data set's files under the data folder (see smallsample.data.benchmarks; or
``data_path=DIR``). Full-length runs use the presets as they are (the papers' protocols; meant for
a GPU). Results go to results/protonet-mini-imagenet.{json,md};
interrupted runs resume from their checkpoints.
"""

from smallsample.reproduce import main

if __name__ == "__main__":
    main("protonet-mini-imagenet")
