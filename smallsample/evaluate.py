"""The few-shot evaluation protocol: mean accuracy +- 95% confidence interval over fixed tasks."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

from smallsample.episodes import fixed_episodes
from smallsample.learners.base import Learner, episode_accuracy


class Result(NamedTuple):
    """Accuracy over evaluation episodes.

    Attributes:
      mean: mean accuracy (fraction in [0, 1]).
      ci95: half-width of the 95% confidence interval, ``1.96 * std / sqrt(n)``.
      accuracies: ``[n]`` per-episode accuracies, kept so that results can be compared.
    """

    mean: float
    ci95: float
    accuracies: np.ndarray

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f} +- {100 * self.ci95:.2f}% ({len(self.accuracies)} episodes)"


def mean_ci95(accuracies) -> Result:
    """Mean and 95% confidence half-width (``1.96 * std / sqrt(n)``, population std as is
    customary in the few-shot literature) of per-episode accuracies."""
    acc = np.asarray(accuracies, dtype=np.float64)
    if acc.ndim != 1 or acc.size == 0:
        raise ValueError(f"need a non-empty 1-D array of accuracies, got shape {acc.shape}")
    return Result(float(acc.mean()), float(1.96 * acc.std() / np.sqrt(acc.size)), acc)


def make_eval_fn(learner: Learner):
    """A jitted function ``(params, episodes, keys) -> [batch]`` accuracies of a meta-batch."""

    def accuracies(params, episodes, keys):
        return jax.vmap(lambda e, k: episode_accuracy(learner, params, e, k))(episodes, keys)

    return jax.jit(accuracies)


def evaluate(learner: Learner, params: Any, data: jax.Array, *, ways: int, shots: int,
             queries: int = 15, num_episodes: int = 600, seed: int = 0,
             batch: int | None = None, eval_fn=None) -> Result:
    """Mean accuracy +- 95% CI of ``learner`` on ``num_episodes`` fixed episodes of ``data``.

    The episodes depend only on ``(seed, data, ways, shots, queries)``, not on ``batch`` (episodes
    evaluated at once; default: as many as keep about 2,000 examples in flight), so two runs and
    two learners see the same test tasks. ``eval_fn`` (from :func:`make_eval_fn`) can be passed to
    reuse a compiled function.
    """
    if batch is None:  # bound the examples in flight (vmapped activations grow with them)
        batch = max(1, min(50, 2000 // (ways * (shots + queries))))
    eval_fn = eval_fn or make_eval_fn(learner)
    accs = []
    adapt_keys = jax.random.split(jax.random.key(seed + 1), num_episodes)
    start = 0
    for episodes in fixed_episodes(data, seed=seed, num_episodes=num_episodes, ways=ways,
                                   shots=shots, queries=queries, batch=batch):
        n = episodes.query_y.shape[0]
        accs.append(np.asarray(eval_fn(params, episodes, adapt_keys[start:start + n])))
        start += n
    return mean_ci95(np.concatenate(accs))


def confidence_overlap(a: Result, b: Result) -> bool:
    """Whether the 95% intervals of two results overlap."""
    return abs(a.mean - b.mean) <= a.ci95 + b.ci95


__all__ = ["Result", "mean_ci95", "make_eval_fn", "evaluate", "confidence_overlap", "lake_error"]


def lake_error(learner: Learner, params: Any, runs, key: jax.Array | None = None) -> Result:
    """Lake et al.'s 20-way within-alphabet one-shot task: per-run accuracy of ``learner``.

    ``runs`` is a :class:`smallsample.data.lake.LakeRuns`; each run is one 20-way 1-shot episode
    (support: the 20 training images, query: the 20 test images). The error rate is
    ``1 - result.mean``; compare with :data:`smallsample.data.lake.PUBLISHED_ERROR`.
    """
    from smallsample.episodes import Episode, to_float  # noqa: PLC0415

    n_runs, ways = runs.labels.shape
    episodes = Episode(
        support_x=to_float(jax.numpy.asarray(runs.train)),
        support_y=jax.numpy.broadcast_to(jax.numpy.arange(ways, dtype="int32"), (n_runs, ways)),
        query_x=to_float(jax.numpy.asarray(runs.test)),
        query_y=jax.numpy.asarray(runs.labels),
    )
    keys = jax.random.split(jax.random.key(0) if key is None else key, n_runs)
    return mean_ci95(np.asarray(make_eval_fn(learner)(params, episodes, keys)))
