"""Few-shot learners: each is a :class:`Learner`, three pure functions ``init``, ``adapt`` and
``predict`` (and, for Reptile and iMAML, ``task_grad``), so one meta-training step serves all.

- :mod:`~smallsample.learners.maml`: MAML, first-order MAML, ANIL, Meta-SGD, Reptile, iMAML;
- :mod:`~smallsample.learners.protonet`: prototypical networks;
- :mod:`~smallsample.learners.metric`: matching networks;
- :mod:`~smallsample.learners.closed_form`: the ridge-regression head (R2D2);
- :mod:`~smallsample.learners.finetune`: Baseline and Baseline++ (pre-train, then fit a head).
"""

from smallsample.learners.base import (
    Learner,
    cross_entropy,
    episode_accuracy,
    episode_loss,
    query_metrics,
    task_loss_and_grad,
)
from smallsample.learners.closed_form import r2d2, ridge_weights
from smallsample.learners.finetune import Pretrainer, finetune, pretrainer
from smallsample.learners.maml import imaml, inner_loop, maml, reptile
from smallsample.learners.metric import matching_net
from smallsample.learners.protonet import protonet

__all__ = [
    "Learner",
    "Pretrainer",
    "cross_entropy",
    "episode_accuracy",
    "episode_loss",
    "finetune",
    "imaml",
    "inner_loop",
    "maml",
    "matching_net",
    "pretrainer",
    "protonet",
    "query_metrics",
    "r2d2",
    "reptile",
    "ridge_weights",
    "task_loss_and_grad",
]
