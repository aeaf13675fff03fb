"""Episodes per second and peak memory: streamed from a memory-mapped file vs the device sampler.

Writes once a class-indexed uint8 array ``[--classes, --per-class, 84, 84, 3]`` as ``.npy`` (the
format of the decoded-image cache, :mod:`smallsample.data.cache`; 100 x 1000 is 2.1 GB), then,
each in a fresh child process:

- ``device``: the array read whole and put on the device; the training step's sampler
  (:func:`smallsample.episodes.sample_meta_batch`, jitted) draws one call's episodes at a time;
- ``stream_cold``: the file's pages dropped from the page cache first
  (``posix_fadvise(DONTNEED)`` after ``fsync``), then :func:`smallsample.data.stream.stream_batches`
  from its memory map: episodes drawn on the CPU, gathered from the file (random reads), put on
  the device by the background thread;
- ``stream_warm``: the same with every page of the file read once before (page cache warm).

Every mode hands the consumer the same float32 episodes: the streamed calls go through the
stream sampler's conversion (:func:`smallsample.data.stream.assemble`, jitted) and the consumer
waits for each call's episodes (``block_until_ready``), with no training step in between, so the
rate is the most a source can feed. Reported per mode: episodes/s over ``--calls`` calls after
one warm-up call; the resident memory after start-up and after the warm-up call (which loaded
the data and compiled); and over the timed calls the peak RSS (``VmHWM``, reset after the warm-up
call: the pages of a memory map count once touched) and the peak anonymous RSS (``RssAnon``, heap
only, polled every 5 ms), in MB. One JSON object is printed (and written to ``--out``).

    .venv/bin/python benchmarks/bench_stream.py --classes 100 --per-class 1000 --calls 20
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode import anon_mb, environment  # noqa: E402


def write_array(path: Path, classes: int, per_class: int, size: int) -> float:
    """The ``.npy`` file of random uint8 images, written class by class; seconds taken."""
    t = time.perf_counter()
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8,
                                    shape=(classes, per_class, size, size, 3))
    rng = np.random.default_rng(0)
    for c in range(classes):
        out[c] = rng.integers(0, 256, out.shape[1:], dtype=np.uint8)
    out.flush()
    del out
    return time.perf_counter() - t


def drop_from_page_cache(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def read_through(path: Path, chunk: int = 1 << 24) -> None:
    with open(path, "rb") as f:
        while f.read(chunk):
            pass


def child(args) -> dict:
    import jax  # noqa: PLC0415

    from smallsample.bench.memory import current_rss_mb, peak_rss_mb, reset_peak_rss  # noqa: PLC0415
    from smallsample.data.stream import assemble, stream_batches  # noqa: PLC0415
    from smallsample.episodes import sample_meta_batch  # noqa: PLC0415

    path, mode = Path(args.file), args.mode
    spc, batch = args.steps_per_call, args.meta_batch
    ep = dict(ways=args.ways, shots=args.shots, queries=args.queries)
    if mode == "stream_cold":
        drop_from_page_cache(path)
    elif mode == "stream_warm":
        read_through(path)
    jax.numpy.zeros(1).block_until_ready()
    reset_peak_rss()
    base, anon_base = current_rss_mb(), anon_mb()
    peak_anon = [anon_base]
    done = threading.Event()

    def watch():
        while not done.wait(0.005):
            peak_anon[0] = max(peak_anon[0], anon_mb())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t_load = time.perf_counter()
    if mode == "device":
        data = jax.device_put(np.load(path))  # the whole array on the device
        data.block_until_ready()
        sample = jax.jit(lambda k, d: sample_meta_batch(k, d, batch=spc * batch, **ep))
        key = jax.random.key(0)

        def calls():
            for i in range(args.calls + 1):
                yield sample(jax.random.fold_in(key, i), data)
    else:
        data = np.load(path, mmap_mode="r")
        if args.random_access:  # no read-ahead: a fault reads its page, not its neighbours
            import mmap  # noqa: PLC0415

            data._mmap.madvise(mmap.MADV_RANDOM)
        to_episodes = jax.jit(jax.vmap(jax.vmap(
            lambda x, t: assemble(x, t, shots=args.shots))))
        stream = stream_batches(data, jax.random.key(0), start_step=0, steps_per_call=spc,
                                meta_batch=batch, stop_step=(args.calls + 1) * spc, **ep)

        def calls():
            for gathered in stream:
                yield to_episodes(gathered.x, gathered.turns)
    load_s = time.perf_counter() - t_load
    t0 = held = None
    for i, episodes in enumerate(calls()):
        jax.block_until_ready(episodes)
        if i == 0:  # compiled and warmed up: the compiler's memory is not the data's
            reset_peak_rss()
            held, peak_anon[0] = current_rss_mb(), anon_mb()
            t0 = time.perf_counter()
    wall = time.perf_counter() - t0
    done.set()
    watcher.join()
    n = args.calls * spc * batch
    return {"mode": mode, "episodes": n, "wall_s": round(wall, 3),
            "episodes_per_s": round(n / wall, 1),
            "images_per_s": round(n * args.ways * (args.shots + args.queries) / wall, 1),
            "load_s": round(load_s, 2), "rss_after_start_mb": round(base, 1),
            "anon_after_start_mb": round(anon_base, 1),
            "rss_after_first_call_mb": round(held, 1),
            "peak_rss_timed_mb": round(peak_rss_mb(), 1),
            "peak_anon_timed_mb": round(max(peak_anon[0], anon_mb()), 1),
            "device": str(jax.devices()[0])}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--per-class", type=int, default=1000)
    p.add_argument("--size", type=int, default=84)
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--meta-batch", type=int, default=4)
    p.add_argument("--steps-per-call", type=int, default=10)
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--modes", default="device,stream_cold,stream_warm")
    p.add_argument("--random-access", action="store_true",
                   help="madvise(MADV_RANDOM) on the memory map (no read-ahead)")
    p.add_argument("--dir", type=Path, default=Path("/tmp/smallsample-bench-stream"),
                   help="where the array file is written (kept for the next run)")
    p.add_argument("--out", type=Path)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    common = ["--ways", str(args.ways), "--shots", str(args.shots), "--queries",
              str(args.queries), "--meta-batch", str(args.meta_batch), "--steps-per-call",
              str(args.steps_per_call), "--calls", str(args.calls)] + (
                  ["--random-access"] if args.random_access else [])
    if args.child:
        print(json.dumps(child(args)))
        return {}
    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / f"images-{args.classes}x{args.per_class}x{args.size}.npy"
    shape = (args.classes, args.per_class, args.size, args.size, 3)
    written = None
    if not path.exists() or np.load(path, mmap_mode="r").shape != shape:
        written = round(write_array(path, args.classes, args.per_class, args.size), 1)
    result = {"array": list(shape), "array_gb": round(path.stat().st_size / 1e9, 2),
              "write_s": written, "episode": f"{args.ways}-way {args.shots}-shot "
              f"{args.queries}-query", "meta_batch": args.meta_batch,
              "steps_per_call": args.steps_per_call, "calls": args.calls,
              "random_access": args.random_access,
              **environment(), "runs": []}
    for mode in args.modes.split(","):
        out = subprocess.run([sys.executable, __file__, "--child", "--mode", mode, "--file",
                              str(path), *common], capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"{mode} failed:\n{out.stderr[-3000:]}")
        result["runs"].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
