"""Per-transform augmentation throughput: jitted+vmapped JAX on the default device vs the same
transform applied one image at a time on the host with NumPy / SciPy, in one run.

    python benchmarks/bench_augment.py --out bench_augment.json
    python benchmarks/bench_augment.py --batch 4096 --host-images 512 --sizes 28 84 105

Images are ``[batch, S, S, C]`` float32 in [0, 1] (C = 1 for 28x28, Omniglot-like, and 3 for
84x84, mini-ImageNet-like). JAX time: best of ``--repeats`` runs of one jitted vmap over the batch
after a warm-up (compilation reported separately). Host time: a Python loop over ``--host-images``
images with NumPy / SciPy (``scipy.ndimage`` warps, filters; matplotlib's vectorised HSV), scaled
to images per second. ratio = JAX images/s / host images/s. Prints a table, writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage as ndi
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

from smallsample import augment

# Options per registered name (the defaults, made explicit so both sides use the same numbers).
OPTIONS = {
    "flip_lr": {"probability": 0.5},
    "flip_ud": {"probability": 0.5},
    "rot90": {},
    "rotate": {"max_degrees": 15.0},
    "translate": {"max_pixels": 2.0},
    "scale": {"min_scale": 0.9, "max_scale": 1.1},
    "shear": {"max_degrees": 10.0},
    "affine": {"max_degrees": 15.0, "max_pixels": 2.0, "min_scale": 0.9, "max_scale": 1.1,
               "max_shear": 10.0},
    "crop": {"padding": 4},
    "resized_crop": {},
    "brightness": {"max_delta": 0.2},
    "contrast": {"lower": 0.8, "upper": 1.2},
    "saturation": {"lower": 0.8, "upper": 1.2},
    "hue": {"max_delta": 0.05},
    "noise": {"std": 0.05},
    "blur": {"min_sigma": 0.1, "max_sigma": 1.5},
    "cutout": {"size": 8},
    "erase": {"probability": 1.0},
    "elastic": {"alpha": 34.0, "sigma": 4.0},
}


# ------------------------------------------------------------------------------ host peers

def _affine_np(img, degrees=0.0, translate=(0.0, 0.0), scale=1.0, shear=0.0):
    th, tan = np.deg2rad(degrees), np.tan(np.deg2rad(shear))
    fwd = (np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]) * scale
           @ np.array([[1.0, 0.0], [tan, 1.0]]))
    inv = np.linalg.inv(fwd)
    c = (np.array(img.shape[:2]) - 1) / 2.0
    m = np.eye(3)
    m[:2, :2] = inv
    off = np.zeros(3)
    off[:2] = c - inv @ (c + np.asarray(translate))
    return ndi.affine_transform(img, m, offset=off, order=1, mode="constant", cval=0.0)


def host_transform(name, rng, img):
    o = OPTIONS[name]
    h, w = img.shape[:2]
    u = rng.uniform
    if name in ("flip_lr", "flip_ud"):
        return np.flip(img, 1 if name == "flip_lr" else 0) if u() < o["probability"] else img
    if name == "rot90":
        return np.rot90(img, rng.integers(0, 4))
    if name == "rotate":
        return _affine_np(img, degrees=u(-o["max_degrees"], o["max_degrees"]))
    if name == "translate":
        return _affine_np(img, translate=u(-o["max_pixels"], o["max_pixels"], 2))
    if name == "scale":
        return _affine_np(img, scale=u(o["min_scale"], o["max_scale"]))
    if name == "shear":
        return _affine_np(img, shear=u(-o["max_degrees"], o["max_degrees"]))
    if name == "affine":
        return _affine_np(img, u(-15, 15), u(-2, 2, 2), u(0.9, 1.1), u(-10, 10))
    if name == "crop":
        p = o["padding"]
        padded = np.pad(img, ((p, p), (p, p), (0, 0)))
        t, s = rng.integers(0, 2 * p + 1, 2)
        return padded[t:t + h, s:s + w]
    if name == "resized_crop":
        area = u(0.08, 1.0) * h * w
        ratio = np.exp(u(np.log(3 / 4), np.log(4 / 3)))
        bh, bw = min(np.sqrt(area / ratio), h), min(np.sqrt(area * ratio), w)
        top, left = u() * (h - bh), u() * (w - bw)
        rows = top + (np.arange(h) + 0.5) * bh / h - 0.5
        cols = left + (np.arange(w) + 0.5) * bw / w - 0.5
        rr, cc = np.meshgrid(rows, cols, indexing="ij")
        return np.stack([ndi.map_coordinates(img[..., ch], [rr, cc], order=1, mode="nearest")
                         for ch in range(img.shape[2])], -1)
    if name == "brightness":
        return img + u(-0.2, 0.2)
    if name == "contrast":
        mean = img.mean((0, 1), keepdims=True)
        return u(0.8, 1.2) * (img - mean) + mean
    if name in ("saturation", "hue"):
        hsv = rgb_to_hsv(np.clip(img, 0, 1))
        if name == "saturation":
            hsv[..., 1] = np.clip(hsv[..., 1] * u(0.8, 1.2), 0, 1)
        else:
            hsv[..., 0] = (hsv[..., 0] + u(-0.05, 0.05)) % 1.0
        return hsv_to_rgb(hsv)
    if name == "noise":
        return img + 0.05 * rng.standard_normal(img.shape)
    if name == "blur":
        s = u(0.1, 1.5)
        # radius 5 = ceil(3 * max_sigma), as the JAX version
        return ndi.gaussian_filter(img, (s, s, 0), mode="reflect", truncate=5.0 / s)
    if name == "cutout":
        cr, cc = rng.integers(0, h), rng.integers(0, w)
        out = img.copy()
        out[max(cr - 4, 0):cr + 4, max(cc - 4, 0):cc + 4] = 0.0
        return out
    if name == "erase":
        area = u(0.02, 0.33) * h * w
        ratio = np.exp(u(np.log(0.3), np.log(3.3)))
        bh = int(min(max(round(np.sqrt(area * ratio)), 1), h))
        bw = int(min(max(round(np.sqrt(area / ratio)), 1), w))
        t, s = rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1)
        out = img.copy()
        out[t:t + bh, s:s + bw] = 0.0
        return out
    if name == "elastic":  # Simard et al. 2003, the usual SciPy implementation
        dx = ndi.gaussian_filter(u(-1, 1, (h, w)), 4.0, mode="constant") * 34.0
        dy = ndi.gaussian_filter(u(-1, 1, (h, w)), 4.0, mode="constant") * 34.0
        rr, cc = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        return np.stack([ndi.map_coordinates(img[..., ch], [rr + dx, cc + dy], order=1,
                                             mode="nearest") for ch in range(img.shape[2])], -1)
    raise KeyError(name)


# ------------------------------------------------------------------------------ timing

def best_time(fn, repeats, *args):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t)
    return min(times)


def run(args):
    rows = []
    for size in args.sizes:
        channels = 1 if size <= 32 else 3
        rng = np.random.default_rng(0)
        images_np = rng.uniform(size=(args.batch, size, size, channels)).astype(np.float32)
        images = jnp.asarray(images_np)
        keys = jax.random.split(jax.random.key(0), args.batch)
        for name in args.transforms:
            if channels == 1 and name in ("saturation", "hue"):
                continue  # identity on grey images
            fn, opts = augment.TRANSFORMS[name], OPTIONS[name]
            batched = jax.jit(jax.vmap(lambda k, x, fn=fn, opts=opts: fn(k, x, **opts)))
            t = time.perf_counter()
            batched(keys, images).block_until_ready()
            compile_s = time.perf_counter() - t
            jax_s = best_time(lambda f, k, x: f(k, x).block_until_ready(), args.repeats,
                              batched, keys, images)
            host = images_np[:args.host_images].astype(np.float64)
            host_s = best_time(lambda n, r, xs: [host_transform(n, r, im) for im in xs],
                               max(1, args.repeats // 2), name, rng, host)
            jax_rate = args.batch / jax_s
            host_rate = len(host) / host_s
            rows.append({"size": size, "channels": channels, "transform": name,
                         "jax_images_per_s": jax_rate, "host_images_per_s": host_rate,
                         "ratio": jax_rate / host_rate, "compile_s": compile_s})
            print(f"{size:>4} {channels} {name:<13} {jax_rate:>12,.0f} {host_rate:>11,.0f} "
                  f"{jax_rate / host_rate:>8.1f} {compile_s:>8.2f}", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[28, 84])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--host-images", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--transforms", nargs="+", default=sorted(OPTIONS),
                        choices=sorted(OPTIONS))
    parser.add_argument("--out", default="bench_augment.json")
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f"JAX {jax.__version__} on {device.platform} ({device.device_kind}); host: "
          f"{platform.processor() or platform.machine()}; batch {args.batch}, host loop over "
          f"{args.host_images} images")
    print(f"{'size':>4} C {'transform':<13} {'jax img/s':>12} {'host img/s':>11} {'ratio':>8} "
          f"{'compile s':>8}")
    rows = run(args)
    with open(args.out, "w") as f:
        json.dump({"jax": jax.__version__, "device": str(device), "batch": args.batch,
                   "host_images": args.host_images, "repeats": args.repeats, "rows": rows},
                  f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
