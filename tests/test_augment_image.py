"""Image augmentations: one shared harness over every registered random transform, plus float64
NumPy / SciPy references for the deterministic ones."""

from __future__ import annotations

import colorsys
import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi

from smallsample import augment
from smallsample.augment import image as A

# Test-local compile options: a fraction of the default compile time for these small programs
# (same numbers; the library itself never calls jax.jit).
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0,
                                                   "xla_llvm_disable_expensive_passes": True})

H, W, C = 12, 12, 3

# Options that make each registered transform visibly change the image when it applies.
# min_changed: the share of keys that must change the image at probability=1 (a random crop can
# land on the centre window, which is the identity).
CASES = {
    "flip_lr": {},
    "flip_ud": {},
    "rot90": {},
    "rotate": {"max_degrees": 30.0, "fill": 0.5},
    "translate": {"max_pixels": 3.0},
    "scale": {"min_scale": 0.7, "max_scale": 1.3},
    "shear": {"max_degrees": 20.0},
    "affine": {"max_degrees": 20.0, "max_pixels": 2.0, "min_scale": 0.9, "max_scale": 1.1,
               "max_shear": 10.0},
    "crop": {"padding": 2},
    "resized_crop": {},
    "brightness": {"max_delta": 0.3},
    "contrast": {"lower": 0.5, "upper": 1.5},
    "saturation": {"lower": 0.3, "upper": 1.7},
    "hue": {"max_delta": 0.2},
    "noise": {"std": 0.1},
    "blur": {"min_sigma": 0.5, "max_sigma": 1.5},
    "cutout": {"size": 4},
    "erase": {},
    "elastic": {"alpha": 8.0, "sigma": 2.0},
}
MIN_CHANGED = {"crop": 0.75}


def _image(seed=0, shape=(H, W, C)):
    return jnp.asarray(np.random.default_rng(seed).uniform(0.05, 0.95, shape), jnp.float32)


def test_every_registered_transform_has_a_case():
    assert set(CASES) == set(augment.transform_names())


@pytest.mark.parametrize("name", sorted(CASES))
def test_api_conventions(name):
    """Key first and named ``key``, then the image, every option keyword-only with a default,
    ``probability`` among them."""
    fn = augment.TRANSFORMS[name]
    params = list(inspect.signature(fn).parameters.values())
    assert [p.name for p in params[:2]] == ["key", "image"]
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params[:2])
    options = params[2:]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in options), name
    assert all(p.default is not inspect.Parameter.empty for p in options), name
    assert "probability" in {p.name for p in options}
    assert fn.__name__.startswith("random_") and fn.__doc__


def test_api_conventions_of_all_exported_random_image_functions():
    for name in A.__all__:
        if name.startswith("random_"):
            params = list(inspect.signature(getattr(A, name)).parameters.values())
            assert params[0].name == "key", name
            assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[2:]), name


@pytest.mark.parametrize("name", sorted(CASES))
def test_transform_harness(name):
    """One jitted vmap over 32 keys with a traced probability, checked for: an eager call on one
    image gives the same as its slot of the jitted vmap, shape and dtype kept, the same key gives
    the same output and different keys different ones, probability 0 is the identity, 1 always
    applies, 0.5 sometimes."""
    fn, kwargs = augment.TRANSFORMS[name], CASES[name]
    keys = jax.random.split(jax.random.key(5), 32)
    images = jnp.stack([_image(s) for s in range(4)] * 8)
    run = jit(jax.vmap(lambda k, x, p: fn(k, x, **kwargs, probability=p),
                           in_axes=(0, 0, None)))
    always = run(keys, images, 1.0)
    assert always.shape == images.shape and always.dtype == images.dtype
    eager = fn(keys[5], images[5], **kwargs, probability=1.0)  # one image, no jit, no vmap
    assert eager.shape == images[5].shape and eager.dtype == images[5].dtype
    np.testing.assert_allclose(always[5], eager, atol=1e-5)
    np.testing.assert_array_equal(run(keys, images, 1.0), always)  # same keys, same outputs
    same_image = jnp.broadcast_to(images[0], images.shape)
    distinct = {np.asarray(m).tobytes() for m in run(keys, same_image, 0.5)}
    assert len(distinct) >= 2, "different keys gave the same output every time"
    never = run(keys, images, 0.0)
    np.testing.assert_array_equal(never, images)
    changed = np.asarray(jnp.any(jnp.abs(always - images) > 1e-6, axis=(1, 2, 3)))
    assert changed.mean() >= MIN_CHANGED.get(name, 1.0), changed
    half = np.asarray(jnp.any(jnp.abs(run(keys, images, 0.5) - images) > 1e-6, axis=(1, 2, 3)))
    assert 0.15 <= half.mean() <= 0.85, half


def test_probability_frequency_and_traced_probability():
    """The share of flipped images follows a traced probability (Bernoulli, 400 draws)."""
    image = _image(2)
    keys = jax.random.split(jax.random.key(6), 400)

    @jax.jit
    def share(p):
        out = jax.vmap(lambda k: A.random_flip_left_right(k, image, probability=p))(keys)
        return jnp.mean(jnp.any(out != image, axis=(1, 2, 3)))

    for p in (0.1, 0.5, 0.9):
        assert abs(float(share(p)) - p) < 4 * np.sqrt(p * (1 - p) / 400)


def test_errors_name_the_bad_value():
    with pytest.raises(ValueError, match=r"\(12, 12\)"):
        A.random_rotate(jax.random.key(0), jnp.zeros((12, 12)))
    with pytest.raises(ValueError, match="uint8"):
        A.flip_left_right(jnp.zeros((4, 4, 1), jnp.uint8))
    with pytest.raises(ValueError, match="probability"):
        A.random_gaussian_noise(jax.random.key(0), _image(), probability=1.5)
    with pytest.raises(ValueError, match="square"):
        A.random_rot90(jax.random.key(0), jnp.zeros((4, 6, 1)))
    with pytest.raises(ValueError, match="4 channels|shape"):
        A.adjust_hue(jnp.zeros((4, 4, 4)), 0.1)


# ---------------------------------------------------------------------------------------------
# Deterministic transforms against float64 NumPy / SciPy.

def _np(x):
    return np.asarray(x, np.float64)


def test_flips_and_rot90_match_numpy():
    image = _image(0, (5, 7, 2))
    np.testing.assert_array_equal(A.flip_left_right(image), np.flip(_np(image), 1))
    np.testing.assert_array_equal(A.flip_up_down(image), np.flip(_np(image), 0))
    for k in range(4):
        np.testing.assert_array_equal(A.rot90(image, k), np.rot90(_np(image), k))


def test_rotate_matches_scipy():
    image = _image(1, (9, 11, 2))
    angles = [-30.0, 17.0, 45.0, 90.0, 180.0]
    outs = jit(jax.vmap(lambda d: A.rotate(image, d, fill=0.25)))(jnp.asarray(angles))
    for degrees, out in zip(angles, outs, strict=True):
        ref = ndi.rotate(_np(image), degrees, axes=(1, 0), reshape=False, order=1,
                         mode="constant", cval=0.25)
        np.testing.assert_allclose(out, ref, atol=2e-5, err_msg=f"{degrees} degrees")


def test_quarter_turns_by_rotate_equal_rot90():
    image = _image(2, (7, 7, 1))
    outs = jit(jax.vmap(lambda d: A.rotate(image, d)))(jnp.asarray([90.0, 180.0, 270.0]))
    for k, out in zip((1, 2, 3), outs, strict=True):
        np.testing.assert_allclose(out, np.rot90(_np(image), k), atol=1e-5)


def test_affine_matches_scipy_affine_transform():
    """Forward map out = c + t + R S Shear (in - c); SciPy gets its inverse (np.linalg.inv)."""
    image = _image(3, (9, 11, 2))
    degrees, translate, scale, shear, fill = 20.0, (1.5, -0.7), 1.2, 10.0, 0.3
    th, sh = np.deg2rad(degrees), np.tan(np.deg2rad(shear))
    forward = (np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]) @
               (scale * np.eye(2)) @ np.array([[1.0, 0.0], [sh, 1.0]]))
    inv = np.linalg.inv(forward)
    centre = np.array([4.0, 5.0])
    matrix = np.eye(3)
    matrix[:2, :2] = inv
    offset = np.zeros(3)
    offset[:2] = centre - inv @ (centre + np.array(translate))
    ref = ndi.affine_transform(_np(image), matrix, offset=offset, order=1, mode="constant",
                               cval=fill)
    out = A.affine(image, degrees=degrees, translate=translate, scale=scale, shear=shear,
                   fill=fill)
    np.testing.assert_allclose(out, ref, atol=2e-5)
    # A traced fill gives the same as a Python one.
    traced = jit(lambda f: A.affine(image, degrees=degrees, translate=translate, scale=scale,
                                        shear=shear, fill=f))(fill)
    np.testing.assert_allclose(traced, out, atol=1e-6)


def test_integer_translation_is_a_shift():
    image = _image(4, (8, 9, 1))
    out = A.affine(image, translate=(2.0, -3.0), fill=0.5)
    ref = ndi.shift(_np(image), (2, -3, 0), order=0, mode="constant", cval=0.5)
    np.testing.assert_allclose(out, ref, atol=1e-6)


@pytest.mark.parametrize("sigma,radius", [(0.7, 2), (1.3, 4)])
def test_gaussian_blur_matches_scipy(sigma, radius):
    image = _image(5, (10, 9, 2))
    ref = ndi.gaussian_filter(_np(image), sigma=(sigma, sigma, 0), mode="reflect",
                              truncate=radius / sigma)
    np.testing.assert_allclose(A.gaussian_blur(image, sigma, radius=radius), ref, atol=1e-5)


def test_resized_crop_matches_scipy_zoom_and_slicing():
    image = _image(6, (9, 11, 2))
    out = A.resized_crop(image, top=0, left=0, height=9, width=11, size=(5, 17))
    ref = ndi.zoom(_np(image), (5 / 9, 17 / 11, 1), order=1, mode="nearest", grid_mode=True)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    crop = A.resized_crop(image, top=2, left=3, height=4, width=6, size=(4, 6))
    np.testing.assert_allclose(crop, _np(image)[2:6, 3:9], atol=1e-6)


def test_pad_and_crop_matches_numpy():
    image = _image(7, (6, 5, 1))
    padded = np.pad(_np(image), ((2, 2), (2, 2), (0, 0)), constant_values=0.5)
    for top, left in [(0, 0), (4, 1), (2, 2)]:
        out = A.pad_and_crop(image, padding=2, top=top, left=left, fill=0.5)
        np.testing.assert_array_equal(out, padded[top:top + 6, left:left + 5])


def test_random_crop_with_padding_is_a_window_of_the_padded_image():
    image = _image(8, (6, 6, 1))
    padded = np.pad(_np(image), ((3, 3), (3, 3), (0, 0)))
    windows = {(t, s): padded[t:t + 6, s:s + 6] for t in range(7) for s in range(7)}
    outs = jit(jax.vmap(lambda k: A.random_crop_with_padding(k, image, padding=3)))(
        jax.random.split(jax.random.key(0), 20))
    seen = set()
    for out in np.asarray(outs, np.float64):
        hits = [ts for ts, win in windows.items() if np.array_equal(win, out)]
        assert hits, "output is not a window of the padded image"
        seen.add(hits[0])
    assert len(seen) > 5


def test_colour_adjustments_match_numpy_and_colorsys():
    image = _image(9, (4, 5, 3))
    x = _np(image)
    np.testing.assert_allclose(A.adjust_brightness(image, 0.1), x + 0.1, atol=1e-6)
    mean = x.mean(axis=(0, 1), keepdims=True)
    np.testing.assert_allclose(A.adjust_contrast(image, 1.5), 1.5 * (x - mean) + mean, atol=1e-6)

    def per_pixel(f):
        return np.array([[f(*px) for px in row] for row in x])

    def saturate(r, g, b, factor=0.6):
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        return colorsys.hsv_to_rgb(h, min(s * factor, 1.0), v)

    def hue_shift(r, g, b, delta=0.15):
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        return colorsys.hsv_to_rgb((h + delta) % 1.0, s, v)

    np.testing.assert_allclose(A.adjust_saturation(image, 0.6), per_pixel(saturate), atol=1e-5)
    np.testing.assert_allclose(A.adjust_hue(image, 0.15), per_pixel(hue_shift), atol=1e-5)
    grey = _image(9, (4, 5, 1))
    np.testing.assert_array_equal(A.adjust_hue(grey, 0.2), grey)
    np.testing.assert_array_equal(A.adjust_saturation(grey, 0.2), grey)


def test_erase_matches_numpy_and_cutout_erasing_are_boxes():
    image = _image(10, (8, 8, 2))
    ref = _np(image).copy()
    ref[max(-2, 0):3, 5:8] = 0.5
    np.testing.assert_array_equal(A.erase(image, top=-2, left=5, height=5, width=9, fill=0.5),
                                  ref)
    for fn, kwargs in [(A.random_cutout, {"size": 4}),
                       (A.random_erasing, {"min_area": 0.1, "max_area": 0.3, "probability": 1.0})]:
        outs = jit(jax.vmap(lambda k, fn=fn, kwargs=kwargs: fn(k, image, fill=0.0, **kwargs)))(
            jax.random.split(jax.random.key(1), 5))
        for out in np.asarray(outs):
            rows, cols = np.nonzero((out == 0).all(-1))
            box = np.zeros(out.shape[:2], bool)
            box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
            assert np.array_equal(box, (out == 0).all(-1)), "erased region is not a box"
            np.testing.assert_array_equal(out[~box], _np(image)[~box])
            if fn is A.random_cutout:
                assert rows.max() - rows.min() < 4 and cols.max() - cols.min() < 4
            else:
                area = box.sum() / box.size
                assert 0.05 <= area <= 0.4, area


def test_elastic_matches_scipy_map_coordinates():
    image = _image(13, (9, 10, 2))
    field = np.random.default_rng(1).uniform(-2.5, 2.5, (9, 10, 2))
    rows, cols = np.meshgrid(np.arange(9), np.arange(10), indexing="ij")
    ref = np.stack([ndi.map_coordinates(_np(image)[..., c], [rows + field[..., 0],
                                                             cols + field[..., 1]],
                                        order=1, mode="nearest") for c in range(2)], -1)
    out = jit(A.elastic)(image, jnp.asarray(field, jnp.float32))
    np.testing.assert_allclose(out, ref, atol=2e-5)


def test_gaussian_noise_statistics_and_elastic_identity():
    image = _image(11, (64, 64, 3))
    noise = np.asarray(A.random_gaussian_noise(jax.random.key(0), image, std=0.1), np.float64)
    diff = noise - _np(image)
    assert abs(diff.mean()) < 0.005 and abs(diff.std() - 0.1) < 0.005
    still = A.random_elastic(jax.random.key(0), image[:12, :12], alpha=0.0, sigma=2.0)
    np.testing.assert_allclose(still, image[:12, :12], atol=1e-6)


def test_random_resized_crop_to_another_size():
    image = _image(12, (12, 12, 1))
    out = jit(lambda k: A.random_resized_crop(k, image, size=(6, 8)))(jax.random.key(0))
    assert out.shape == (6, 8, 1)
    assert float(out.min()) >= float(image.min()) - 1e-6  # bilinear inside the image: no fill
    with pytest.raises(ValueError, match="probability"):
        A.random_resized_crop(jax.random.key(0), image, size=6, probability=0.5)
