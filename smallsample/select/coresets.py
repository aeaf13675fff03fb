"""Coresets on embeddings: k-center greedy, herding, k-means++ seeding, facility location.

All take embeddings ``x [n, d]`` (or a similarity matrix) and a static ``k``, run ``k`` greedy
steps in a ``lax.fori_loop`` with ``O(n d)`` work and ``O(n)`` extra memory per step (no ``[n, n]``
matrix), and return indices in the order they were chosen, so the first ``j`` entries of a
``k``-selection are the ``j``-selection.

Distances default to ``|x|^2 - 2 x.c + |c|^2`` (one mat-vec per step); ``precise=True`` uses
``sum((x - c)^2)``, which avoids cancellation in float32 but is slower on CPU (the comparison:
``docs/performance.md``, "other families").
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from smallsample.select._checks import (
    check_finite_array,
    check_index,
    check_k,
    check_rank,
    check_scalar,
    check_weights,
    is_concrete,
)


class KCenter(NamedTuple):
    """Result of :func:`k_center_greedy`.

    Attributes:
      indices: ``[k]`` int32 chosen centres, in order.
      radii: ``[k]`` covering radius after each step: ``radii[j]`` is the largest Euclidean
        distance from any point to its nearest centre among ``indices[:j+1]`` (and the initial
        centres). Non-increasing.
    """

    indices: jax.Array
    radii: jax.Array


class FacilityLocation(NamedTuple):
    """Result of :func:`facility_location_greedy`.

    Attributes:
      indices: ``[k]`` int32 chosen candidates, in order.
      gains: ``[k]`` marginal gain of each choice (non-increasing: the objective is submodular);
        their cumulative sum is the objective value.
    """

    indices: jax.Array
    gains: jax.Array


def pairwise_squared_distances(a: jax.Array, b: jax.Array) -> jax.Array:
    """``[n, m]`` squared Euclidean distances between rows of ``a [n, d]`` and ``b [m, d]``
    (``|a|^2 - 2 a.b + |b|^2``, clipped at 0)."""
    check_rank("a", a, 2, "[n, d]")
    check_rank("b", b, 2, "[m, d]")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a shape {a.shape} and b shape {b.shape} differ in d")
    d2 = jnp.sum(a * a, -1)[:, None] - 2 * a @ b.T + jnp.sum(b * b, -1)[None, :]
    return jnp.maximum(d2, 0.0)


def rbf_similarity(a: jax.Array, b: jax.Array, *, gamma: float | jax.Array) -> jax.Array:
    """``exp(-gamma |a_i - b_j|^2)``, ``[n, m]``, for :func:`facility_location_greedy`.

    ``gamma >= 0`` and finite (``ValueError`` when concrete; a traced NaN gives NaN)."""
    check_scalar("gamma", gamma, low=0.0)
    return jnp.exp(-gamma * pairwise_squared_distances(a, b))


def _distances_to(x, precise):
    """``dist(c) -> [n]`` squared distances from the rows of ``x [n, d]`` to a point ``c [d]``.

    ``precise``: ``sum((x - c)^2)`` (no cancellation; a row reduction, slow on CPU).
    Otherwise ``|x|^2 - 2 x.c + |c|^2`` with the norms computed once: one mat-vec per call,
    faster on CPU (``docs/performance.md``), with an absolute error of order ``eps * |x|^2``
    (clipped at 0).
    """
    if precise:
        def dist(c):
            diff = x - c
            return jnp.sum(diff * diff, axis=-1)
        return dist
    sq = jnp.sum(x * x, axis=-1)

    def dist(c):
        return jnp.maximum(sq - 2 * (x @ c) + jnp.dot(c, c), 0.0)
    return dist


def _check_embeddings(x, name="x"):
    check_rank(name, x, 2, "[n, d]")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name} must be floating point, got dtype {x.dtype}")
    if is_concrete(x) and not np.isfinite(np.asarray(x)).all():
        raise ValueError(f"{name} contains NaN or inf")


def k_center_greedy(x: jax.Array, *, k: int, first: int | jax.Array = 0,
                    initial_centers: jax.Array | None = None, precise: bool = False) -> KCenter:
    """Greedy k-center (Gonzalez 1985; the core-set selection of Sener & Savarese 2018).

    Each step adds the point farthest from its nearest chosen centre (ties: lowest index), a
    2-approximation of the minimax covering radius.

    Args:
      x: ``[n, d]`` embeddings.
      k: static number of centres to choose, ``k <= n``.
      first: index of the first centre when there are no ``initial_centers`` (may be traced;
        e.g. ``jax.random.randint(key, (), 0, n)`` for a random start). Outside ``[0, n)`` it is
        a ``ValueError`` when concrete; under ``jit`` it is clipped into range (and the clipped
        index is what ``indices[0]`` reports).
      initial_centers: optional ``[m, d]`` already-chosen points (e.g. the labelled set in active
        learning; finite, checked when concrete); then all ``k`` choices are greedy and ``first``
        is ignored.
      precise: distances as ``sum((x - c)^2)`` instead of the faster ``|x|^2 - 2 x.c + |c|^2``
        (see :func:`_distances_to`).

    Returns:
      A :class:`KCenter` with ``indices [k]`` and ``radii [k]``.
    """
    _check_embeddings(x)
    n = x.shape[0]
    k = check_k(k, n)
    indices = jnp.zeros((k,), jnp.int32)
    radii = jnp.zeros((k,), x.dtype)
    dist = _distances_to(x, precise)
    if initial_centers is None:
        first = check_index("first", first, n)
        min_d2 = dist(x[first]).at[first].set(0.0)
        indices = indices.at[0].set(first)
        radii = radii.at[0].set(jnp.sqrt(jnp.max(min_d2)))
        start = 1
    else:
        check_rank("initial_centers", initial_centers, 2, "[m, d]")
        if initial_centers.shape[1] != x.shape[1]:
            raise ValueError(f"initial_centers shape {initial_centers.shape} does not match x "
                             f"shape {x.shape}")
        check_finite_array("initial_centers", initial_centers)
        min_d2 = jax.lax.map(dist, initial_centers.astype(x.dtype)).min(0) \
            if initial_centers.shape[0] else jnp.full((n,), jnp.inf, x.dtype)
        start = 0

    def step(j, carry):
        min_d2, indices, radii = carry
        c = jnp.argmax(min_d2).astype(jnp.int32)
        min_d2 = jnp.minimum(min_d2, dist(x[c])).at[c].set(0.0)
        return min_d2, indices.at[j].set(c), radii.at[j].set(jnp.sqrt(jnp.max(min_d2)))

    _, indices, radii = jax.lax.fori_loop(start, k, step, (min_d2, indices, radii))
    return KCenter(indices, radii)


def herding(x: jax.Array, *, k: int, precise: bool = False) -> jax.Array:
    """Herding as used for exemplar selection in iCaRL (Rebuffi et al. 2017; Welling 2009):
    step ``t`` adds the unchosen point that brings the mean of the chosen ``t`` points closest
    to the mean of all points.

    Args:
      x: ``[n, d]`` embeddings (iCaRL L2-normalises them first; do that before calling if wanted).
      k: static number of points, ``k <= n``.
      precise: distances as ``sum((x - c)^2)`` instead of ``|x|^2 - 2 x.c + |c|^2``.

    Returns:
      ``[k]`` int32 distinct indices, in order of choice (ties: lowest index).
    """
    _check_embeddings(x)
    n = x.shape[0]
    k = check_k(k, n)
    mu = jnp.mean(x, axis=0)
    dist = _distances_to(x, precise)

    def step(t, carry):
        total, chosen, indices = carry
        # ||mu - (total + x_j) / (t+1)||^2 * (t+1)^2 = ||(t+1) mu - total - x_j||^2
        d2 = dist((t + 1) * mu - total)
        j = jnp.argmin(jnp.where(chosen, jnp.inf, d2)).astype(jnp.int32)
        return total + x[j], chosen.at[j].set(True), indices.at[t].set(j)

    init = (jnp.zeros_like(mu), jnp.zeros((n,), bool), jnp.zeros((k,), jnp.int32))
    return jax.lax.fori_loop(0, k, step, init)[2]


def kmeans_plus_plus(key: jax.Array, x: jax.Array, *, k: int,
                     first: int | jax.Array | None = None, mask: jax.Array | None = None,
                     precise: bool = False) -> jax.Array:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each new centre is drawn with probability
    proportional to its squared distance to the nearest centre chosen so far (D^2 sampling).

    Step ``j`` draws with the Gumbel-max trick using ``jax.random.gumbel(jax.random.fold_in(key,
    j), (n,))``, so a reference implementation can replay the same draws.

    Args:
      key: a PRNG key.
      x: ``[n, d]`` embeddings.
      k: static number of centres, ``k <= n`` (``k`` <= the number of distinct allowed points, or
        the tail repeats allowed points, drawn uniformly).
      first: index of the first centre (may be traced); default a uniform draw among allowed.
        When concrete it must be in ``[0, n)`` and allowed by ``mask`` (``ValueError``); under
        ``jit`` it is clipped into range and used even where ``mask`` is False.
      mask: optional ``[n]`` bool, the points that may be chosen (default all).
      precise: distances as ``sum((x - c)^2)`` instead of ``|x|^2 - 2 x.c + |c|^2``.

    Returns:
      ``[k]`` int32 indices, in order of choice.
    """
    _check_embeddings(x)
    n = x.shape[0]
    k = check_k(k, n)
    if mask is None:
        log_allowed = jnp.zeros((n,), x.dtype)
    else:
        check_rank("mask", mask, 1, "[n]")
        if mask.shape[0] != n:
            raise ValueError(f"mask shape {mask.shape} does not match x shape {x.shape}")
        if is_concrete(mask) and int(np.asarray(mask).sum()) < k:
            raise ValueError(f"k={k} is larger than the {int(np.asarray(mask).sum())} allowed "
                             f"points")
        log_allowed = jnp.where(mask, 0.0, -jnp.inf).astype(x.dtype)

    def gumbel(j):
        return jax.random.gumbel(jax.random.fold_in(key, j), (n,), dtype=x.dtype)

    if first is None:
        c0 = jnp.argmax(log_allowed + gumbel(0)).astype(jnp.int32)
    else:
        c0 = check_index("first", first, n)
        if mask is not None and is_concrete(first) and is_concrete(mask) \
                and not bool(np.asarray(mask)[int(first)]):
            raise ValueError(f"first={int(first)} is a point that mask excludes")
    dist = _distances_to(x, precise)
    min_d2 = dist(x[c0]).at[c0].set(0.0)
    indices = jnp.zeros((k,), jnp.int32).at[0].set(c0)

    def step(j, carry):
        min_d2, indices = carry
        g = log_allowed + gumbel(j)
        cand = jnp.log(min_d2) + g
        # every allowed point already chosen (duplicates): repeat a uniformly drawn allowed one
        c = jnp.where(jnp.max(cand) > -jnp.inf, jnp.argmax(cand), jnp.argmax(g)).astype(jnp.int32)
        return jnp.minimum(min_d2, dist(x[c])).at[c].set(0.0), indices.at[j].set(c)

    return jax.lax.fori_loop(1, k, step, (min_d2, indices))[1]


def facility_location_greedy(similarity: jax.Array, *, k: int) -> FacilityLocation:
    """Greedy maximisation of the facility-location function ``F(S) = sum_i max_{j in S}
    similarity[i, j]`` (Nemhauser et al. 1978: within ``1 - 1/e`` of the optimum; CRAIG,
    Mirzasoleiman et al. 2020, uses it to pick coresets).

    Args:
      similarity: ``[n, m]`` non-negative similarities of the ``n`` points to represent (rows) to
        the ``m`` candidates (columns), e.g. :func:`rbf_similarity` ``(x, x)``.
      k: static number of candidates to choose, ``k <= m``.

    Returns:
      A :class:`FacilityLocation` with ``indices [k]`` (distinct) and ``gains [k]``.
    """
    check_rank("similarity", similarity, 2, "[n, m]")
    check_weights(similarity, "similarity", rank=None, allow_all_zero=True)
    m = similarity.shape[1]
    k = check_k(k, m, what="candidate set")

    def step(t, carry):
        best, chosen, indices, gains = carry
        gain = jnp.sum(jnp.maximum(similarity - best[:, None], 0.0), axis=0)  # [m]
        j = jnp.argmax(jnp.where(chosen, -jnp.inf, gain)).astype(jnp.int32)
        best = jnp.maximum(best, similarity[:, j])
        return best, chosen.at[j].set(True), indices.at[t].set(j), gains.at[t].set(gain[j])

    init = (jnp.zeros(similarity.shape[:1], similarity.dtype), jnp.zeros((m,), bool),
            jnp.zeros((k,), jnp.int32), jnp.zeros((k,), similarity.dtype))
    _, _, indices, gains = jax.lax.fori_loop(0, k, step, init)
    return FacilityLocation(indices, gains)
