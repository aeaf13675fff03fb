"""Data selection for small samples: sampling, importance weights, coresets, active selection.

Every function is pure and jit-able: sizes that shape the output (``k``, ``size``,
``per_class``, ``num_classes``) are static Python ints, randomness comes from an explicit ``key``
(first argument), and options are keyword-only. Fixed-size results that may not be fully
fillable come with a ``valid`` mask (:class:`Selection`).

Errors: bad shapes and sizes (``k`` larger than the pool, wrong ranks, empty inputs) always raise
``ValueError``. Bad *values* (NaN scores, NaN / negative / infinite weights, out-of-range labels
or indices, empty classes, options such as ``power``, ``mix`` or ``gamma`` out of range) raise
``ValueError`` only when the input is concrete (eager calls); under ``jax.jit`` or ``jax.vmap``
on traced inputs the checks are skipped (see :mod:`smallsample.select._checks`) and each function
documents what happens instead, never a plausible wrong answer: NaN scores rank last and are
marked invalid, out-of-range labels give NaN scores, an out-of-range ``first`` is clipped, bad
weights or options give NaN.

Submodules: :mod:`.filtering`, :mod:`.sampling`, :mod:`.importance`, :mod:`.coresets`,
:mod:`.active`, :mod:`.online`.
"""

from smallsample.select._checks import is_concrete
from smallsample.select.active import (
    badge_embeddings,
    badge_select,
    coreset_select,
    uncertainty_select,
)
from smallsample.select.coresets import (
    FacilityLocation,
    KCenter,
    facility_location_greedy,
    herding,
    k_center_greedy,
    kmeans_plus_plus,
    pairwise_squared_distances,
    rbf_similarity,
)
from smallsample.select.filtering import (
    Selection,
    filter_by_score,
    filter_mask,
    filter_where,
    top_k,
)
from smallsample.select.importance import (
    ImportanceSample,
    effective_sample_size,
    effective_sample_size_from_log,
    el2n_scores,
    entropy_scores,
    grad_norm_scores,
    importance_sample,
    least_confidence_scores,
    log_normalize,
    log_weights_from_scores,
    loss_scores,
    margin_scores,
    prediction_margin,
    sample_with_replacement,
    sample_without_replacement,
    weighted_cross_entropy,
    weighted_loss,
    weighted_mean,
)
from smallsample.select.online import (
    OnlineImportanceSampler,
    OnlineImportanceState,
    online_importance_sampler,
)
from smallsample.select.sampling import (
    class_balanced,
    class_balanced_log_weights,
    stratified,
    uniform,
)

__all__ = [
    "FacilityLocation",
    "ImportanceSample",
    "KCenter",
    "OnlineImportanceSampler",
    "OnlineImportanceState",
    "Selection",
    "badge_embeddings",
    "badge_select",
    "class_balanced",
    "class_balanced_log_weights",
    "coreset_select",
    "effective_sample_size",
    "effective_sample_size_from_log",
    "el2n_scores",
    "entropy_scores",
    "facility_location_greedy",
    "filter_by_score",
    "filter_mask",
    "filter_where",
    "grad_norm_scores",
    "herding",
    "importance_sample",
    "is_concrete",
    "k_center_greedy",
    "kmeans_plus_plus",
    "least_confidence_scores",
    "log_normalize",
    "log_weights_from_scores",
    "loss_scores",
    "margin_scores",
    "online_importance_sampler",
    "pairwise_squared_distances",
    "prediction_margin",
    "rbf_similarity",
    "sample_with_replacement",
    "sample_without_replacement",
    "stratified",
    "top_k",
    "uncertainty_select",
    "uniform",
    "weighted_cross_entropy",
    "weighted_loss",
    "weighted_mean",
]
