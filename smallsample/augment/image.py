"""Image augmentations as key-first pure functions on one ``[H, W, C]`` float image.

Conventions (those of dm-pix, which this module wraps where it already does the job):

- One example per call; batch with ``jax.vmap``. Images are float arrays in ``[0, 1]``; outputs keep
  the dtype and shape of the input and are never clipped, so transforms chain.
- Deterministic and random versions come in pairs: ``flip_left_right(image)`` and
  ``random_flip_left_right(key, image, *, probability=0.5)``. A random transform takes the key
  first, the image second and everything else keyword-only; every one has a ``probability`` of
  being applied at all (``0`` is the identity, ``1`` always applies) decided with ``lax.cond``.
- Sizes that shape arrays (``padding``, blur ``radius``, output ``size``) are static Python ints;
  magnitudes, probabilities and fill values may be traced.
- Bad parameters: a concrete magnitude or probability (a Python or NumPy number, or a JAX scalar
  outside ``jit``) that is NaN, infinite or out of range raises a ``ValueError`` naming the
  function, the argument and the value. Traced values cannot raise: under ``jit`` / ``vmap`` a NaN
  magnitude or probability gives an all-NaN image (never a plausible one such as an all-fill
  warp); a traced probability outside ``[0, 1]`` acts as the nearest end, and other out-of-range
  values act as documented per function.
- Geometry: rows go down, columns go right; a positive angle rotates counter-clockwise as the image
  is displayed (as ``np.rot90`` and ``scipy.ndimage.rotate`` do); the centre of an ``H x W`` image
  is ``((H - 1) / 2, (W - 1) / 2)``.

What comes from dm-pix (``dm_pix``): flips, ``rot90``, the random crop and brightness /
contrast / saturation / hue. Written here because dm-pix has no equivalent or does it far slower
(the comparisons: ``docs/performance.md``, "other families"):

- the bilinear sampler of every warp (rotate / translate / scale / shear / affine, resized crop,
  elastic): dm-pix's ``flat_nd_linear_interpolate`` interpolates in 3-D over ``(row, col,
  channel)`` with 8 scalar gathers per value; this one gathers whole ``[C]`` pixels at 4 corners,
  far faster for a vmapped batch on CPU. dm-pix's ``affine_transform`` also takes a raw matrix and
  sends the edge pixels of a 90-degree turn to the fill through float rounding;
- the Gaussian blur, as two matrix products (faster than dm-pix's depthwise convolution);
- one affine warp from rotation / translation / scale / shear parameters in degrees and pixels;
  pad-and-crop; random resized crop; cutout and random erasing (as masks, so traced sizes need no
  dynamic shapes); Gaussian noise; elastic distortion with an explicit
  displacement field; and a ``probability`` on every random transform.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Numeric = float | jax.Array

__all__ = [
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "affine",
    "elastic",
    "erase",
    "flip_left_right",
    "flip_up_down",
    "gaussian_blur",
    "pad_and_crop",
    "random_affine",
    "random_brightness",
    "random_contrast",
    "random_crop_with_padding",
    "random_cutout",
    "random_elastic",
    "random_erasing",
    "random_flip_left_right",
    "random_flip_up_down",
    "random_gaussian_blur",
    "random_gaussian_noise",
    "random_hue",
    "random_resized_crop",
    "random_rot90",
    "random_rotate",
    "random_saturation",
    "random_scale",
    "random_shear",
    "random_translate",
    "resized_crop",
    "rot90",
    "rotate",
]


# ----------------------------------------------------------------------------------------------
# Checks and the shared "apply with probability" helper.

def _check_image(image: jax.Array, where: str) -> None:
    if image.ndim != 3:
        raise ValueError(f"{where}: expected one image [H, W, C], got shape {image.shape}")
    if not jnp.issubdtype(image.dtype, jnp.floating):
        raise ValueError(f"{where}: expected a float image in [0, 1], got dtype {image.dtype} "
                         "(convert uint8 with episodes.to_float)")


def _concrete(value) -> float | None:
    """The number in a concrete scalar (Python, NumPy or a 0-d JAX array outside ``jit``), or
    None when it is traced (or not a numeric scalar, left to JAX to reject)."""
    if isinstance(value, jax.core.Tracer):
        return None
    v = np.asarray(value)
    if v.ndim != 0 or not (np.issubdtype(v.dtype, np.number) or v.dtype == bool):
        return None
    return float(v)


def _check_static_range(where: str, name: str, value, low: float = -math.inf,
                        high: float = math.inf, *, low_open: bool = False) -> None:
    """A concrete ``value`` must be a finite number in ``[low, high]`` (``(low, high]`` when
    ``low_open``); NaN and inf always fail. Traced values are not checked (see :func:`_nan_if`)."""
    v = _concrete(value)
    if v is None:
        return
    if not (math.isfinite(v) and (v > low if low_open else v >= low) and v <= high):
        lo = f"{'(' if low_open or low == -math.inf else '['}{low}"
        hi = f"{high}{')' if high == math.inf else ']'}"
        raise ValueError(f"{where}: {name} must be a finite number in {lo}, {hi}, got {value!r}")


def _check_static_order(where: str, low_name: str, low, high_name: str, high) -> None:
    lo, hi = _concrete(low), _concrete(high)
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"{where}: {low_name}={low!r} is more than {high_name}={high!r}")


def _check_finite_array(where: str, name: str, value) -> None:
    """A concrete array ``value`` must hold only finite numbers."""
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(value)):
        return
    v = np.asarray(value, np.float64).ravel()
    bad = np.flatnonzero(~np.isfinite(v))
    if bad.size:
        raise ValueError(f"{where}: {name} must be finite, got {v[bad][:5]} at flat indices "
                         f"{bad[:10]}")


def _nan_if(image: jax.Array, *values) -> jax.Array:
    """``image``, or an all-NaN image when any traced ``values`` holds a NaN.

    Concrete values were checked eagerly and cost nothing here; traced ones cannot raise, so a
    NaN parameter under ``jit`` gives an unmistakable all-NaN image rather than a plausible one
    (an all-fill warp, an unchanged image).
    """
    traced = [v for v in values if isinstance(v, jax.core.Tracer)]
    if not traced:
        return image
    bad = jnp.any(jnp.stack([jnp.any(jnp.isnan(v.astype(jnp.float32))) for v in traced]))
    return jnp.where(bad, jnp.asarray(jnp.nan, image.dtype), image)


def _maybe(key: jax.Array, image: jax.Array, probability: Numeric,
           apply: Callable[[jax.Array, jax.Array], jax.Array], where: str,
           params: tuple = ()) -> jax.Array:
    """``apply(key2, image)`` with the given probability, else ``image``; dtype is kept.

    ``params`` are the transform's magnitudes: under ``jit`` a NaN among them or in
    ``probability`` gives an all-NaN image (:func:`_nan_if`), whether applied or not.
    """
    _check_image(image, where)
    _check_static_range(where, "probability", probability, 0.0, 1.0)
    k_apply, k_params = jax.random.split(key)
    do = jax.random.bernoulli(k_apply, probability)
    out = lax.cond(do, lambda im: apply(k_params, im).astype(im.dtype), lambda im: im, image)
    return _nan_if(out, probability, *params)


def _uniform(key: jax.Array, low: Numeric, high: Numeric) -> jax.Array:
    return jax.random.uniform(key, (), jnp.float32, low, high)


# ----------------------------------------------------------------------------------------------
# Flips and quarter turns (dm-pix).

def flip_left_right(image: jax.Array) -> jax.Array:
    """Mirrors ``[H, W, C]`` along the width (``dm_pix.flip_left_right``)."""
    _check_image(image, "flip_left_right")
    return pix.flip_left_right(image)


def flip_up_down(image: jax.Array) -> jax.Array:
    """Mirrors ``[H, W, C]`` along the height (``dm_pix.flip_up_down``)."""
    _check_image(image, "flip_up_down")
    return pix.flip_up_down(image)


def rot90(image: jax.Array, k: int = 1) -> jax.Array:
    """Rotates ``[H, W, C]`` by ``k`` (static) quarter turns counter-clockwise (``dm_pix.rot90``).

    Non-square images come back as ``[W, H, C]`` for odd ``k``.
    """
    _check_image(image, "rot90")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"rot90: k must be a static int, got {k!r}")
    return pix.rot90(image, k)


def random_flip_left_right(key: jax.Array, image: jax.Array, *,
                           probability: Numeric = 0.5) -> jax.Array:
    """:func:`flip_left_right` with the given probability."""
    return _maybe(key, image, probability, lambda k, im: pix.flip_left_right(im),
                  "random_flip_left_right")


def random_flip_up_down(key: jax.Array, image: jax.Array, *,
                        probability: Numeric = 0.5) -> jax.Array:
    """:func:`flip_up_down` with the given probability."""
    return _maybe(key, image, probability, lambda k, im: pix.flip_up_down(im),
                  "random_flip_up_down")


def random_rot90(key: jax.Array, image: jax.Array, *, probability: Numeric = 0.75) -> jax.Array:
    """With the given probability, 1, 2 or 3 quarter turns (uniformly); needs a square image.

    The default ``probability=0.75`` makes the number of turns uniform over ``{0, 1, 2, 3}``.
    """
    if image.ndim == 3 and image.shape[0] != image.shape[1]:
        raise ValueError(f"random_rot90: needs a square image [H, H, C], got {image.shape}")

    def apply(k, im):
        turns = jax.random.randint(k, (), 1, 4)
        return lax.switch(turns - 1, [lambda x, t=t: pix.rot90(x, t) for t in (1, 2, 3)], im)

    return _maybe(key, image, probability, apply, "random_rot90")


# ----------------------------------------------------------------------------------------------
# One affine warp: rotation, translation, scale and shear, bilinear, constant fill (dm-pix warp).

def _inverse_affine(shape, degrees, translate, scale, shear) -> jax.Array:
    """The ``[4, 4]`` homogeneous map from output ``(row, col, channel)`` to input coordinates.

    The forward map is ``out = centre + t + R(degrees) @ diag(scale) @ Shear(shear) @ (in -
    centre)`` on ``(row, col)``, with ``R = [[cos, -sin], [sin, cos]]`` (counter-clockwise as
    displayed) and ``Shear = [[1, 0], [tan(shear), 1]]`` (columns shift in proportion to the row,
    like torchvision's x-shear).
    """
    h, w = shape[0], shape[1]
    theta = jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
    tan = jnp.tan(jnp.deg2rad(jnp.asarray(shear, jnp.float32)))
    scale = jnp.asarray(scale, jnp.float32)
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    r_inv = jnp.array([[cos, sin], [-sin, cos]])
    shear_inv = jnp.array([[1.0, 0.0], [-tan, 1.0]])
    m = shear_inv @ r_inv / scale
    centre = jnp.array([(h - 1) / 2.0, (w - 1) / 2.0], jnp.float32)
    t = jnp.asarray(translate, jnp.float32).reshape(2)
    offset = centre - m @ (centre + t)
    full = jnp.eye(4, dtype=jnp.float32)
    full = full.at[:2, :2].set(m)
    full = full.at[:2, 3].set(offset)
    return full


def _bilinear(image: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
    """Samples ``[H, W, C]`` at float ``rows, cols [h, w]`` bilinearly -> ``[h, w, C]``; beyond
    the border the edge pixel is repeated (``scipy.ndimage.map_coordinates(order=1,
    mode="nearest")``). Four gathers of whole pixels."""
    h, w, c = image.shape
    r0, c0 = jnp.floor(rows), jnp.floor(cols)
    fr, fc = (rows - r0)[..., None], (cols - c0)[..., None]
    r0, c0 = r0.astype(jnp.int32), c0.astype(jnp.int32)
    ra, rb = jnp.clip(r0, 0, h - 1), jnp.clip(r0 + 1, 0, h - 1)
    ca, cb = jnp.clip(c0, 0, w - 1), jnp.clip(c0 + 1, 0, w - 1)
    flat = image.reshape(h * w, c)

    def at(r, q):
        return flat[r * w + q]

    top = (1 - fc) * at(ra, ca) + fc * at(ra, cb)
    bottom = (1 - fc) * at(rb, ca) + fc * at(rb, cb)
    return ((1 - fr) * top + fr * bottom).astype(image.dtype)


def _warp(image: jax.Array, matrix: jax.Array, fill: Numeric) -> jax.Array:
    """Samples ``image`` bilinearly at ``matrix @ (row, col, 1)``; ``fill`` outside ``[0, n - 1]``.

    Coordinates within 1e-4 of a whole pixel are snapped to it first, so that float rounding does
    not put the edge pixels of a 90-degree turn outside.
    """
    h, w, c = image.shape
    rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                              indexing="ij")
    src_r = matrix[0, 0] * rows + matrix[0, 1] * cols + matrix[0, 3]
    src_c = matrix[1, 0] * rows + matrix[1, 1] * cols + matrix[1, 3]
    src_r, src_c = _snap(src_r), _snap(src_c)
    inside = (src_r >= 0) & (src_r <= h - 1) & (src_c >= 0) & (src_c <= w - 1)
    sampled = _bilinear(image, src_r, src_c)
    return jnp.where(inside[..., None], sampled, jnp.asarray(fill, image.dtype))


def _snap(x: jax.Array, tol: float = 1e-4) -> jax.Array:
    nearest = jnp.round(x)
    return jnp.where(jnp.abs(x - nearest) < tol, nearest, x)


def affine(image: jax.Array, *, degrees: Numeric = 0.0, translate=(0.0, 0.0),
           scale: Numeric = 1.0, shear: Numeric = 0.0, fill: Numeric = 0.0) -> jax.Array:
    """Rotates, translates, scales and shears ``[H, W, C]`` about its centre in one warp.

    Args:
      image: ``[H, W, C]`` float image.
      degrees: counter-clockwise rotation.
      translate: ``(rows, cols)`` shift in pixels (positive moves the content down / right).
      scale: zoom factor (> 0; above 1 enlarges the content).
      shear: shear angle in degrees (columns shift by ``tan(shear)`` per row below the centre).
      fill: value of output pixels that map outside the input.

    Returns:
      ``[H, W, C]``, bilinear sampling (dm-pix's sampler) with ``fill`` outside, the same as
      ``scipy.ndimage.affine_transform(order=1, mode="constant", cval=fill)``.

    Concrete ``degrees``, ``translate``, ``scale`` and ``shear`` must be finite, with ``scale >
    0`` and ``shear`` in ``(-90, 90)`` (``ValueError``); under ``jit`` a NaN among them gives an
    all-NaN image.
    """
    where = "affine"
    _check_image(image, where)
    _check_static_range(where, "degrees", degrees)
    translate = jnp.asarray(translate, jnp.float32)
    if translate.shape != (2,):
        raise ValueError(f"{where}: translate must be (rows, cols), got shape {translate.shape}")
    _check_finite_array(where, "translate", translate)
    _check_static_range(where, "scale", scale, 0.0, low_open=True)
    _check_static_range(where, "shear", shear, -90.0, 90.0, low_open=True)
    if _concrete(shear) == 90.0:
        raise ValueError(f"{where}: shear must be in (-90, 90), got {shear!r}")
    matrix = _inverse_affine(image.shape, degrees, translate, scale, shear)
    out = _warp(image, matrix, fill)
    return _nan_if(out.astype(image.dtype), degrees, translate, scale, shear)


def rotate(image: jax.Array, degrees: Numeric, *, fill: Numeric = 0.0) -> jax.Array:
    """Rotates ``[H, W, C]`` counter-clockwise by ``degrees`` about its centre (bilinear); a
    non-finite concrete ``degrees`` raises, a traced NaN gives an all-NaN image."""
    return affine(image, degrees=degrees, fill=fill)


def random_rotate(key: jax.Array, image: jax.Array, *, max_degrees: Numeric = 15.0,
                  fill: Numeric = 0.0, probability: Numeric = 1.0) -> jax.Array:
    """:func:`rotate` by an angle uniform in ``[-max_degrees, max_degrees]`` (``max_degrees``
    finite and ``>= 0``)."""
    _check_static_range("random_rotate", "max_degrees", max_degrees, 0.0)

    def apply(k, im):
        return affine(im, degrees=_uniform(k, -max_degrees, max_degrees), fill=fill)
    return _maybe(key, image, probability, apply, "random_rotate", (max_degrees,))


def random_translate(key: jax.Array, image: jax.Array, *, max_pixels: Numeric = 2.0,
                     fill: Numeric = 0.0, probability: Numeric = 1.0) -> jax.Array:
    """:func:`affine` translation by ``(rows, cols)``, each uniform in ``[-max_pixels,
    max_pixels]`` (sub-pixel shifts are bilinear; ``max_pixels`` finite and ``>= 0``)."""
    _check_static_range("random_translate", "max_pixels", max_pixels, 0.0)

    def apply(k, im):
        t = jax.random.uniform(k, (2,), jnp.float32, -max_pixels, max_pixels)
        return affine(im, translate=t, fill=fill)
    return _maybe(key, image, probability, apply, "random_translate", (max_pixels,))


def random_scale(key: jax.Array, image: jax.Array, *, min_scale: Numeric = 0.9,
                 max_scale: Numeric = 1.1, fill: Numeric = 0.0,
                 probability: Numeric = 1.0) -> jax.Array:
    """:func:`affine` zoom by a factor uniform in ``[min_scale, max_scale]`` (finite, ``> 0``)."""
    _check_static_range("random_scale", "min_scale", min_scale, 0.0, low_open=True)
    _check_static_range("random_scale", "max_scale", max_scale, 0.0, low_open=True)
    _check_static_order("random_scale", "min_scale", min_scale, "max_scale", max_scale)

    def apply(k, im):
        return affine(im, scale=_uniform(k, min_scale, max_scale), fill=fill)
    return _maybe(key, image, probability, apply, "random_scale", (min_scale, max_scale))


def random_shear(key: jax.Array, image: jax.Array, *, max_degrees: Numeric = 10.0,
                 fill: Numeric = 0.0, probability: Numeric = 1.0) -> jax.Array:
    """:func:`affine` shear by an angle uniform in ``[-max_degrees, max_degrees]``."""
    _check_static_range("random_shear", "max_degrees", max_degrees, 0.0, 89.0)

    def apply(k, im):
        return affine(im, shear=_uniform(k, -max_degrees, max_degrees), fill=fill)
    return _maybe(key, image, probability, apply, "random_shear", (max_degrees,))


def random_affine(key: jax.Array, image: jax.Array, *, max_degrees: Numeric = 0.0,
                  max_pixels: Numeric = 0.0, min_scale: Numeric = 1.0, max_scale: Numeric = 1.0,
                  max_shear: Numeric = 0.0, fill: Numeric = 0.0,
                  probability: Numeric = 1.0) -> jax.Array:
    """Random rotation, translation, scale and shear in ONE warp (one interpolation, one blur).

    Each parameter is uniform in its range, as in :func:`random_rotate`, :func:`random_translate`,
    :func:`random_scale` and :func:`random_shear`, with the same checks; a zero range leaves that
    part out.
    """
    where = "random_affine"
    _check_static_range(where, "max_degrees", max_degrees, 0.0)
    _check_static_range(where, "max_pixels", max_pixels, 0.0)
    _check_static_range(where, "min_scale", min_scale, 0.0, low_open=True)
    _check_static_range(where, "max_scale", max_scale, 0.0, low_open=True)
    _check_static_order(where, "min_scale", min_scale, "max_scale", max_scale)
    _check_static_range(where, "max_shear", max_shear, 0.0, 89.0)

    def apply(k, im):
        kd, kt, ks, kh = jax.random.split(k, 4)
        return affine(im, degrees=_uniform(kd, -max_degrees, max_degrees),
                      translate=jax.random.uniform(kt, (2,), jnp.float32, -max_pixels,
                                                   max_pixels),
                      scale=_uniform(ks, min_scale, max_scale),
                      shear=_uniform(kh, -max_shear, max_shear), fill=fill)
    return _maybe(key, image, probability, apply, where,
                  (max_degrees, max_pixels, min_scale, max_scale, max_shear))


# ----------------------------------------------------------------------------------------------
# Crops.

def pad_and_crop(image: jax.Array, *, padding: int, top, left, fill: Numeric = 0.0) -> jax.Array:
    """Pads ``[H, W, C]`` by ``padding`` (static) pixels of ``fill`` on every side, then cuts the
    ``[H, W, C]`` window whose corner is at ``(top, left)`` in the padded image (0 ..
    ``2 * padding``; traced ints allowed). A concrete corner outside that range raises
    ``ValueError``; under ``jit`` it is clamped into range (``lax.dynamic_slice``)."""
    _check_image(image, "pad_and_crop")
    padded = _pad_constant(image, padding, fill)
    for name, v in (("top", top), ("left", left)):
        c = _concrete(v)
        if c is not None and not (math.isfinite(c) and c == int(c) and 0 <= c <= 2 * padding):
            raise ValueError(f"pad_and_crop: {name} must be an int in [0, {2 * padding}] "
                             f"(2 * padding), got {v!r}")
    h, w, c = image.shape
    return lax.dynamic_slice(padded, (top, left, 0), (h, w, c))


def _pad_constant(image, padding, fill):
    if not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be a static int >= 0, got {padding!r}")
    pad = ((padding, padding), (padding, padding), (0, 0))
    return jnp.pad(image, pad, constant_values=jnp.asarray(fill, image.dtype))


def random_crop_with_padding(key: jax.Array, image: jax.Array, *, padding: int = 4,
                             fill: Numeric = 0.0, probability: Numeric = 1.0) -> jax.Array:
    """The standard pad-and-crop (CIFAR's pad 4, random 32x32 crop): pads by ``padding`` (static)
    pixels of ``fill`` and crops a random ``[H, W, C]`` window (``dm_pix.random_crop``)."""
    def apply(k, im):
        return pix.random_crop(k, _pad_constant(im, padding, fill), im.shape)
    return _maybe(key, image, probability, apply, "random_crop_with_padding")


def _static_size(size, image, where) -> tuple[int, int]:
    if size is None:
        return image.shape[0], image.shape[1]
    if isinstance(size, int):
        size = (size, size)
    if (len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size)):
        raise ValueError(f"{where}: size must be a static positive int or (height, width), "
                         f"got {size!r}")
    return tuple(size)


def resized_crop(image: jax.Array, *, top: Numeric, left: Numeric, height: Numeric,
                 width: Numeric, size: int | tuple[int, int] | None = None) -> jax.Array:
    """Resamples the box ``[top, top + height) x [left, left + width)`` (in pixels, floats and
    traced values allowed) to ``size`` (static; default the input's ``(H, W)``).

    Pixel edges are aligned (as ``scipy.ndimage.zoom(grid_mode=True)`` and ``jax.image.resize``):
    output pixel ``i`` samples input row ``top + (i + 0.5) * height / out_h - 0.5``, bilinearly,
    with edge values beyond the border. No antialiasing.

    Concrete ``top`` and ``left`` must be finite and ``height``, ``width`` finite and ``> 0``
    (``ValueError``); under ``jit`` a NaN among them gives an all-NaN image.

    Returns:
      ``[out_h, out_w, C]``.
    """
    where = "resized_crop"
    _check_image(image, where)
    _check_static_range(where, "top", top)
    _check_static_range(where, "left", left)
    _check_static_range(where, "height", height, 0.0, low_open=True)
    _check_static_range(where, "width", width, 0.0, low_open=True)
    out_h, out_w = _static_size(size, image, "resized_crop")
    rows = top + (jnp.arange(out_h, dtype=jnp.float32) + 0.5) * (height / out_h) - 0.5
    cols = left + (jnp.arange(out_w, dtype=jnp.float32) + 0.5) * (width / out_w) - 0.5
    rows, cols = jnp.broadcast_arrays(rows[:, None], cols[None, :])
    return _nan_if(_bilinear(image, rows, cols), top, left, height, width)


def random_resized_crop(key: jax.Array, image: jax.Array, *, min_scale: Numeric = 0.08,
                        max_scale: Numeric = 1.0, min_ratio: Numeric = 3 / 4,
                        max_ratio: Numeric = 4 / 3, size: int | tuple[int, int] | None = None,
                        probability: Numeric = 1.0) -> jax.Array:
    """Inception-style random resized crop (Szegedy et al. 2015; torchvision's
    ``RandomResizedCrop``): a box of area ``scale * H * W`` with ``scale`` uniform in
    ``[min_scale, max_scale]`` and aspect ratio ``width / height`` log-uniform in ``[min_ratio,
    max_ratio]``, placed uniformly, resampled to ``size`` by :func:`resized_crop`.

    Unlike torchvision, a box that does not fit is clipped to the image instead of redrawn (no
    data-dependent loop). With ``probability < 1`` the output size must equal the input size.

    Returns:
      ``[out_h, out_w, C]`` (``size``, default the input's ``(H, W)``).
    """
    where = "random_resized_crop"
    _check_image(image, where)
    out_hw = _static_size(size, image, where)
    _check_static_range(where, "min_scale", min_scale, 0.0, 1.0)
    _check_static_range(where, "max_scale", max_scale, 0.0, 1.0)
    _check_static_range(where, "min_ratio", min_ratio, 0.0, low_open=True)
    _check_static_range(where, "max_ratio", max_ratio, 0.0, low_open=True)
    _check_static_order(where, "min_scale", min_scale, "max_scale", max_scale)
    _check_static_order(where, "min_ratio", min_ratio, "max_ratio", max_ratio)
    params = (min_scale, max_scale, min_ratio, max_ratio)
    h, w = image.shape[0], image.shape[1]

    def apply(k, im):
        ks, kr, kt, kl = jax.random.split(k, 4)
        area = _uniform(ks, min_scale, max_scale) * (h * w)
        ratio = jnp.exp(_uniform(kr, jnp.log(min_ratio), jnp.log(max_ratio)))
        bh = jnp.clip(jnp.sqrt(area / ratio), 1.0, h)
        bw = jnp.clip(jnp.sqrt(area * ratio), 1.0, w)
        top = _uniform(kt, 0.0, 1.0) * (h - bh)
        left = _uniform(kl, 0.0, 1.0) * (w - bw)
        return resized_crop(im, top=top, left=left, height=bh, width=bw, size=out_hw)

    if out_hw != (h, w):
        if not (isinstance(probability, (int, float)) and probability == 1):
            raise ValueError(f"{where}: size={out_hw} differs from the input (H, W)={(h, w)}, "
                             f"which needs probability=1, got {probability!r}")
        k_params = jax.random.split(key)[1]
        return _nan_if(apply(k_params, image), *params)
    return _maybe(key, image, probability, apply, where, params)


# ----------------------------------------------------------------------------------------------
# Colour (dm-pix).

def adjust_brightness(image: jax.Array, delta: Numeric) -> jax.Array:
    """Adds ``delta`` to every pixel (``dm_pix.adjust_brightness``, as ``tf.image``); a concrete
    ``delta`` must be finite."""
    _check_image(image, "adjust_brightness")
    _check_static_range("adjust_brightness", "delta", delta)
    return pix.adjust_brightness(image, delta).astype(image.dtype)


def adjust_contrast(image: jax.Array, factor: Numeric) -> jax.Array:
    """``factor * (image - mean) + mean`` with the per-channel spatial mean
    (``dm_pix.adjust_contrast``, as ``tf.image.adjust_contrast``); a concrete ``factor`` must be
    finite."""
    _check_image(image, "adjust_contrast")
    _check_static_range("adjust_contrast", "factor", factor)
    return pix.adjust_contrast(image, factor).astype(image.dtype)


def adjust_saturation(image: jax.Array, factor: Numeric) -> jax.Array:
    """Multiplies the HSV saturation by ``factor`` (clipped to [0, 1]) (``dm_pix``).

    A one-channel (grey) image has no saturation and is returned unchanged; other channel counts
    than 1 and 3 are a ``ValueError``. A concrete ``factor`` must be finite and ``>= 0``.
    """
    _check_image(image, "adjust_saturation")
    _check_static_range("adjust_saturation", "factor", factor, 0.0)
    if _grey_or_rgb(image, "adjust_saturation"):
        return image
    return pix.adjust_saturation(image, factor).astype(image.dtype)


def adjust_hue(image: jax.Array, delta: Numeric) -> jax.Array:
    """Rotates the HSV hue by ``delta`` turns (``dm_pix.adjust_hue``); grey images unchanged.
    A concrete ``delta`` must be finite."""
    _check_image(image, "adjust_hue")
    _check_static_range("adjust_hue", "delta", delta)
    if _grey_or_rgb(image, "adjust_hue"):
        return image
    return pix.adjust_hue(image, delta).astype(image.dtype)


def _grey_or_rgb(image, where) -> bool:
    """True for a grey image; False for RGB; ValueError otherwise."""
    c = image.shape[-1]
    if c not in (1, 3):
        raise ValueError(f"{where}: needs 1 (grey) or 3 (RGB) channels, got shape {image.shape}")
    return c == 1


def random_brightness(key: jax.Array, image: jax.Array, *, max_delta: Numeric = 0.2,
                      probability: Numeric = 1.0) -> jax.Array:
    """:func:`adjust_brightness` by a delta uniform in ``[-max_delta, max_delta]`` (``max_delta``
    finite and ``>= 0``)."""
    _check_static_range("random_brightness", "max_delta", max_delta, 0.0)
    return _maybe(key, image, probability,
                  lambda k, im: adjust_brightness(im, _uniform(k, -max_delta, max_delta)),
                  "random_brightness", (max_delta,))


def random_contrast(key: jax.Array, image: jax.Array, *, lower: Numeric = 0.8,
                    upper: Numeric = 1.2, probability: Numeric = 1.0) -> jax.Array:
    """:func:`adjust_contrast` by a factor uniform in ``[lower, upper]`` (finite)."""
    _check_static_range("random_contrast", "lower", lower)
    _check_static_range("random_contrast", "upper", upper)
    _check_static_order("random_contrast", "lower", lower, "upper", upper)
    return _maybe(key, image, probability,
                  lambda k, im: adjust_contrast(im, _uniform(k, lower, upper)),
                  "random_contrast", (lower, upper))


def random_saturation(key: jax.Array, image: jax.Array, *, lower: Numeric = 0.8,
                      upper: Numeric = 1.2, probability: Numeric = 1.0) -> jax.Array:
    """:func:`adjust_saturation` by a factor uniform in ``[lower, upper]`` (finite, ``>= 0``)."""
    _check_static_range("random_saturation", "lower", lower, 0.0)
    _check_static_range("random_saturation", "upper", upper, 0.0)
    _check_static_order("random_saturation", "lower", lower, "upper", upper)
    return _maybe(key, image, probability,
                  lambda k, im: adjust_saturation(im, _uniform(k, lower, upper)),
                  "random_saturation", (lower, upper))


def random_hue(key: jax.Array, image: jax.Array, *, max_delta: Numeric = 0.05,
               probability: Numeric = 1.0) -> jax.Array:
    """:func:`adjust_hue` by a delta uniform in ``[-max_delta, max_delta]`` turns."""
    _check_static_range("random_hue", "max_delta", max_delta, 0.0, 0.5)
    return _maybe(key, image, probability,
                  lambda k, im: adjust_hue(im, _uniform(k, -max_delta, max_delta)),
                  "random_hue", (max_delta,))


# ----------------------------------------------------------------------------------------------
# Noise, blur, erasing, elastic distortion.

def random_gaussian_noise(key: jax.Array, image: jax.Array, *, std: Numeric = 0.05,
                          probability: Numeric = 1.0) -> jax.Array:
    """Adds i.i.d. ``N(0, std^2)`` noise to every pixel (not clipped; ``std`` finite, ``>= 0``)."""
    _check_static_range("random_gaussian_noise", "std", std, 0.0)
    return _maybe(key, image, probability,
                  lambda k, im: im + std * jax.random.normal(k, im.shape, im.dtype),
                  "random_gaussian_noise", (std,))


def _blur_matrix(n: int, sigma: jax.Array, radius: int) -> jax.Array:
    """``[n, n]`` matrix of a 1-D Gaussian filter (``2 * radius + 1`` taps, normalised) with the
    border reflected (``abcd|dcba``), so that blurring is two small matrix products."""
    taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    # sigma = 0 is the limit (the identity): the centre tap's 0 / 0 is taken as 0.
    log_kernel = -(taps ** 2) / (2.0 * jnp.asarray(sigma, jnp.float32) ** 2)
    kernel = jnp.exp(jnp.where(taps == 0, 0.0 * sigma, log_kernel))
    kernel = kernel / jnp.sum(kernel)
    out = jnp.arange(n)[:, None]
    src = out + jnp.arange(-radius, radius + 1)[None, :]
    src = jnp.where(src < 0, -src - 1, src)
    src = jnp.where(src >= n, 2 * n - 1 - src, src)
    out, kernel = jnp.broadcast_arrays(out, kernel[None, :])
    return jnp.zeros((n, n), jnp.float32).at[out, src].add(kernel)


def gaussian_blur(image: jax.Array, sigma: Numeric, *, radius: int) -> jax.Array:
    """Separable Gaussian blur of ``[H, W, C]`` with a ``2 * radius + 1`` (static) tap kernel,
    reflecting at the border (edge pixel repeated), the same as ``scipy.ndimage.gaussian_filter(
    mode="reflect", truncate=radius / sigma)``; ``sigma`` may be traced.

    Computed as ``A_H @ image @ A_W^T`` with banded ``[H, H]`` / ``[W, W]`` filter matrices (the
    reflection folded in): exact, and faster on CPU than ``dm_pix.gaussian_blur``'s depthwise
    convolution (``docs/performance.md``).

    ``sigma = 0`` is the identity. A concrete ``sigma`` must be finite and ``>= 0``; under ``jit``
    a NaN ``sigma`` gives an all-NaN image.
    """
    _check_image(image, "gaussian_blur")
    _check_static_range("gaussian_blur", "sigma", sigma, 0.0)
    if not isinstance(radius, int) or radius < 0:
        raise ValueError(f"gaussian_blur: radius must be a static int >= 0, got {radius!r}")
    if radius >= min(image.shape[0], image.shape[1]):
        raise ValueError(f"gaussian_blur: radius={radius} is not less than the image size "
                         f"{image.shape[:2]}")
    rows = _blur_matrix(image.shape[0], sigma, radius)
    cols = _blur_matrix(image.shape[1], sigma, radius)
    out = jnp.einsum("ij,jkc,lk->ilc", rows, image.astype(jnp.float32), cols,
                     precision=lax.Precision.HIGHEST)
    return out.astype(image.dtype)


def random_gaussian_blur(key: jax.Array, image: jax.Array, *, min_sigma: Numeric = 0.1,
                         max_sigma: float = 1.5, probability: Numeric = 1.0) -> jax.Array:
    """:func:`gaussian_blur` with ``sigma`` uniform in ``[min_sigma, max_sigma]``; the kernel
    radius is ``ceil(3 * max_sigma)`` (so ``max_sigma`` must be a Python number)."""
    where = "random_gaussian_blur"
    if (isinstance(max_sigma, bool) or not isinstance(max_sigma, (int, float))
            or not 0 < max_sigma < math.inf):
        raise ValueError(f"{where}: max_sigma must be a finite positive Python number, got "
                         f"{max_sigma!r}")
    _check_static_range(where, "min_sigma", min_sigma, 0.0)
    _check_static_order(where, "min_sigma", min_sigma, "max_sigma", max_sigma)
    radius = min(int(math.ceil(3 * max_sigma)), min(image.shape[0], image.shape[1]) - 1)
    return _maybe(key, image, probability,
                  lambda k, im: gaussian_blur(im, _uniform(k, min_sigma, max_sigma),
                                              radius=radius), where, (min_sigma,))


def erase(image: jax.Array, *, top, left, height, width, fill: Numeric = 0.0) -> jax.Array:
    """Sets the box ``[top, top + height) x [left, left + width)`` (ints, traced allowed, clipped
    to the image) to ``fill``; a mask, so the box size needs no static shape.

    Concrete box numbers must be finite (``ValueError``); under ``jit`` a NaN among them gives an
    all-NaN image (it would otherwise erase nothing)."""
    _check_image(image, "erase")
    for name, v in (("top", top), ("left", left), ("height", height), ("width", width)):
        _check_static_range("erase", name, v)
    rows = jnp.arange(image.shape[0])[:, None, None]
    cols = jnp.arange(image.shape[1])[None, :, None]
    inside = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)
    return _nan_if(jnp.where(inside, jnp.asarray(fill, image.dtype), image),
                   top, left, height, width)


def random_cutout(key: jax.Array, image: jax.Array, *, size: Numeric = 8, fill: Numeric = 0.0,
                  probability: Numeric = 1.0) -> jax.Array:
    """Cutout (DeVries & Taylor 2017): a ``size x size`` square of ``fill`` centred on a uniformly
    drawn pixel, clipped at the border (so it may be partly outside); ``size`` finite, ``>= 0``."""
    _check_static_range("random_cutout", "size", size, 0.0)

    def apply(k, im):
        kr, kc = jax.random.split(k)
        cr = jax.random.randint(kr, (), 0, im.shape[0])
        cc = jax.random.randint(kc, (), 0, im.shape[1])
        return erase(im, top=cr - size // 2, left=cc - size // 2, height=size, width=size,
                     fill=fill)
    return _maybe(key, image, probability, apply, "random_cutout", (size,))


def random_erasing(key: jax.Array, image: jax.Array, *, min_area: Numeric = 0.02,
                   max_area: Numeric = 0.33, min_ratio: Numeric = 0.3, max_ratio: Numeric = 3.3,
                   fill: Numeric = 0.0, probability: Numeric = 0.5) -> jax.Array:
    """Random erasing (Zhong et al. 2020): a box of ``area`` uniform in ``[min_area, max_area]``
    of the image and aspect ratio log-uniform in ``[min_ratio, max_ratio]``, inside the image,
    set to ``fill``. A box larger than the image is clipped to it (torchvision redraws). Areas
    are fractions in ``[0, 1]``, ratios finite and ``> 0``.
    """
    where = "random_erasing"
    _check_static_range(where, "min_area", min_area, 0.0, 1.0)
    _check_static_range(where, "max_area", max_area, 0.0, 1.0)
    _check_static_range(where, "min_ratio", min_ratio, 0.0, low_open=True)
    _check_static_range(where, "max_ratio", max_ratio, 0.0, low_open=True)
    _check_static_order(where, "min_area", min_area, "max_area", max_area)
    _check_static_order(where, "min_ratio", min_ratio, "max_ratio", max_ratio)

    def apply(k, im):
        h, w = im.shape[0], im.shape[1]
        ka, kr, kt, kl = jax.random.split(k, 4)
        area = _uniform(ka, min_area, max_area) * (h * w)
        ratio = jnp.exp(_uniform(kr, jnp.log(min_ratio), jnp.log(max_ratio)))
        bh = jnp.clip(jnp.round(jnp.sqrt(area * ratio)), 1, h).astype(jnp.int32)
        bw = jnp.clip(jnp.round(jnp.sqrt(area / ratio)), 1, w).astype(jnp.int32)
        top = jax.random.randint(kt, (), 0, h - bh + 1)
        left = jax.random.randint(kl, (), 0, w - bw + 1)
        return erase(im, top=top, left=left, height=bh, width=bw, fill=fill)
    return _maybe(key, image, probability, apply, where,
                  (min_area, max_area, min_ratio, max_ratio))


def elastic(image: jax.Array, displacement: jax.Array) -> jax.Array:
    """Moves every output pixel's sample point by ``displacement [H, W, 2]`` (rows, cols, in
    pixels): output ``(i, j)`` = input at ``(i + d[i, j, 0], j + d[i, j, 1])``, bilinear, edge
    values beyond the border (``scipy.ndimage.map_coordinates(order=1, mode="nearest")``).
    A concrete ``displacement`` must be finite; under ``jit`` a NaN displacement gives NaN at
    that pixel."""
    _check_image(image, "elastic")
    if displacement.shape != image.shape[:2] + (2,):
        raise ValueError(f"elastic: displacement must be [H, W, 2] = {image.shape[:2] + (2,)}, "
                         f"got {displacement.shape}")
    _check_finite_array("elastic", "displacement", displacement)
    rows, cols = jnp.meshgrid(jnp.arange(image.shape[0], dtype=jnp.float32),
                              jnp.arange(image.shape[1], dtype=jnp.float32), indexing="ij")
    return _bilinear(image, rows + displacement[..., 0], cols + displacement[..., 1])


def random_elastic(key: jax.Array, image: jax.Array, *, alpha: Numeric = 34.0,
                   sigma: float = 4.0, probability: Numeric = 1.0) -> jax.Array:
    """Elastic distortion (Simard et al. 2003): a displacement field uniform in ``[-1, 1]`` per
    pixel and axis, smoothed by a Gaussian of ``sigma`` (a Python number: it sets the kernel
    radius, ``ceil(3 * sigma)``, reflecting at the border) and scaled by ``alpha`` pixels, then
    :func:`elastic`. The defaults are Simard's for 28x28 handwriting (dm-pix's
    ``elastic_deformation`` does the same with its slower sampler and zero-padded smoothing)."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < sigma < math.inf:
        raise ValueError(f"random_elastic: sigma must be a finite positive Python number, got "
                         f"{sigma!r}")
    _check_static_range("random_elastic", "alpha", alpha)

    def apply(k, im):
        noise = jax.random.uniform(k, im.shape[:2] + (2,), jnp.float32, -1.0, 1.0)
        radius = min(int(math.ceil(3 * sigma)), min(im.shape[0], im.shape[1]) - 1)
        field = gaussian_blur(noise, float(sigma), radius=radius) * alpha
        return elastic(im, field)

    return _maybe(key, image, probability, apply, "random_elastic", (alpha,))
