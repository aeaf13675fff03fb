"""Composing key-first transforms, and pipelines written as compact strings.

A transform is a pure function ``transform(key, x) -> x``. :func:`chain`, :func:`random_apply`
and :func:`random_choice` split the key once per stage and return a transform again, so a whole
pipeline is one key-first pure function that ``jax.vmap`` and ``jax.jit`` take as is::

    pipeline = parse_pipeline("flip_lr,rotate(max_degrees=15),translate(max_pixels=2)")
    images = jax.vmap(pipeline)(jax.random.split(key, len(images)), images)
"""

from __future__ import annotations

import ast
import inspect
import types
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from smallsample.augment import image as _image

Transform = Callable[[jax.Array, jax.Array], jax.Array]

__all__ = ["TRANSFORMS", "Transform", "chain", "parse_pipeline", "random_apply",
           "random_choice", "transform_names"]


def chain(*transforms: Transform) -> Transform:
    """Applies ``transforms`` in order, each with its own key from one split of ``key``.

    ``chain()`` is the identity.
    """
    for i, t in enumerate(transforms):
        if not callable(t):
            raise ValueError(f"chain: transform {i} is not callable: {t!r}")

    def chained(key: jax.Array, x: jax.Array) -> jax.Array:
        if not transforms:
            return x
        keys = jax.random.split(key, len(transforms))
        for k, t in zip(keys, transforms, strict=True):
            x = t(k, x)
        return x

    return chained


def random_apply(transform: Transform, *, probability: float | jax.Array = 0.5) -> Transform:
    """Applies ``transform`` with the given probability (``lax.cond``), else the identity."""
    if isinstance(probability, (int, float)) and not 0 <= probability <= 1:
        raise ValueError(f"random_apply: probability must be in [0, 1], got {probability!r}")

    def applied(key: jax.Array, x: jax.Array) -> jax.Array:
        k_apply, k_inner = jax.random.split(key)
        do = jax.random.bernoulli(k_apply, probability)
        return lax.cond(do, lambda y: transform(k_inner, y).astype(y.dtype), lambda y: y, x)

    return applied


def random_choice(*transforms: Transform,
                  probabilities: Sequence[float] | jax.Array | None = None) -> Transform:
    """Applies exactly one of ``transforms``, drawn with ``probabilities`` (default uniform).

    All transforms must return the same shape and dtype (``lax.switch``).
    """
    if not transforms:
        raise ValueError("random_choice: needs at least one transform")
    if probabilities is not None:
        if len(probabilities) != len(transforms):
            raise ValueError(f"random_choice: {len(probabilities)} probabilities for "
                             f"{len(transforms)} transforms")
        logits = jnp.log(jnp.asarray(probabilities, jnp.float32))
    else:
        logits = jnp.zeros((len(transforms),), jnp.float32)

    def chosen(key: jax.Array, x: jax.Array) -> jax.Array:
        k_pick, k_inner = jax.random.split(key)
        index = jax.random.categorical(k_pick, logits)
        branches = [lambda y, t=t: t(k_inner, y).astype(y.dtype) for t in transforms]
        return lax.switch(index, branches, x)

    return chosen


# The names a pipeline string may use, and the random image transform each stands for.
TRANSFORMS: types.MappingProxyType = types.MappingProxyType({
    "flip_lr": _image.random_flip_left_right,
    "flip_ud": _image.random_flip_up_down,
    "rot90": _image.random_rot90,
    "rotate": _image.random_rotate,
    "translate": _image.random_translate,
    "scale": _image.random_scale,
    "shear": _image.random_shear,
    "affine": _image.random_affine,
    "crop": _image.random_crop_with_padding,
    "resized_crop": _image.random_resized_crop,
    "brightness": _image.random_brightness,
    "contrast": _image.random_contrast,
    "saturation": _image.random_saturation,
    "hue": _image.random_hue,
    "noise": _image.random_gaussian_noise,
    "blur": _image.random_gaussian_blur,
    "cutout": _image.random_cutout,
    "erase": _image.random_erasing,
    "elastic": _image.random_elastic,
})


def transform_names() -> list[str]:
    """The names :func:`parse_pipeline` knows, sorted."""
    return sorted(TRANSFORMS)


def _options(fn) -> dict[str, inspect.Parameter]:
    return {name: p for name, p in inspect.signature(fn).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _describe(name: str) -> str:
    opts = _options(TRANSFORMS[name])
    return f"{name}({', '.join(f'{k}={p.default!r}' for k, p in opts.items())})"


def parse_pipeline(spec: str) -> Transform:
    """Builds a key-first image pipeline from a compact string.

    ``spec`` is a comma-separated list of ``name`` or ``name(option=value, ...)``, with names
    from :func:`transform_names` and the keyword options of the function each name stands for
    (see ``TRANSFORMS``; values are Python literals: numbers, tuples, ``None``), e.g.
    ``"flip_lr,rotate(max_degrees=15),translate(max_pixels=2),noise(std=0.05)"``. Every
    transform takes ``probability=``. The stages are composed with :func:`chain`; an empty
    string is the identity.

    Returns:
      ``pipeline(key, image) -> image`` on one ``[H, W, C]`` float image (``jax.vmap`` it).

    Raises:
      ValueError: naming the unknown transform (and listing the known ones), the unknown or
        positional option (and listing the valid ones), or the value that is not a literal.
    """
    if not isinstance(spec, str):
        raise ValueError(f"parse_pipeline: spec must be a string, got {type(spec).__name__}")
    if not spec.strip():
        return chain()
    try:
        tree = ast.parse(f"({spec},)", mode="eval").body
    except SyntaxError as e:
        raise ValueError(f"parse_pipeline: cannot parse {spec!r}: {e.msg}") from None
    stages = []
    for node in tree.elts:
        text = ast.get_source_segment(f"({spec},)", node) or ast.dump(node)
        if isinstance(node, ast.Name):
            name, keywords, args = node.id, [], []
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            name, keywords, args = node.func.id, node.keywords, node.args
        else:
            raise ValueError(f"parse_pipeline: {text!r} is not `name` or `name(option=value)`")
        if name not in TRANSFORMS:
            raise ValueError(f"parse_pipeline: unknown transform {name!r}; known: "
                             f"{', '.join(transform_names())}")
        if args:
            raise ValueError(f"parse_pipeline: {text!r}: options must be named, as in "
                             f"{_describe(name)}")
        valid = _options(TRANSFORMS[name])
        kwargs = {}
        for kw in keywords:
            if kw.arg is None or kw.arg not in valid:
                raise ValueError(f"parse_pipeline: {name} has no option {kw.arg!r}; valid: "
                                 f"{_describe(name)}")
            try:
                kwargs[kw.arg] = ast.literal_eval(kw.value)
            except ValueError:
                raise ValueError(f"parse_pipeline: {name}({kw.arg}=...) must be a literal, got "
                                 f"{ast.get_source_segment(f'({spec},)', kw.value)!r}") from None
        stage = _bind(TRANSFORMS[name], kwargs)
        _check_stage(stage, text)
        stages.append(stage)
    return chain(*stages)


def _check_stage(stage: Transform, text: str) -> None:
    """Traces ``stage`` abstractly on a 32x32 RGB image so a bad value fails at parse time."""
    probe = jax.ShapeDtypeStruct((32, 32, 3), jnp.float32)
    try:
        jax.eval_shape(stage, jax.random.key(0), probe)
    except (ValueError, TypeError) as e:
        raise ValueError(f"parse_pipeline: {text!r}: {e}") from None


def _bind(fn, kwargs) -> Transform:
    def stage(key: jax.Array, x: jax.Array) -> jax.Array:
        return fn(key, x, **kwargs)
    stage.__name__ = fn.__name__
    return stage
