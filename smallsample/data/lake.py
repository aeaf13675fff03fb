"""Lake et al.'s 20-way within-alphabet one-shot classification task (``all_runs.zip``).

Each of the 20 runs has 20 training images (one per class) and 20 test images;
``class_labels.txt`` pairs each test image with its training image. The published error rates
(Lake, Salakhutdinov & Tenenbaum 2015, Science) are kept in :data:`PUBLISHED_ERROR`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from smallsample.data.files import DataError
from smallsample.data.omniglot import _decode, _open_zip, locate

RUNS = 20
WAYS = 20
PUBLISHED_ERROR = {"people": 0.045, "Bayesian Program Learning": 0.033,
                   "deep Siamese convnet": 0.080, "deep convnet": 0.135}


class LakeRuns(NamedTuple):
    """The 20 one-shot runs.

    Attributes:
      train: uint8 ``[20 runs, 20 classes, H, W, 1]``; class ``c`` of a run is ``classCC.png``.
      test: uint8 ``[20 runs, 20 items, H, W, 1]``.
      labels: int32 ``[20 runs, 20 items]``: the training class index of each test item.
    """

    train: np.ndarray
    test: np.ndarray
    labels: np.ndarray


def load_runs(*, size: int = 28, root=None, download_missing: bool = True) -> LakeRuns:
    path = locate("all_runs.zip", root, download_missing=download_missing)
    z = _open_zip(path)
    train = np.empty((RUNS, WAYS, size, size, 1), np.uint8)
    test = np.empty_like(train)
    labels = np.empty((RUNS, WAYS), np.int32)
    names = set(z.namelist())
    for r in range(RUNS):
        run = f"run{r + 1:02d}"
        label_file = f"{run}/class_labels.txt"
        if label_file not in names:
            raise DataError(f"{path}: {label_file} is missing")
        pairs = [line.split() for line in z.read(label_file).decode().splitlines() if line.strip()]
        if len(pairs) != WAYS or any(len(p) != 2 for p in pairs):
            raise DataError(f"{path}:{label_file}: expected {WAYS} lines 'test train', "
                            f"got {len(pairs)}")
        for c in range(WAYS):
            member = f"{run}/training/class{c + 1:02d}.png"
            if member not in names:
                raise DataError(f"{path}: {member} is missing")
            train[r, c, ..., 0] = _decode(z.read(member), f"{path}:{member}", size)
        for i, (test_item, train_item) in enumerate(sorted(pairs)):
            test[r, i, ..., 0] = _decode(z.read(test_item), f"{path}:{test_item}", size)
            labels[r, i] = int(train_item.rsplit("class", 1)[1].split(".")[0]) - 1
    return LakeRuns(train, test, labels)
