"""Reproduces the MAML mini-ImageNet table
(smallsample/reproduce.py has the papers' numbers).

    python scripts/reproduce_maml_mini_imagenet.py [key=value ...] [--only PRESET] [--data DIR]

Needs the data set's files under the data folder (see smallsample.data.benchmarks; or
``data_path=DIR``). Full-length runs use the presets as they are (the papers' protocols; meant for
a GPU). Results go to results/maml-mini-imagenet.{json,md};
interrupted runs resume from their checkpoints.
"""

from smallsample.reproduce import main

if __name__ == "__main__":
    main("maml-mini-imagenet")
