"""Decoding speed and peak memory of the image readers on generated JPEG or PNG files.

Writes ``--images`` files of ``--width`` x ``--height`` (smooth colour fields with noise; JPEG
quality 90, about the size of an ImageNet photo, or PNG) in a temporary folder, in one of the
upstream layouts (``--layout``):

- ``folder``: class folders ``CLASS/IMAGE`` (a user's folder, tieredImageNet, mini-ImageNet's
  class-folder form), read by :func:`smallsample.data.images.load_folder`;
- ``mini``: mini-ImageNet as Ravi & Larochelle ship it, ``images/nSSSSSSSSNNNNNNNN.jpg`` and
  ``train.csv`` (``filename,label``) beside it, read by
  :func:`smallsample.data.benchmarks.load_mini_imagenet`;

then, each in a fresh child process with its own empty array cache:

- ``cold``: the reader decodes, resizes to ``--size`` and caches;
- ``warm``: the same call reads the cache (read whole);
- ``cold_mmap``: as ``cold`` into another empty cache, memory-mapping the result;
- ``mmap``: the same call memory-maps the cache.

For each: wall seconds, images per second, the child's peak resident memory (``ru_maxrss``, which
counts the pages of a memory-mapped file it touched) and peak anonymous memory (heap only,
``RssAnon`` polled every 5 ms), both above what it held after imports. The array is touched as one
5-way 5-shot 15-query episode would read it. One JSON object is printed (and written to
``--out``), with the machine, the versions and the sizes used (:func:`environment`).

    .venv/bin/python benchmarks/bench_decode.py --images 2000 --size 84 --layout mini
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    """Current resident memory (Linux /proc), MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def environment() -> dict:
    """The machine, its load and the versions that the numbers depend on."""
    import jax  # noqa: PLC0415
    import PIL  # noqa: PLC0415

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu,
            "cpus": os.cpu_count(), "memory_gib": round(memory, 1),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "system": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "numpy": np.__version__,
            "pillow": PIL.__version__, "jax": jax.__version__, "commit": commit}


def generate(folder: Path, *, images: int, classes: int, width: int, height: int,
             seed: int = 0, layout: str = "folder", fmt: str = "jpg") -> int:
    """Writes the image files in ``layout``; returns their total size in bytes."""
    from PIL import Image  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:2 * height, 0:2 * width] / max(width, height)
    fields = [np.stack([127.5 + 90 * np.sin(5 * x + p[0]) * np.cos(4 * y + p[1])
                        for p in rng.uniform(0, 2 * np.pi, (3, 2))], -1).astype(np.float32)
              for _ in range(8)]
    noise = rng.normal(0, 12, (2 * height, 2 * width, 3)).astype(np.float32)
    total = 0
    rows = ["filename,label"]
    for i in range(images):
        oy, ox, ny, nx = rng.integers(0, height), rng.integers(0, width), \
            rng.integers(0, height), rng.integers(0, width)
        a = (fields[i % len(fields)][oy:oy + height, ox:ox + width]
             + noise[ny:ny + height, nx:nx + width])
        if layout == "mini":  # synset n0000CCCC, file SYNSET + 8-digit number, as upstream
            synset = f"n{i % classes:08d}"
            path = folder / "images" / f"{synset}{i // classes + 1:08d}.{fmt}"
            rows.append(f"{path.name},{synset}")
        else:
            path = folder / f"class_{i % classes:03d}" / f"img_{i:05d}.{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(
            path, **({"quality": 90} if fmt == "jpg" else {}))
        total += path.stat().st_size
    if layout == "mini":
        (folder / "train.csv").write_text("\n".join(rows) + "\n")
    return total


def anon_mb() -> float:
    """Anonymous resident memory (heap, not file pages such as a memory map's), MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1e3
    return float("nan")


def child(args) -> dict:
    from smallsample.data.benchmarks import load_mini_imagenet  # noqa: PLC0415
    from smallsample.data.images import load_folder  # noqa: PLC0415

    base, anon_base = rss_mb(), anon_mb()
    peak_anon = [anon_base]
    done = threading.Event()

    def watch():  # the high-water mark of anonymous memory, every 5 ms
        while not done.wait(0.005):
            peak_anon[0] = max(peak_anon[0], anon_mb())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t = time.perf_counter()
    options = dict(size=args.size, workers=args.workers or None, draft=not args.no_draft,
                   mmap=args.mode.endswith("mmap"), progress=False)
    if args.layout == "mini":
        s = load_mini_imagenet("train", path=args.folder, **options)
    else:
        s = load_folder(args.folder, **options)
    # Touch what one 5-way 5-shot 15-query episode reads (a memory map reads only that).
    checksum = int(np.asarray(s.images[:5, :20]).sum(dtype=np.int64))
    wall = time.perf_counter() - t
    done.set()
    watcher.join()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # KB on Linux
    n = s.images.shape[0] * s.images.shape[1]
    return {"mode": args.mode, "images": n, "wall_s": round(wall, 3),
            "images_per_s": round(n / wall, 1), "rss_after_imports_mb": round(base, 1),
            "peak_rss_mb": round(peak, 1), "peak_rss_above_imports_mb": round(peak - base, 1),
            "peak_anon_above_imports_mb": round(max(peak_anon[0], anon_mb()) - anon_base, 1),
            "array_mb": round(s.images.nbytes / 1e6, 1), "checksum": checksum}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--width", type=int, default=500)
    p.add_argument("--height", type=int, default=375)
    p.add_argument("--size", type=int, default=84)
    p.add_argument("--layout", choices=["folder", "mini"], default="folder",
                   help="class folders, or mini-ImageNet's images/ + train.csv")
    p.add_argument("--format", choices=["jpg", "png"], default="jpg")
    p.add_argument("--workers", type=int, default=0, help="decoding threads (0: auto)")
    p.add_argument("--no-draft", action="store_true", help="full-size JPEG decoding")
    p.add_argument("--out", type=Path)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="cold", help=argparse.SUPPRESS)
    p.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        folder, cache = Path(tmp) / "images", Path(tmp) / "cache"
        t = time.perf_counter()
        file_bytes = generate(folder, images=args.images, classes=args.classes, width=args.width,
                              height=args.height, layout=args.layout, fmt=args.format)
        result = {"images": args.images, "classes": args.classes, "layout": args.layout,
                  "source": f"{args.width}x{args.height} "
                            f"{'JPEG q90' if args.format == 'jpg' else 'PNG'}",
                  "files_mb": round(file_bytes / 1e6, 1), "size": args.size,
                  "draft": not args.no_draft, "workers": args.workers or "auto",
                  "generate_s": round(time.perf_counter() - t, 1), **environment(), "runs": []}
        for mode in ("cold", "warm", "cold_mmap", "mmap"):
            # cold_mmap builds a second cache from scratch and memory-maps it.
            env = {**os.environ, "SMALLSAMPLE_CACHE": str(cache / ("b" if "mmap" in mode else "a"))}
            out = subprocess.run(
                [sys.executable, __file__, "--child", "--mode", mode, "--folder", str(folder),
                 "--size", str(args.size), "--workers", str(args.workers), "--layout",
                 args.layout]
                + (["--no-draft"] if args.no_draft else []),
                env=env, capture_output=True, text=True, check=True)
            result["runs"].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
