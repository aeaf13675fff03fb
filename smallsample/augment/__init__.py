"""Augmentation as key-first pure functions: images, batch mixing, text, whole tasks.

- :mod:`~smallsample.augment.image`: one ``[H, W, C]`` float image per call (vmap for batches);
  deterministic / random pairs (``flip_left_right`` / ``random_flip_left_right(key, image, *,
  probability)``), wrapping dm-pix where it already does the job.
- :mod:`~smallsample.augment.mixing`: mixup and cutmix on a batch.
- :mod:`~smallsample.augment.text`: EDA-style token operations on ``[L]`` ids with a padding mask;
  caching hooks for caller-supplied translation / paraphrase models.
- :mod:`~smallsample.augment.task`: rotated classes as new classes; augmented support sets.
- :mod:`~smallsample.augment.compose`: ``chain``, ``random_apply``, ``random_choice`` and
  ``parse_pipeline("flip_lr,rotate(max_degrees=15)")``.
"""

from smallsample.augment.compose import (
    TRANSFORMS,
    chain,
    parse_pipeline,
    random_apply,
    random_choice,
    transform_names,
)
from smallsample.augment.image import *  # noqa: F401,F403
from smallsample.augment.image import __all__ as _image_all
from smallsample.augment.mixing import cutmix, mixup
from smallsample.augment.task import augment_support, rotated_classes
from smallsample.augment.text import (
    cached,
    nearest_neighbours,
    random_deletion,
    random_insertion,
    random_swap,
    random_token_masking,
    random_token_replacement,
    round_trip,
    synonym_replacement,
)

__all__ = [
    "TRANSFORMS",
    "augment_support",
    "cached",
    "chain",
    "cutmix",
    "mixup",
    "nearest_neighbours",
    "parse_pipeline",
    "random_apply",
    "random_choice",
    "random_deletion",
    "random_insertion",
    "random_swap",
    "random_token_masking",
    "random_token_replacement",
    "rotated_classes",
    "round_trip",
    "synonym_replacement",
    "transform_names",
    *_image_all,
]
