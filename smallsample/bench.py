"""``smallsample bench``: meta-training step speed of standard few-shot workloads.

Each workload is one jitted meta-training step (:func:`smallsample.train.make_train_step`: episode
sampling on the device, the vmapped meta-gradient, the Adam update) on synthetic class-indexed data
of the right shape (speed does not depend on pixel values). For each workload the suite records:

- ``compile_s``: lowering and XLA compilation time (``compile_cached``: loaded from JAX's
  persistent compilation cache instead, with ``--compile-cache DIR``);
- ``step_ms_median`` and the spread (``step_ms_min``, ``step_ms_max``, ``step_ms_iqr``) over
  ``steps`` timed calls after one warm-up call, and ``tasks_per_s = meta_batch / median``;
- ``gflop_per_step`` from XLA's ``cost_analysis()`` of the compiled step (with oneDNN
  convolutions, and on GPUs, whose cuDNN and cuBLAS calls XLA does not count either, of the
  same step lowered with im2col convolutions), and
  ``achieved_gflop_per_s`` = that divided by the median step time. XLA counts a loop body once:
  for ``chunks > 1`` the count is scaled by the number of chunks, and for a step sharded over
  ``devices`` (one program per device) by the number of devices; MAML's inner loop is a
  ``lax.scan`` too, so with ``inner_steps > 1`` the count is taken from the same step with
  that loop unrolled (``flops_source`` says which count was used);
- memory: XLA's ``memory_analysis()`` of the step (temporaries, arguments, outputs), the device's
  ``peak_bytes_in_use`` where the backend reports it (GPUs; ``device_peak_mb``, the peak since the
  process started, so per workload only for the first of a process), the process's peak resident
  set size
  over everything, XLA's compiler included (``rss_peak_mb``; cumulative over the process, so run
  one workload per process, ``--only``, for a per-workload figure, as
  ``benchmarks/compare_l2l.py`` does), and the peak while running the step (``rss_run_mb``: the
  mark is reset after compilation, :mod:`smallsample.procmem`), and the RSS before the workload
  is built (``rss_imports_mb``: JAX, jaxlib and the library loaded, the floor of any run);
- ``page_faults_per_step``: the process's minor page faults per timed step (pages mapped in on
  first touch: a step whose buffers come fresh from the OS every time pays for them in system
  time). The ``smallsample`` command runs with glibc's heap on transparent huge pages
  (:func:`smallsample.procmem.hugepage_env`; ``python -m smallsample.bench`` runs as started);
  the environment records ``malloc_hugepages`` and the kernel's ``transparent_hugepages`` mode;
- the device kind, platform, device count, versions, ``XLA_FLAGS`` and the load average.

After the workloads the suite measures the device's float32 matrix-product speed
(:func:`matmul_peak`: an ``n x n`` product, 2048 on CPU and 8192 on accelerators, at the default
precision the steps use; ``matmul_peak`` in the JSON) and gives each workload its
``fraction_of_matmul_peak``: ``achieved_gflop_per_s`` over that median (times the devices a
sharded step ran on, on accelerators; :func:`peak_share`). Achieved FLOP/s alone
says little across machines; a step's share of what the same device does on one large product
says how much is left. Measured last, so that its buffers are not in any workload's
``rss_peak_mb``; ``--no-peak`` skips it.

Usage::

    smallsample bench [--quick] [--only NAME ...] [--steps N] [--chunks N] [--devices N]
                      [--conv-impl auto|xla|im2col|shift|onednn] [--conv-bias] [--json PATH]
                      [--list] [--compile-cache DIR] [--no-peak]

``--quick`` runs tiny versions of two workloads (a smoke test, not a measurement).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from smallsample.data.files import atomic_write_bytes
from smallsample.models.layers import (  # re-exported: what "auto" means
    ONEDNN_MIN_POSITIONS,
    default_conv_impl,
)
from smallsample.procmem import (
    current_rss_mb,
    hugepage_heap,
    minor_faults,
    peak_rss_mb,
    release_free_heap,
    reset_peak_rss,
    transparent_hugepages,
)


@dataclass(frozen=True)
class Workload:
    """One benchmark configuration (a meta-training step)."""

    name: str
    learner: str                 # maml | fomaml | anil | protonet
    backbone: str                # conv4 (max-pool) | conv4-stride | resnet12
    image: tuple[int, int, int]  # H, W, C
    ways: int
    shots: int
    queries: int
    meta_batch: int
    inner_steps: int = 1
    inner_lr: float = 0.4
    width: int = 64
    num_classes: int = 64        # classes in the synthetic class-indexed data
    per_class: int = 20
    chunks: int = 0              # sequential chunks of the meta-batch; 0: the backend's default


OMNI = (28, 28, 1)
MINI = (84, 84, 3)

#: The standard workloads. The Omniglot MAML ones follow Finn et al. (2017): Conv-4 with stride-2
#: convolutions, meta-batch 32 (5-way) / 16 (20-way), inner rate 0.4 / 0.1; mini-ImageNet MAML:
#: width 32 with max-pooling, 5 inner steps at 0.01; ProtoNet: Conv-4 with max-pooling.
WORKLOADS: dict[str, Workload] = {w.name: w for w in [
    Workload("maml-omniglot-5w1s", "maml", "conv4-stride", OMNI, 5, 1, 15, 32),
    Workload("fomaml-omniglot-5w1s", "fomaml", "conv4-stride", OMNI, 5, 1, 15, 32),
    Workload("anil-omniglot-5w1s", "anil", "conv4-stride", OMNI, 5, 1, 15, 32),
    Workload("maml-omniglot-5w5s", "maml", "conv4-stride", OMNI, 5, 5, 15, 32),
    Workload("maml-omniglot-5w1s-5steps", "maml", "conv4-stride", OMNI, 5, 1, 15, 32,
             inner_steps=5),
    Workload("maml-omniglot-20w1s", "maml", "conv4-stride", OMNI, 20, 1, 15, 16, inner_steps=5,
             inner_lr=0.1),
    Workload("protonet-omniglot-5w5s-b1", "protonet", "conv4", OMNI, 5, 5, 15, 1),
    Workload("protonet-omniglot-5w5s-b32", "protonet", "conv4", OMNI, 5, 5, 15, 32),
    Workload("protonet-omniglot-20w1s", "protonet", "conv4", OMNI, 20, 1, 15, 1),
    Workload("maml-mini-5w5s", "maml", "conv4", MINI, 5, 5, 15, 2, inner_steps=5,
             inner_lr=0.01, width=32, per_class=25),
    Workload("protonet-mini-5w5s", "protonet", "conv4", MINI, 5, 5, 15, 1, per_class=25),
    Workload("protonet-mini-5w5s-resnet12", "protonet", "resnet12", MINI, 5, 5, 15, 1,
             per_class=25),
]}

#: The default suite (the 84x84 ResNet-12 workload is left to ``--only``: minutes on a laptop CPU).
DEFAULT = [n for n in WORKLOADS if not n.endswith("resnet12")]

#: ``--quick``: tiny shapes, for a smoke test of the whole path.
QUICK = [
    Workload("quick-maml", "maml", "conv4-stride", (12, 12, 1), 3, 1, 2, 2, width=8,
             num_classes=6, per_class=4),
    Workload("quick-protonet", "protonet", "conv4", (12, 12, 1), 3, 1, 2, 2, width=8,
             num_classes=6, per_class=4),
]


def build(workload: Workload, *, conv_impl: str = "auto", conv_bias: bool = False,  # noqa: C901
          unroll: int | bool = 1):
    """``(learner, sample, data)`` for ``workload``; ``data`` is synthetic uint8
    ``[num_classes, per_class, H, W, C]``. ``conv_bias``: Conv-4 with a bias on each convolution
    (learn2learn's parameters; the same function, see :class:`~smallsample.models.conv4.Conv4`).
    ``unroll``: the MAML family's inner-loop unrolling (:func:`smallsample.learners.maml.maml`)."""
    from smallsample.learners.maml import maml  # noqa: PLC0415
    from smallsample.learners.protonet import protonet  # noqa: PLC0415
    from smallsample.models.conv4 import Conv4  # noqa: PLC0415
    from smallsample.train import make_sampler  # noqa: PLC0415

    w = workload  # conv_impl 'auto' is resolved per convolution (models/layers.py)
    head = None if w.learner == "protonet" else w.ways
    if w.backbone == "conv4":
        model = Conv4(width=w.width, downsample="pool", num_classes=head, conv_impl=conv_impl,
                      conv_bias=conv_bias)
    elif w.backbone == "conv4-stride":
        model = Conv4(width=w.width, downsample="stride", num_classes=head, conv_impl=conv_impl,
                      bn_scale_init="uniform", conv_bias=conv_bias)
    elif w.backbone == "resnet12":
        from smallsample.models.resnet12 import ResNet12  # noqa: PLC0415
        model = ResNet12(num_classes=head, conv_impl=conv_impl)
    else:
        raise ValueError(f"unknown backbone {w.backbone!r}")
    if w.learner == "protonet":
        learner = protonet(model, w.ways)
    elif w.learner in ("maml", "fomaml", "anil"):
        learner = maml(model, w.ways, inner_steps=w.inner_steps, inner_lr=w.inner_lr,
                       first_order=w.learner == "fomaml", head_only=w.learner == "anil",
                       unroll=unroll)
    else:
        raise ValueError(f"unknown learner {w.learner!r}")
    sample = make_sampler(meta_batch=w.meta_batch, ways=w.ways, shots=w.shots,
                          queries=w.queries)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (w.num_classes, w.per_class) + w.image, dtype=np.uint8)
    return learner, sample, data


def train_step(workload: Workload, *, conv_impl: str = "auto", conv_bias: bool = False,
               mesh=None, unroll: int | bool = 1):
    """``(step, init, data)`` for ``workload``: its meta-training step (not jitted; Adam at
    1e-3, as learn2learn's side of the comparisons), ``init()`` -> the initial state, and its
    synthetic data (:func:`build`) on the device."""
    from smallsample.train import init_state, make_train_step  # noqa: PLC0415

    learner, sample, data = build(workload, conv_impl=conv_impl, conv_bias=conv_bias,
                                  unroll=unroll)
    optimizer = optax.adam(1e-3)
    init = functools.partial(init_state, learner, optimizer,
                             jnp.zeros((2,) + workload.image, jnp.float32), 0)
    step = make_train_step(learner, optimizer, sample, mesh=mesh, batch=workload.meta_batch,
                           chunks=workload.chunks)
    return step, init, jnp.asarray(data)


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


def measure(workload: Workload, *, steps: int = 5, conv_impl: str = "auto",
            devices: int | None = 1, chunks: int | None = None, conv_bias: bool = False
            ) -> dict[str, Any]:
    """Compiles and times one workload; returns a JSON-ready record (see module docstring).

    ``devices``: the meta-batch is split over the most of the first ``devices`` devices that
    divide it (:func:`smallsample.parallel.split_devices`); ``None``: as training's default
    (:func:`smallsample.parallel.auto_devices`, on CPU out of every CPU device). The record's
    ``devices`` says how many it ran on.

    ``chunks`` overrides the workload's: the meta-batch runs as that many sequential groups of
    vmapped tasks (``meta_gradient(chunks=...)``); 0 or ``None``: the backend's default
    (:func:`smallsample.train.default_chunks`: one task per device at a time on CPU, 1 elsewhere).
    """
    from smallsample.parallel import (  # noqa: PLC0415
        auto_devices,
        episode_values,
        split_devices,
        task_mesh,
    )
    from smallsample.train import default_chunks  # noqa: PLC0415

    if devices is None:
        w = workload
        devices = auto_devices(w.meta_batch, episode_values(w.ways, w.shots, w.queries, w.image),
                               jax.local_device_count(), jax.default_backend())
    if devices > jax.device_count():
        raise ValueError(f"--devices {devices} but only {jax.device_count()} are visible")
    devices = split_devices(workload.meta_batch, devices)
    if chunks is not None:
        workload = dataclasses.replace(workload, chunks=chunks)
    if not workload.chunks:
        workload = dataclasses.replace(
            workload, chunks=default_chunks(workload.meta_batch, devices))

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    release_free_heap()
    rss_imports = current_rss_mb()
    mesh = None
    if devices > 1:
        mesh = task_mesh(jax.devices()[:devices])
    step, init, data = train_step(workload, conv_impl=conv_impl, conv_bias=conv_bias, mesh=mesh)
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
    cost = _first(compiled.cost_analysis()) or {}
    # one device's share: the meta-gradient is a shard_map whose body (compiled or lowered) is
    # one device's tasks (the sampling outside it is negligible)
    flops, flops_source = float(cost.get("flops", 0.0)), "compiled"
    impl = (default_conv_impl(per_task=workload.learner != "protonet") if conv_impl == "auto"
            else conv_impl)
    unrolled = workload.inner_steps > 1 and workload.learner != "protonet"
    if impl == "onednn" or jax.default_backend() != "cpu" or unrolled:
        # XLA does not count the FLOPs of custom calls (oneDNN's; on GPUs cuDNN's convolutions
        # and cuBLAS's products): count the same step with im2col convolutions instead, from its
        # lowered program (uncompiled: 3-7% below the compiled count on CPU for the suite's
        # workloads). It counts a loop's body once, so an inner loop of several steps is
        # unrolled there (the same computation; only the count is taken from it).
        ref_step, _, _ = train_step(workload, conv_impl="im2col", conv_bias=conv_bias,
                                    mesh=mesh, unroll=True if unrolled else 1)
        cost = _first(jax.jit(ref_step).lower(state, data).cost_analysis()) or {}
        flops = float(cost.get("flops", 0.0))
        flops_source = "im2col lowering" + (", inner loop unrolled" if unrolled else "")
    if workload.chunks > 1:
        # XLA's cost analysis counts a loop body once; the chunk loop holds nearly all the work
        # (the optimiser update outside it is negligible), so scale by the trip count.
        flops, flops_source = flops * workload.chunks, flops_source + " x chunks"
    if devices > 1:
        flops, flops_source = flops * devices, flops_source + " x devices"
    rss_compiled = peak_rss_mb()
    reset_peak_rss()  # from here: what running the step needs, not what compiling it needed
    state, metrics = compiled(state, data)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    faults = minor_faults()
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, data)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    faults = (minor_faults() - faults) / steps
    rss_run = peak_rss_mb()
    loss = float(np.asarray(metrics["loss"]).mean())
    med = statistics.median(times)
    q = np.percentile(times, [25, 75])
    rec = dict(dataclasses.asdict(workload), image=list(workload.image))
    rec.update({
        "conv_impl": (f"auto: {impl}" + (f", im2col below {ONEDNN_MIN_POSITIONS} positions"
                                          if impl == "onednn" else "")
                      if conv_impl == "auto" else conv_impl),
        "devices": devices,
        "conv_bias": conv_bias,
        "compile_s": compile_s,
        "compile_cached": any(hits),  # loaded from the persistent compilation cache
        "steps_timed": steps,
        "step_ms_median": 1e3 * med,
        "step_ms_min": 1e3 * min(times),
        "step_ms_max": 1e3 * max(times),
        "step_ms_iqr": 1e3 * float(q[1] - q[0]),
        "tasks_per_s": workload.meta_batch / med,
        "gflop_per_step": flops / 1e9,
        "flops_source": flops_source,
        "achieved_gflop_per_s": flops / 1e9 / med,
        "loss": loss,
        "loss_finite": bool(np.isfinite(loss)),
        "rss_peak_mb": max(rss_compiled, rss_run),
        "rss_run_mb": rss_run,
        "rss_imports_mb": rss_imports,
        "page_faults_per_step": faults,
    })
    rec.update(_memory(compiled))
    stats = getattr(jax.devices()[0], "memory_stats", lambda: None)()
    if stats and "peak_bytes_in_use" in stats:
        rec["device_peak_mb"] = stats["peak_bytes_in_use"] / 2**20
    return rec


#: The vector extensions a CPU's speed here depends on, as ``/proc/cpuinfo`` names them.
VECTOR_ISA = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
              "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_fp16", "asimd", "sve", "sve2")


def cpu_info(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, Any]:
    """The CPU's model name and which of :data:`VECTOR_ISA` it has, from ``cpuinfo`` (Linux;
    elsewhere ``platform.processor()`` and no list). The same code runs at different speeds, and
    in different ratios to PyTorch, on an AVX2 and an AVX-512 machine (``benchmarks/README.md``),
    so a record says which it ran on."""
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


def run_suite(workloads: list[Workload], *, steps: int = 5, conv_impl: str = "auto",
              devices: int | None = 1, chunks: int | None = None, conv_bias: bool = False,
              log=print,
              on_record=None, peak: bool = True, peak_n: int | None = None) -> dict[str, Any]:
    """Measures ``workloads`` in order; returns ``{'environment': ..., 'results': [...]}``,
    and with ``peak`` (:func:`matmul_peak` of size ``peak_n``, measured after them)
    ``'matmul_peak'`` and each record's ``fraction_of_matmul_peak``.

    ``on_record(out)``, if given, is called after each workload with the results so far (the
    command line rewrites its JSON then, so a suite stopped part-way keeps what it measured),
    and once more with the peak."""
    out: dict[str, Any] = {"environment": environment(), "results": []}
    for w in workloads:
        try:
            rec = measure(w, steps=steps, conv_impl=conv_impl, devices=devices, chunks=chunks,
                          conv_bias=conv_bias)
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="smallsample bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny smoke run (seconds)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="workloads to run (see --list)")
    p.add_argument("--all", action="store_true", help="every workload, ResNet-12 included")
    p.add_argument("--steps", type=int, default=5, help="timed steps per workload (default 5)")
    p.add_argument("--conv-impl", default="auto",
                   choices=["auto", "xla", "im2col", "shift", "onednn"])
    p.add_argument("--chunks", type=int, help="sequential chunks of the meta-batch (default: "
                   "the backend's, one task at a time on CPU; 1: all tasks vmapped)")
    p.add_argument("--devices", type=int, help="split the meta-batch over at most N devices "
                   "(the most that divide it); default: as training does "
                   "(smallsample.parallel.auto_devices: on CPU, over the CPU devices, one per "
                   "core as the smallsample command sets them up, for tasks of small episodes; "
                   "elsewhere 1)")
    p.add_argument("--conv-bias", action="store_true", help="Conv-4 with a bias on each "
                   "convolution, as learn2learn's (the same function: BatchNorm cancels it)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    p.add_argument("--list", action="store_true", help="list the workloads and exit")
    p.add_argument("--compile-cache", metavar="DIR", help="load and keep compiled steps in JAX's "
                   "persistent compilation cache at DIR (default: off, cold compilation is "
                   "measured); a cached step's compile_s is the load time and compilation's "
                   "memory is not in rss_peak_mb")
    p.add_argument("--no-peak", action="store_true", help="skip the float32 matrix-product "
                   "measurement after the workloads (each workload's fraction_of_matmul_peak)")
    args = p.parse_args(argv)
    if args.compile_cache:
        from smallsample.cli import use_compile_cache  # noqa: PLC0415

        use_compile_cache(args.compile_cache)
    if args.devices is not None and args.devices < 1:
        p.error(f"--devices must be >= 1, got {args.devices}")
    if args.list:
        for w in WORKLOADS.values():
            print(f"{w.name:<30} {w.learner} {w.backbone} {w.image} {w.ways}w{w.shots}s "
                  f"{w.queries}q batch {w.meta_batch} inner {w.inner_steps}")
        return 0
    table = {w.name: w for w in QUICK} if args.quick else WORKLOADS
    if args.quick:
        args.steps = min(args.steps, 2)
    if args.only:
        unknown = [n for n in args.only if n not in table]
        if unknown:
            p.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(table)}")
        workloads = [table[n] for n in args.only]
    elif args.quick:
        workloads = QUICK
    else:
        workloads = list(WORKLOADS.values()) if args.all else [WORKLOADS[n] for n in DEFAULT]
    env = environment()
    print(f"# {env['device_kind']} x{env['device_count']} ({env['platform']}), jax {env['jax']}, "
          f"load {env['loadavg'][0]:.1f}, XLA_FLAGS={env['xla_flags']!r}", flush=True)

    def write(out):  # each version written whole or not at all, after every workload
        atomic_write_bytes(Path(args.json), (json.dumps(out, indent=2) + "\n").encode())

    out = run_suite(workloads, steps=args.steps, conv_impl=args.conv_impl, devices=args.devices,
                    chunks=args.chunks, conv_bias=args.conv_bias,
                    log=lambda s: print(s, flush=True),
                    on_record=write if args.json else None, peak=not args.no_peak,
                    peak_n=256 if args.quick else None)
    return 1 if any("error" in r for r in out["results"]) else 0


if __name__ == "__main__":
    from smallsample.cli import cpu_devices_per_core

    cpu_devices_per_core()
    sys.exit(main())
