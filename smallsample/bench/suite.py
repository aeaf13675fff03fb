"""``smallsample bench``: meta-training step speed and memory of standard few-shot workloads.

Each workload (:mod:`smallsample.bench.workloads`: a preset plus overrides) is one jitted
meta-training step, compiled once and timed over ``--steps`` calls after a warm-up. A record
holds the compile time, the median step time and its spread, tasks/s, XLA's FLOP count of the
step and the achieved FLOP/s, XLA's memory analysis, the process's peak resident memory (over
everything, and while stepping: :mod:`smallsample.bench.memory`), page faults per step, and the
environment (device, versions, CPU vector extensions, flags, load). After the workloads one
float32 matrix product is timed on the same device, and each workload gets its share of that
peak (``fraction_of_matmul_peak``). How to read the numbers, and what they showed:
``benchmarks/README.md`` and ``docs/performance.md``.

``--ab SETTING=V1,V2`` compiles each workload once per variant and alternates their calls in one
process (the order flipped every round), reporting each variant's median and its median paired
ratio to the first: the fair comparison on a machine whose load changes.

Usage::

    smallsample bench [--quick] [--only NAME ...] [--steps N] [--devices N] [--chunks N]
                      [--conv-impl IMPL] [--conv-bias] [--set KEY=VALUE ...] [--json PATH]
                      [--list] [--compile-cache DIR] [--no-peak]
                      [--ab SETTING=V1,V2 ...] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from smallsample.bench.memory import (
    current_rss_mb,
    minor_faults,
    peak_rss_mb,
    release_free_heap,
    reset_peak_rss,
)
from smallsample.bench.workloads import (
    DEFAULT,
    QUICK,
    WORKLOADS,
    Workload,
    ab_variants,
    train_step,
    with_settings,
)
from smallsample.data.files import atomic_write_bytes
from smallsample.models.layers import (  # re-exported: what "auto" means
    ONEDNN_MIN_POSITIONS,
    default_conv_impl,
)
from smallsample.parallel import task_mesh
from smallsample.runtime import hugepage_heap, transparent_hugepages, use_compile_cache
from smallsample.train.loop import train_devices
from smallsample.train.step import default_chunks


def _first(x):
    return x[0] if isinstance(x, (list, tuple)) else x


def _memory(compiled) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 (not every backend implements it)
        m = None
    if m is not None:
        for k in ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes",
                  "generated_code_size_in_bytes"):
            v = getattr(m, k, None)
            if v is not None:
                out["xla_" + k.replace("_in_bytes", "_mb")] = v / 2**20
    return out


class Compiled(NamedTuple):
    """A workload's step compiled for the devices it runs on, with its first state and data."""

    workload: Workload
    step: Any
    state: Any
    data: Any
    devices: int
    record: dict[str, Any]  # compile time, FLOPs and XLA's memory analysis


def resolve(workload: Workload) -> tuple[Workload, int]:
    """``(workload, devices)``: the devices its meta-batch is split over (``devices`` setting:
    0 as training's default, N at most N: :func:`smallsample.train.train_devices`) and its
    chunks (0: the backend's default, :func:`smallsample.train.default_chunks`)."""
    devices = train_devices(workload.config, workload.image)
    if not workload.config.chunks:
        workload = workload.replace(chunks=default_chunks(workload.meta_batch, devices))
    return workload, devices


def compile_workload(workload: Workload) -> Compiled:
    """Builds and compiles ``workload``'s step; counts its FLOPs (see :func:`_flops`)."""
    workload, devices = resolve(workload)
    mesh = task_mesh(jax.devices()[:devices]) if devices > 1 else None
    step, init, data = train_step(workload, mesh=mesh)
    state = init()
    step = jax.jit(step, donate_argnums=0)
    hits = []
    listener = lambda event, **_: hits.append(event == "/jax/compilation_cache/cache_hits")
    jax.monitoring.register_event_listener(listener)
    try:
        t0 = time.perf_counter()
        compiled = step.lower(state, data).compile()
        compile_s = time.perf_counter() - t0
    finally:
        jax.monitoring.unregister_event_listener(listener)
    flops, source = _flops(workload, compiled, state, data, mesh, devices)
    rec = {"compile_s": compile_s, "compile_cached": any(hits), "gflop_per_step": flops / 1e9,
           "flops_source": source, **_memory(compiled)}
    return Compiled(workload, compiled, state, data, devices, rec)


def _flops(workload: Workload, compiled, state, data, mesh, devices: int) -> tuple[float, str]:
    """XLA's FLOP count of one step, and where it came from.

    XLA does not count custom calls (oneDNN's convolutions; on GPUs cuDNN's and cuBLAS's), and
    counts a loop's body once: so with oneDNN, on accelerators, or with several inner steps the
    count is taken from the same step lowered with im2col convolutions and the inner loop
    unrolled (uncompiled), and it is scaled by the chunks (a ``lax.scan`` over the meta-batch)
    and by the devices of a sharded step (whose program is one device's share)."""
    c = workload.config
    flops, source = float((_first(compiled.cost_analysis()) or {}).get("flops", 0.0)), "compiled"
    per_task = c.learner != "protonet"
    impl = default_conv_impl(per_task=per_task) if c.conv_impl == "auto" else c.conv_impl
    unrolled = c.inner_steps > 1 and per_task
    if impl == "onednn" or jax.default_backend() != "cpu" or unrolled:
        ref, _, _ = train_step(workload.replace(conv_impl="im2col"), mesh=mesh,
                               unroll=True if unrolled else 1)
        flops = float((_first(jax.jit(ref).lower(state, data).cost_analysis()) or {})
                      .get("flops", 0.0))
        source = "im2col lowering" + (", inner loop unrolled" if unrolled else "")
    if c.chunks > 1:
        flops, source = flops * c.chunks, source + " x chunks"
    if devices > 1:
        flops, source = flops * devices, source + " x devices"
    return flops, source


def _time_calls(compiled: Compiled, state, steps: int) -> tuple[Any, list[float], Any]:
    times, metrics = [], None
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = compiled.step(state, compiled.data)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    return state, times, metrics


def _describe_impl(c) -> str:
    if c.conv_impl != "auto":
        return c.conv_impl
    impl = default_conv_impl(per_task=c.learner != "protonet")
    return f"auto: {impl}" + (f", im2col below {ONEDNN_MIN_POSITIONS} positions"
                              if impl == "onednn" else "")


def measure(workload: Workload, *, steps: int = 5) -> dict[str, Any]:
    """Compiles and times one workload; returns a JSON-ready record (see the module docstring).
    The record's ``devices`` and ``chunks`` say how the meta-batch ran."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    release_free_heap()
    rss_imports = current_rss_mb()
    compiled = compile_workload(workload)
    w, c = compiled.workload, compiled.workload.config
    rss_compiled = peak_rss_mb()
    reset_peak_rss()  # from here: what running the step needs, not what compiling it needed
    state, _, _ = _time_calls(compiled, compiled.state, 1)  # warm-up
    faults = minor_faults()
    state, times, metrics = _time_calls(compiled, state, steps)
    faults = (minor_faults() - faults) / steps
    rss_run = peak_rss_mb()
    loss = float(np.asarray(metrics["loss"]).mean())
    med = statistics.median(times)
    q = np.percentile(times, [25, 75])
    rec = {"name": w.name, "learner": c.learner, "backbone": c.backbone, "image": list(w.image),
           "ways": c.effective_train_ways, "shots": c.effective_train_shots,
           "queries": c.train_queries, "meta_batch": c.meta_batch, "inner_steps": c.inner_steps,
           "inner_lr": c.inner_lr, "width": c.width, "chunks": c.chunks,
           "conv_impl": _describe_impl(c), "conv_bias": c.conv_bias,
           "devices": compiled.devices, "steps_timed": steps,
           "step_ms_median": 1e3 * med, "step_ms_min": 1e3 * min(times),
           "step_ms_max": 1e3 * max(times), "step_ms_iqr": 1e3 * float(q[1] - q[0]),
           "tasks_per_s": c.meta_batch / med}
    rec.update(compiled.record)
    rec.update({"achieved_gflop_per_s": rec["gflop_per_step"] / med, "loss": loss,
                "loss_finite": bool(np.isfinite(loss)),
                "rss_peak_mb": max(rss_compiled, rss_run), "rss_run_mb": rss_run,
                "rss_imports_mb": rss_imports, "page_faults_per_step": faults})
    stats = getattr(jax.devices()[0], "memory_stats", lambda: None)()
    if stats and "peak_bytes_in_use" in stats:
        rec["device_peak_mb"] = stats["peak_bytes_in_use"] / 2**20
    return rec


def compare(workload: Workload, variants: list[dict[str, str]], *, rounds: int = 10,
            steps: int = 1) -> dict[str, Any]:
    """A/B in one process: ``workload`` under each settings dict of ``variants``, each compiled
    once, then ``rounds`` rounds of ``steps`` calls of each, the order flipped every round.
    Returns each variant's median and minimum step time and the median over rounds of the first
    variant's time over its own (> 1: faster than the first)."""
    if rounds < 1 or steps < 1 or not variants:
        raise ValueError(f"compare needs rounds >= 1, steps >= 1 and variants, got {rounds}, "
                         f"{steps}, {variants}")
    runs = [compile_workload(with_settings(workload, v)) for v in variants]
    states = [_time_calls(r, r.state, 1)[0] for r in runs]  # warm-up
    times: list[list[float]] = [[] for _ in runs]
    for i in range(rounds):
        order = range(len(runs)) if i % 2 == 0 else reversed(range(len(runs)))
        for j in order:
            states[j], t, _ = _time_calls(runs[j], states[j], steps)
            times[j].append(statistics.median(t))
    out = []
    for v, r, t in zip(variants, runs, times, strict=True):
        out.append({"settings": v, "devices": r.devices, "chunks": r.workload.config.chunks,
                    "step_ms_median": 1e3 * statistics.median(t), "step_ms_min": 1e3 * min(t),
                    "ratio_to_first": statistics.median(a / b for a, b in zip(times[0], t,
                                                                              strict=True))})
    return {"name": workload.name, "rounds": rounds, "variants": out}


#: The vector extensions a CPU's speed here depends on, as ``/proc/cpuinfo`` names them.
VECTOR_ISA = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
              "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_fp16", "asimd", "sve", "sve2")


def cpu_info(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, Any]:
    """The CPU's model name and which of :data:`VECTOR_ISA` it has, from ``cpuinfo`` (Linux;
    elsewhere ``platform.processor()`` and no list). The same code runs at different speeds, and
    in different ratios to PyTorch, on an AVX2 and an AVX-512 machine (docs/performance.md,
    "avx2 and avx512"), so a record says which it ran on."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return {"cpu_model": platform.processor() or None, "cpu_vector_isa": None}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if fields:  # the first processor's block is enough
                break
            continue
        fields.setdefault(key.strip(), value.strip())
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return {"cpu_model": fields.get("model name") or fields.get("CPU part") or None,
            "cpu_vector_isa": [f for f in VECTOR_ISA if f in flags]}


def environment() -> dict[str, Any]:
    """Device kind, platform, versions, flags and load: what a measurement depends on."""
    import flax  # noqa: PLC0415
    import jaxlib  # noqa: PLC0415

    dev = jax.devices()[0]
    return {
        "device_kind": dev.device_kind, "platform": dev.platform,
        "device_count": jax.device_count(), "process_count": jax.process_count(),
        "jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
        "optax": optax.__version__, "numpy": np.__version__, "python": platform.python_version(),
        "machine": platform.machine(), **cpu_info(), "cpu_count": os.cpu_count(),
        "loadavg": list(os.getloadavg()), "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "malloc_hugepages": hugepage_heap(), "transparent_hugepages": transparent_hugepages(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def matmul_peak(n: int | None = None, *, repeats: int = 10) -> dict[str, Any]:
    """The default device's speed on one ``n x n`` float32 matrix product (jitted ``jnp.matmul``
    at the default precision, the steps' own; on GPUs that may mean TF32): ``2 n**3`` FLOP over
    the median (``matmul_gflop_per_s``) and the fastest (``..._best``) of ``repeats`` timed calls
    after a warm-up. ``n``: 2048 on CPU (a product that runs at the BLAS-level peak there),
    8192 on accelerators."""
    if n is None:
        n = 2048 if jax.default_backend() == "cpu" else 8192
    if not isinstance(n, int) or n < 1 or repeats < 1:
        raise ValueError(f"matmul_peak needs n >= 1 and repeats >= 1, got n={n!r}, "
                         f"repeats={repeats!r}")
    ab = jax.random.normal(jax.random.key(0), (2, n, n), jnp.float32)
    a, b = ab[0], ab[1]
    product = jax.jit(jnp.matmul).lower(a, b).compile()
    jax.block_until_ready(product(a, b))  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(product(a, b))
        times.append(time.perf_counter() - t0)
    gflop = 2.0 * n**3 / 1e9
    med = statistics.median(times)
    return {"matmul_n": n, "matmul_dtype": "float32", "matmul_repeats": repeats,
            "matmul_ms_median": 1e3 * med, "matmul_gflop_per_s": gflop / med,
            "matmul_gflop_per_s_best": gflop / min(times)}


def _percent_range(xs: list[float]) -> str:
    lo, hi = f"{100 * min(xs):.0f}", f"{100 * max(xs):.0f}"
    return f"{lo}%" if lo == hi else f"{lo}-{hi}%"


def peak_share(rec: dict[str, Any], peak: dict[str, Any], backend: str | None = None) -> float:
    """A record's ``achieved_gflop_per_s`` over what its devices do on :func:`matmul_peak`'s
    product: one device's figure times the devices it ran on, except on CPU, whose host devices
    (``--xla_force_host_platform_device_count``) share the cores that one device's product
    already uses."""
    backend = backend or jax.default_backend()
    devices = rec.get("devices", 1) if backend != "cpu" else 1
    return rec["achieved_gflop_per_s"] / (peak["matmul_gflop_per_s"] * devices)


def run_suite(workloads: list[Workload], *, steps: int = 5, log=print, on_record=None,
              peak: bool = True, peak_n: int | None = None) -> dict[str, Any]:
    """Measures ``workloads`` in order; returns ``{'environment': ..., 'results': [...]}``,
    and with ``peak`` (:func:`matmul_peak` of size ``peak_n``, measured after them)
    ``'matmul_peak'`` and each record's ``fraction_of_matmul_peak``.

    ``on_record(out)``, if given, is called after each workload with the results so far (the
    command line rewrites its JSON then, so a suite stopped part-way keeps what it measured),
    and once more with the peak."""
    out: dict[str, Any] = {"environment": environment(), "results": []}
    for w in workloads:
        try:
            rec = measure(w, steps=steps)
        except Exception as e:  # noqa: BLE001 (one failing workload must not hide the others)
            rec = {"name": w.name, "error": f"{type(e).__name__}: {e}"}
        out["results"].append(rec)
        log(format_record(rec))
        if on_record is not None:
            on_record(out)
    if peak:
        out["matmul_peak"] = mm = matmul_peak(peak_n)
        shares = []
        for rec in out["results"]:
            if "achieved_gflop_per_s" in rec:
                rec["fraction_of_matmul_peak"] = peak_share(rec, mm)
                shares.append(rec["fraction_of_matmul_peak"])
        log(f"# float32 {mm['matmul_n']}x{mm['matmul_n']} matrix product: "
            f"{mm['matmul_gflop_per_s']:.1f} GFLOP/s (median of {mm['matmul_repeats']}; best "
            f"{mm['matmul_gflop_per_s_best']:.1f})"
            + (f"; the workloads ran at {_percent_range(shares)} of it" if shares else ""))
        if on_record is not None:
            on_record(out)
    return out


def format_record(rec: dict[str, Any]) -> str:
    if "error" in rec:
        return f"{rec['name']:<30} ERROR {rec['error']}"
    return (f"{rec['name']:<30} {rec['tasks_per_s']:8.1f} tasks/s  step "
            f"{rec['step_ms_median']:8.1f} ms [{rec['step_ms_min']:.0f}-"
            f"{rec['step_ms_max']:.0f}]  compile {rec['compile_s']:5.1f} s"
            f"{' (cached)' if rec.get('compile_cached') else ''}  "
            f"{rec['achieved_gflop_per_s']:6.1f} GFLOP/s  "
            f"rss {rec['rss_peak_mb']:.0f} MB (run {rec['rss_run_mb']:.0f})  "
            f"({rec['conv_impl']}, chunks {rec['chunks']})")


def _settings(args) -> dict[str, str]:
    """The config settings the command line's options ask for."""
    settings = dict(item.split("=", 1) for item in args.set)
    if args.conv_impl:
        settings["conv_impl"] = args.conv_impl
    if args.chunks is not None:
        settings["chunks"] = str(args.chunks)
    if args.devices is not None:
        settings["devices"] = str(args.devices)
    if args.conv_bias:
        settings["conv_bias"] = "true"
    return settings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="smallsample bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny smoke run (seconds)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="workloads to run (see --list)")
    p.add_argument("--all", action="store_true", help="every workload, ResNet-12 included")
    p.add_argument("--steps", type=int, default=5, help="timed steps per workload (default 5)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config setting for every workload (repeatable), as in "
                        "smallsample train")
    p.add_argument("--conv-impl", choices=["auto", "xla", "im2col", "shift", "onednn"],
                   help="= --set conv_impl=...")
    p.add_argument("--chunks", type=int, help="= --set chunks=N: sequential chunks of the "
                   "meta-batch (0: the backend's, one task at a time on CPU; 1: all vmapped)")
    p.add_argument("--devices", type=int, help="= --set devices=N: split the meta-batch over at "
                   "most N devices (default 0: as training does, "
                   "smallsample.parallel.auto_devices)")
    p.add_argument("--conv-bias", action="store_true", help="= --set conv_bias=true: Conv-4 "
                   "with a bias on each convolution, as learn2learn's (the same function)")
    p.add_argument("--ab", action="append", default=[], metavar="SETTING=V1,V2",
                   help="A/B in one process: each workload under every combination of these "
                   "values, calls alternated (repeatable)")
    p.add_argument("--rounds", type=int, default=10, help="rounds of --ab (default 10)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    p.add_argument("--list", action="store_true", help="list the workloads and exit")
    p.add_argument("--compile-cache", metavar="DIR", help="load and keep compiled steps in JAX's "
                   "persistent compilation cache at DIR (default: off, cold compilation is "
                   "measured)")
    p.add_argument("--no-peak", action="store_true", help="skip the float32 matrix-product "
                   "measurement after the workloads (each workload's fraction_of_matmul_peak)")
    args = p.parse_args(argv)
    if args.compile_cache:
        use_compile_cache(args.compile_cache)
    if args.list:
        for w in WORKLOADS.values():
            print(f"{w.name:<30} {w.describe()}")
        return 0
    table = QUICK if args.quick else WORKLOADS
    if args.quick:
        args.steps = min(args.steps, 2)
    if args.only:
        unknown = [n for n in args.only if n not in table]
        if unknown:
            p.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(table)}")
        names = args.only
    else:
        names = list(table) if args.quick or args.all else DEFAULT
    try:
        if any("=" not in item for item in args.set):
            raise ValueError(f"--set takes KEY=VALUE, got {args.set}")
        workloads = [with_settings(table[n], _settings(args)) for n in names]
        variants = ab_variants(args.ab)
        for w in workloads:  # every variant is a valid config, before anything runs
            for v in variants:
                with_settings(w, v)
    except ValueError as e:
        p.error(str(e))
    env = environment()
    print(f"# {env['device_kind']} x{env['device_count']} ({env['platform']}), jax {env['jax']}, "
          f"load {env['loadavg'][0]:.1f}, XLA_FLAGS={env['xla_flags']!r}", flush=True)

    def write(out):  # each version written whole or not at all, after every workload
        atomic_write_bytes(Path(args.json), (json.dumps(out, indent=2) + "\n").encode())

    if args.ab:
        out: dict[str, Any] = {"environment": env, "ab": []}
        for w in workloads:
            res = compare(w, variants, rounds=args.rounds, steps=1)
            out["ab"].append(res)
            for v in res["variants"]:
                label = " ".join(f"{k}={x}" for k, x in v["settings"].items())
                print(f"{w.name:<30} {label:<28} step {v['step_ms_median']:8.1f} ms (min "
                      f"{v['step_ms_min']:.1f})  first/this {v['ratio_to_first']:.3f}  "
                      f"(devices {v['devices']}, chunks {v['chunks']})", flush=True)
            if args.json:
                write(out)
        return 0
    out = run_suite(workloads, steps=args.steps, log=lambda s: print(s, flush=True),
                    on_record=write if args.json else None, peak=not args.no_peak,
                    peak_n=256 if args.quick else None)
    return 1 if any("error" in r for r in out["results"]) else 0
