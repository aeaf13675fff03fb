"""The few-shot evaluation protocol: mean accuracy +- 95% confidence interval over fixed tasks."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

from smallsample.episodes import check_episode_request, fixed_episodes
from smallsample.learners.base import Learner, query_metrics


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


def _finite_1d(values, name: str, need: str, min_size: int) -> np.ndarray:
    """``values`` as float64, or a ``ValueError`` naming the shape or the non-finite entries."""
    acc = np.asarray(values, dtype=np.float64)
    if acc.ndim != 1 or acc.size < min_size:
        raise ValueError(f"need {need}, got shape {acc.shape}")
    bad = np.flatnonzero(~np.isfinite(acc))
    if bad.size:
        raise ValueError(f"{name} must be finite; got {acc[bad][:5]} at indices {bad[:10]}")
    return acc


def mean_ci95(accuracies) -> Result:
    """Mean and 95% confidence half-width (``1.96 * std / sqrt(n)``, population std as is
    customary in the few-shot literature) of per-episode accuracies (finite, else ValueError)."""
    acc = _finite_1d(accuracies, "accuracies", "a non-empty 1-D array of accuracies", 1)
    return Result(float(acc.mean()), float(1.96 * acc.std() / np.sqrt(acc.size)), acc)


def mean_ci95_runs(values) -> Result:
    """Mean and Student-t 95% confidence half-width (``t(0.975, n - 1) * s / sqrt(n)``, ``s`` the
    sample standard deviation) of a few independent runs, e.g. one accuracy per seed.

    :func:`mean_ci95`'s normal interval suits hundreds of episodes; over 3 seeds it is 2.7x too
    narrow (1.96 with the population deviation against 4.30 with the sample one). Needs at least
    two finite values (``ValueError`` otherwise).
    """
    from scipy import stats

    acc = _finite_1d(values, "values", "a 1-D array of at least 2 runs", 2)
    t = stats.t.ppf(0.975, acc.size - 1)
    return Result(float(acc.mean()), float(t * acc.std(ddof=1) / np.sqrt(acc.size)), acc)


def check_learner_ways(learner: Learner, params: Any, support_x, support_y, query_x, *,
                       ways: int, where: str = "evaluate") -> None:
    """Raises a ``ValueError`` unless ``learner`` predicts ``[num_query, ways]`` logits.

    A learner built for another number of ways would otherwise give a plausible accuracy (its
    argmax never reaches the missing classes, or extra classes are never the answer). Only shapes
    are traced (``jax.eval_shape``: no computation, and cached after the first call for the same
    learner and shapes). ``support_x``, ``support_y``, ``query_x`` may be arrays or
    ``jax.ShapeDtypeStruct``s of one task.
    """
    state = jax.eval_shape(learner.adapt, params, support_x, support_y, jax.random.key(0))
    logits = jax.eval_shape(learner.predict, params, state, query_x)
    expected = (query_x.shape[0], ways)
    if tuple(getattr(logits, "shape", ())) != expected:
        got = getattr(logits, "shape", None)
        raise ValueError(f"{where}: the learner {learner.name!r} gives logits of shape {got} for "
                         f"{query_x.shape[0]} queries, expected {expected}: build it for "
                         f"{ways} ways (classes)")


def _episode_shapes(data, *, ways: int, shots: int, queries: int):
    """``ShapeDtypeStruct``s of one episode's support_x, support_y, query_x drawn from ``data``."""
    dtype = jax.numpy.float32 if data.dtype == np.uint8 else data.dtype
    item = tuple(data.shape[2:])
    return (jax.ShapeDtypeStruct((ways * shots,) + item, dtype),
            jax.ShapeDtypeStruct((ways * shots,), jax.numpy.int32),
            jax.ShapeDtypeStruct((ways * queries,) + item, dtype))


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"evaluate: {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def make_eval_fn(learner: Learner, *, ways: int | None = None):
    """A jitted function ``(params, episodes, keys) -> [batch]`` accuracies of a meta-batch.

    With ``ways``, tracing raises a ``ValueError`` when the learner's logits do not have ``ways``
    columns (a shape check: it costs nothing at run time).
    """

    def one(params, episode, key):
        state = learner.adapt(params, episode.support_x, episode.support_y, key)
        logits = learner.predict(params, state, episode.query_x)
        if ways is not None and logits.shape != (episode.query_y.shape[0], ways):
            raise ValueError(f"the learner {learner.name!r} gives logits of shape {logits.shape} "
                             f"for {episode.query_y.shape[0]} queries, expected "
                             f"{(episode.query_y.shape[0], ways)}: build it for {ways} ways "
                             f"(classes)")
        return query_metrics(logits, episode.query_y)[1]

    def accuracies(params, episodes, keys):
        return jax.vmap(lambda e, k: one(params, e, k))(episodes, keys)

    return jax.jit(accuracies)


def evaluate(learner: Learner, params: Any, data: jax.Array, *, ways: int, shots: int,
             queries: int = 15, num_episodes: int = 600, seed: int = 0,
             batch: int | None = None, eval_fn=None) -> Result:
    """Mean accuracy +- 95% CI of ``learner`` on ``num_episodes`` fixed episodes of ``data``.

    The episodes depend only on ``(seed, data, ways, shots, queries)``, not on ``batch`` (episodes
    evaluated at once; default: as many as keep about 2,000 examples in flight), so two runs and
    two learners see the same test tasks. ``eval_fn`` (from :func:`make_eval_fn`) can be passed to
    reuse a compiled function.

    Args:
      data: class-indexed examples ``[num_classes, per_class, ...]`` (images ``[num_classes,
        per_class, H, W, C]``, embeddings ``[num_classes, per_class, d]``). Flat ``[n, d]``
        embeddings with labels ``[n]`` must be grouped by class first
        (:func:`smallsample.data.text.random_class_indexed`).

    Raises:
      ValueError: ``data`` is not class-indexed (naming the shape received), has too few classes
        or examples per class for the episodes, or the learner's logits do not have ``ways``
        columns (:func:`check_learner_ways`; shapes only, before anything runs).
    """
    shape = tuple(np.shape(data))
    if len(shape) < 3:
        raise ValueError(
            f"evaluate: data must be class-indexed [num_classes, per_class, ...] (e.g. "
            f"[num_classes, per_class, d] embeddings or [num_classes, per_class, H, W, C] "
            f"images), got shape {shape}; group flat [n, d] examples by label first, e.g. "
            f"x[smallsample.data.text.random_class_indexed(key, labels)]")
    try:
        check_episode_request(shape[0], shape[1], ways=ways, shots=shots, queries=queries)
    except ValueError as e:
        raise ValueError(f"evaluate: data of shape {shape} = [num_classes={shape[0]}, "
                         f"per_class={shape[1]}, ...]: {e}") from None
    _check_int("num_episodes", num_episodes, 1)
    if batch is not None:
        _check_int("batch", batch, 1)
    check_learner_ways(learner, params, *_episode_shapes(data, ways=ways, shots=shots,
                                                          queries=queries), ways=ways)
    if batch is None:  # bound the examples in flight (vmapped activations grow with them)
        batch = max(1, min(50, 2000 // (ways * (shots + queries))))
    eval_fn = eval_fn or make_eval_fn(learner, ways=ways)
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


__all__ = ["Result", "check_learner_ways", "confidence_overlap", "evaluate", "lake_error",
           "make_eval_fn", "mean_ci95"]


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
    return mean_ci95(np.asarray(make_eval_fn(learner, ways=ways)(params, episodes, keys)))
