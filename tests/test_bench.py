"""``smallsample bench``: the smoke run writes a complete JSON record (no timing assertions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smallsample import bench
from smallsample.bench.suite import _first
from smallsample.models.layers import default_conv_impl
from smallsample.registry import build_learner
from smallsample.train import default_chunks


def test_cpu_info_reads_the_first_processor(tmp_path):
    block = ("processor\t: {n}\nvendor_id\t: AuthenticAMD\nmodel name\t: {model}\n"
             "flags\t\t: fpu sse2 avx2 fma avx512f avx512bw avx512_vnni {extra}\n\n")
    path = tmp_path / "cpuinfo"
    path.write_text(block.format(n=0, model="AMD EPYC 9B14", extra="avx") +
                    block.format(n=1, model="another", extra="amx_tile"))
    info = bench.cpu_info(path)
    assert info == {"cpu_model": "AMD EPYC 9B14",
                    "cpu_vector_isa": ["avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"]}
    # an AVX2-only machine (as the earlier sessions' EPYC) lists no AVX-512
    path.write_text(block.format(n=0, model="AMD EPYC 7B12", extra="").replace(
        " avx512f avx512bw avx512_vnni", ""))
    assert bench.cpu_info(path)["cpu_vector_isa"] == ["avx2", "fma"]
    missing = bench.cpu_info(tmp_path / "absent")
    assert missing["cpu_vector_isa"] is None


def test_quick_run_writes_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    rc = bench.main(["--quick", "--only", "quick-maml", "--steps", "2", "--json", str(path)])
    assert rc == 0
    out = json.loads(path.read_text())
    env = out["environment"]
    for key in ("device_kind", "platform", "jax", "jaxlib", "device_count", "loadavg",
                "cpu_model", "cpu_vector_isa"):
        assert key in env
    (rec,) = out["results"]
    assert rec["name"] == "quick-maml" and rec["meta_batch"] == 2
    assert rec["steps_timed"] == 2
    assert rec["step_ms_min"] <= rec["step_ms_median"] <= rec["step_ms_max"]
    np.testing.assert_allclose(rec["tasks_per_s"], 2 / (rec["step_ms_median"] / 1e3), rtol=1e-9)
    np.testing.assert_allclose(rec["achieved_gflop_per_s"],
                               rec["gflop_per_step"] / (rec["step_ms_median"] / 1e3), rtol=1e-9)
    assert rec["gflop_per_step"] > 0 and rec["compile_s"] > 0 and rec["rss_peak_mb"] > 0
    assert rec["loss_finite"]
    # a 3-way task starts near chance: the loss is about log(3), not garbage
    assert 0.2 < rec["loss"] < 5.0
    assert rec["conv_impl"].startswith(f"auto: {default_conv_impl()}")
    assert rec["chunks"] == default_chunks(2)  # the backend's default, resolved and recorded
    assert 0 < rec["rss_imports_mb"] <= rec["rss_run_mb"] <= rec["rss_peak_mb"]
    # the matrix product measured after the workloads (--quick: 256x256), and the step's share
    mm = out["matmul_peak"]
    assert mm["matmul_n"] == 256 and mm["matmul_gflop_per_s"] > 0
    np.testing.assert_allclose(rec["fraction_of_matmul_peak"],
                               rec["achieved_gflop_per_s"] / mm["matmul_gflop_per_s"], rtol=1e-12)
    printed = capsys.readouterr().out
    assert "quick-maml" in printed and "256x256 matrix product" in printed


def test_matmul_peak_counts_the_published_flops():
    n = 192
    mm = bench.matmul_peak(n, repeats=3)
    # 2 n^3 FLOP (n^3 multiply-adds), the count XLA's cost analysis gives the same product, so
    # the peak and the steps' achieved FLOP/s are counted alike
    a = jnp.zeros((n, n), jnp.float32)
    cost = _first(jax.jit(jnp.matmul).lower(a, a).compile().cost_analysis())
    assert cost["flops"] == 2 * n**3
    np.testing.assert_allclose(mm["matmul_gflop_per_s"],
                               2 * n**3 / 1e9 / (mm["matmul_ms_median"] / 1e3), rtol=1e-12)
    assert mm["matmul_gflop_per_s_best"] >= mm["matmul_gflop_per_s"] > 0
    assert mm["matmul_repeats"] == 3 and mm["matmul_dtype"] == "float32"
    with pytest.raises(ValueError, match="n=0"):
        bench.matmul_peak(0)


def test_flops_count_every_inner_step():
    # XLA counts a loop's body once; the count is taken from the step with MAML's inner loop
    # unrolled, so each inner step adds the same FLOPs (to the few additions where the backward
    # pass accumulates)
    recs = [bench.measure(bench.QUICK["quick-maml"].replace(inner_steps=k), steps=1)
            for k in (1, 2, 3)]
    assert "unrolled" not in recs[0]["flops_source"]
    assert all("inner loop unrolled" in r["flops_source"] for r in recs[1:])
    g = [r["gflop_per_step"] for r in recs]
    assert g[1] > g[0]
    np.testing.assert_allclose(g[2] - g[1], g[1] - g[0], rtol=0.02)


def test_peak_share_counts_each_accelerator_once():
    rec, peak = {"achieved_gflop_per_s": 300.0, "devices": 4}, {"matmul_gflop_per_s": 200.0}
    assert bench.peak_share(rec, peak, "gpu") == pytest.approx(300 / 800)
    # CPU host devices share the cores that one device's product already used
    assert bench.peak_share(rec, peak, "cpu") == pytest.approx(1.5)
    assert bench.peak_share({"achieved_gflop_per_s": 50.0}, peak, "tpu") == pytest.approx(0.25)


def test_no_peak_skips_the_product(tmp_path):
    path = tmp_path / "bench.json"
    assert bench.main(["--quick", "--only", "quick-maml", "--steps", "1", "--no-peak",
                       "--json", str(path)]) == 0
    out = json.loads(path.read_text())
    assert "matmul_peak" not in out and "fraction_of_matmul_peak" not in out["results"][0]


def test_suite_reports_each_workload_as_it_finishes():
    # what a caller (the command's --json) has after each workload: everything measured so far,
    # so a suite stopped by a time limit keeps its finished workloads; a failing one is recorded
    quick = bench.QUICK["quick-maml"]
    bad = bench.Workload("quick-bad", quick.config.replace(backbone="no-such-backbone"),
                         quick.image)
    seen = []
    out = bench.run_suite([quick, bad], steps=1, log=lambda s: None,
                          on_record=lambda o: seen.append([r["name"] for r in o["results"]]),
                          peak_n=64)
    # and once more when the matrix product has been measured
    assert seen == [["quick-maml"], ["quick-maml", "quick-bad"], ["quick-maml", "quick-bad"]]
    assert "fraction_of_matmul_peak" in out["results"][0]
    assert "fraction_of_matmul_peak" not in out["results"][1]  # the failed one has no speed
    assert "step_ms_median" in out["results"][0]
    assert "no-such-backbone" in out["results"][1]["error"]


def test_suite_lists_standard_workloads(capsys):
    assert bench.main(["--list"]) == 0
    text = capsys.readouterr().out
    for name in ("maml-omniglot-5w1s", "fomaml-omniglot-5w1s", "anil-omniglot-5w1s",
                 "maml-omniglot-20w1s", "protonet-omniglot-5w5s-b1",
                 "protonet-omniglot-5w5s-b32", "maml-mini-5w5s"):
        assert name in text
    w = bench.WORKLOADS["maml-omniglot-5w1s"]
    c = w.config
    assert (w.image, c.effective_train_ways, c.effective_train_shots, c.train_queries,
            w.meta_batch, c.inner_steps, c.learner, c.backbone) == \
        ((28, 28, 1), 5, 1, 15, 32, 1, "maml", "conv4-stride")


def test_workloads_are_presets_plus_overrides():
    """Each workload is its training preset with the suite's settings: the same config that
    `smallsample train PRESET OVERRIDES` would run, checked by the registry."""
    from smallsample.config import make_config
    from smallsample.registry import validate

    w = bench.WORKLOADS["fomaml-omniglot-5w1s"]
    assert w.config == validate(make_config("omniglot-maml-5w1s", [
        "lr=1e-3", "lr_decay_every=0", "train_ways=0", "train_shots=0", "rotate=false",
        "learner=fomaml"]))
    pn = bench.WORKLOADS["protonet-omniglot-5w5s-b32"].config
    assert (pn.learner, pn.effective_train_ways, pn.train_queries, pn.meta_batch) == \
        ("protonet", 5, 15, 32)
    mini = bench.WORKLOADS["maml-mini-5w5s"]
    assert mini.image == (84, 84, 3) and mini.config.width == 32
    assert all(not w.config.rotate and w.config.lr == 1e-3 for w in bench.WORKLOADS.values())
    changed = bench.with_settings(w, {"conv_bias": "true", "chunks": "4"})
    assert changed.config == w.config.replace(conv_bias=True, chunks=4)
    with pytest.raises(ValueError, match="chunks=-1 must be >= 0"):
        bench.with_settings(w, {"chunks": "-1"})


def test_ab_variants_are_every_combination():
    assert bench.ab_variants(["devices=1,2", "conv_bias=false,true"]) == [
        {"devices": "1", "conv_bias": "false"}, {"devices": "1", "conv_bias": "true"},
        {"devices": "2", "conv_bias": "false"}, {"devices": "2", "conv_bias": "true"}]
    assert bench.ab_variants([]) == [{}]
    with pytest.raises(ValueError, match="expected SETTING=V1,V2"):
        bench.ab_variants(["devices"])


def test_ab_run_alternates_the_variants_in_one_process(tmp_path, capsys):
    path = tmp_path / "ab.json"
    assert bench.main(["--quick", "--only", "quick-maml", "--ab", "conv_bias=false,true",
                       "--rounds", "2", "--json", str(path)]) == 0
    (res,) = json.loads(path.read_text())["ab"]
    first, second = res["variants"]
    assert first["settings"] == {"conv_bias": "false"} and res["rounds"] == 2
    assert first["ratio_to_first"] == 1.0 and second["ratio_to_first"] > 0
    assert 0 < second["step_ms_min"] <= second["step_ms_median"]
    assert "conv_bias=true" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # a bad variant is refused before anything runs
        bench.main(["--quick", "--only", "quick-maml", "--ab", "chunks=1,-3"])


def test_unknown_workload_is_an_error():
    with pytest.raises(SystemExit):
        bench.main(["--only", "no-such-workload"])


def test_synthetic_data_has_the_workload_shape():
    w = bench.WORKLOADS["protonet-mini-5w5s"]
    data = bench.synthetic_data(w)
    assert data.shape == (w.num_classes, w.per_class, 84, 84, 3) and data.dtype == np.uint8


def test_conv_bias_gives_learn2learns_parameter_tree():
    w = bench.WORKLOADS["maml-omniglot-5w1s"]
    x = jnp.zeros((2, 28, 28, 1))
    for bias in (False, True):
        learner = build_learner(w.config.replace(conv_bias=bias), ways=5)
        params = jax.eval_shape(learner.init, jax.random.key(0), x)
        convs = [v for k, v in params.items() if k.startswith("Conv")]
        assert len(convs) == 4 and all(("bias" in c) == bias for c in convs)


def test_default_conv_impl_per_backend():
    from smallsample.models import onednn

    # oneDNN where it builds (float32), else im2col: measured fastest on CPU
    assert default_conv_impl("cpu") == ("onednn" if onednn.available() else "im2col")
    assert default_conv_impl("cpu", jnp.float64) == "im2col"
    assert default_conv_impl("gpu") == "xla"
    assert default_conv_impl("tpu") == "xla"
    # MAML-family networks (per-task weights in a vmapped inner loop) on GPUs: im2col, measured
    # 3.4-5.4x faster than cuDNN on an H200; unchanged on CPU and TPU
    assert default_conv_impl("gpu", per_task=True) == "im2col"
    assert default_conv_impl("tpu", per_task=True) == "xla"
    assert default_conv_impl("cpu", per_task=True) == default_conv_impl("cpu")


def test_inner_loop_model_resolves_auto_on_gpu_only():
    from smallsample import Episode, episode_loss
    from smallsample.learners.maml import maml
    from smallsample.models.conv4 import Conv4
    from smallsample.models.layers import inner_loop_model

    auto = Conv4(width=4, num_classes=3, conv_impl="auto")
    on_gpu = inner_loop_model(auto, backend="gpu")
    assert on_gpu.conv_impl == "im2col" and on_gpu.width == 4 and on_gpu.num_classes == 3
    assert inner_loop_model(auto, backend="cpu") is auto
    assert inner_loop_model(auto, backend="tpu") is auto
    explicit = Conv4(width=4, num_classes=3, conv_impl="xla")
    assert inner_loop_model(explicit, backend="gpu") is explicit  # the user's choice stands
    # the learner over the resolved model computes the same function as over the original
    x = jax.random.normal(jax.random.key(0), (6, 12, 12, 1))
    y = jnp.arange(6) % 3
    learners = [maml(m, 3, inner_steps=1, inner_lr=0.1) for m in (auto, on_gpu)]
    params = learners[0].init(jax.random.key(1), x)
    ep = Episode(x, y, x, y)
    losses = [float(episode_loss(lr, params, ep, jax.random.key(2))[0]) for lr in learners]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


# ---------------------------------------------------------------- conv2d(impl='shift' | 'auto')
# (lowerings added for the benchmark work; checked against XLA's own convolution in float64)
@pytest.mark.parametrize("shape,cout,stride,padding,second_order", [
    ((2, 7, 7, 4), 5, 2, 1, True), ((1, 6, 5, 2), 2, 1, 2, False)])
def test_shift_conv_matches_xla_values_and_gradients(shape, cout, stride, padding, second_order):
    from smallsample.models.layers import conv2d

    with jax.enable_x64(True):
        kx, kk = jax.random.split(jax.random.key(0))
        x = jax.random.normal(kx, (3,) + shape, jnp.float64)  # 3 tasks
        k = jax.random.normal(kk, (3, 3, 3, shape[-1], cout), jnp.float64)  # per-task kernels

        def loss(impl):
            def f(x, k):  # second order: a gradient step on k inside, as MAML's inner loop
                inner = lambda k: jnp.sum(jnp.tanh(conv2d(x, k, stride=stride, padding=padding,
                                                          impl=impl)))
                k2 = k - 0.1 * jax.grad(inner)(k) if second_order else k
                return jnp.sum(jnp.sin(conv2d(x, k2, stride=stride, padding=padding, impl=impl)))
            return jax.vmap(jax.value_and_grad(f, argnums=(0, 1)))

        (v_ref, (gx_ref, gk_ref)) = loss("xla")(x, k)
        (v, (gx, gk)) = jax.jit(loss("shift"))(x, k)
        np.testing.assert_allclose(v, v_ref, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(gx, gx_ref, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(gk, gk_ref, rtol=1e-9, atol=1e-10)
        auto = conv2d(x[0], k[0], stride=stride, padding=padding, impl="auto")
        np.testing.assert_allclose(auto, conv2d(x[0], k[0], stride=stride, padding=padding,
                                                impl=default_conv_impl(dtype=x.dtype)),
                                   rtol=1e-12)
        # and against a direct float64 NumPy sum over taps for the forward value
        xn, kn = np.asarray(x[0]), np.asarray(k[0])
        xp = np.pad(xn, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
        ho = (shape[1] + 2 * padding - 3) // stride + 1
        wo = (shape[2] + 2 * padding - 3) // stride + 1
        ref = sum(np.einsum("nhwc,co->nhwo",
                            xp[:, i:i + stride * (ho - 1) + 1:stride,
                               j:j + stride * (wo - 1) + 1:stride], kn[i, j])
                  for i in range(3) for j in range(3))
        got = conv2d(x[0], k[0], stride=stride, padding=padding, impl="shift")
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


def test_unknown_conv_impl_is_named():
    from smallsample.models.layers import conv2d

    with pytest.raises(ValueError, match="'winograd'"):
        conv2d(jnp.zeros((1, 4, 4, 1)), jnp.zeros((3, 3, 1, 1)), impl="winograd")


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_peak_rss_reset_forgets_freed_memory():
    from smallsample.bench.memory import current_rss_mb, peak_rss_mb, reset_peak_rss

    big = np.ones(40_000_000)  # 305 MiB, touched
    now = current_rss_mb()
    high = peak_rss_mb()
    assert high >= now > 250
    del big
    assert reset_peak_rss()
    assert peak_rss_mb() < high - 200  # the mark now starts from what is in use


def test_hugepage_env_adds_the_tunable_and_keeps_others():
    from smallsample.runtime import HUGEPAGE_TUNABLE, hugepage_env

    env = hugepage_env({"A": "1", "GLIBC_TUNABLES": "glibc.malloc.tcache_count=0:"
                        "glibc.malloc.hugetlb=0"})
    assert env["A"] == "1"
    assert env["GLIBC_TUNABLES"].split(":") == ["glibc.malloc.tcache_count=0", HUGEPAGE_TUNABLE]
    assert hugepage_env({})["GLIBC_TUNABLES"] == HUGEPAGE_TUNABLE


_FAULTS_CHILD = """
import ctypes, resource, threading
libc = ctypes.CDLL("libc.so.6")
def work():  # 100 MB from a worker thread's arena, touched, freed (numpy would madvise itself)
    p = ctypes.c_void_p()
    assert libc.posix_memalign(ctypes.byref(p), 64, 100_000_000) == 0
    ctypes.memset(p, 1, 100_000_000)
    libc.free(p)
threading.Thread(target=work).start()  # the first is not counted
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    t = threading.Thread(target=work)
    t.start()
    t.join()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) // 5)
"""


def test_hugepage_heap_stops_a_large_block_faulting_in_every_time():
    """A worker thread's 100 MB block, allocated and freed again and again as XLA's CPU runtime
    does with a step's temporaries: with glibc's defaults each one is a fresh mapping, faulted
    in 4 KiB at a time (29,000 faults here); with the huge-page tunable of the `smallsample`
    command, 2 MiB at a time."""
    from smallsample import runtime as procmem

    if not procmem.glibc() or procmem.transparent_hugepages() not in ("madvise", "always"):
        pytest.skip("needs glibc and transparent huge pages")

    def faults(env):
        proc = subprocess.run([sys.executable, "-c", _FAULTS_CHILD], env=env, check=True,
                              capture_output=True, text=True, timeout=120)
        return int(proc.stdout)

    plain = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    default, huge = faults(plain), faults(procmem.hugepage_env(plain))
    if procmem.transparent_hugepages() == "madvise":
        assert default > 20_000
    assert huge < 2_000 and huge < default


def _paired_l2l():
    import importlib.util  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "paired_l2l.py"
    spec = importlib.util.spec_from_file_location("paired_l2l", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_paired_ratios_are_learn2learns_time_over_jaxs():
    """benchmarks/paired_l2l.py's summary against the statistics module: the ratio is oriented
    as JAX's speed-up, the interval holds the median, and the share counts pairs at the target."""
    import statistics  # noqa: PLC0415

    summarise = _paired_l2l().summarise
    jax_s = [0.8, 1.0, 0.9, 0.85, 1.2, 0.7, 0.95]
    l2l_s = [1.7, 1.9, 1.6, 1.8, 2.0, 1.5, 1.75]
    ratios = [b / a for a, b in zip(jax_s, l2l_s, strict=True)]
    rec = summarise(jax_s, l2l_s, target=2.0)
    assert rec["pairs"] == 7
    assert rec["ratio_median"] == pytest.approx(statistics.median(ratios), rel=1e-12)
    lo, hi = rec["ratio_median_ci95"]
    assert min(ratios) <= lo <= rec["ratio_median"] <= hi <= max(ratios)
    assert rec["share_at_target"] == pytest.approx(sum(r >= 2.0 for r in ratios) / 7)
    assert rec["ratio_of_medians"] == pytest.approx(
        statistics.median(l2l_s) / statistics.median(jax_s), rel=1e-12)
    assert rec == summarise(jax_s, l2l_s, target=2.0)  # seeded: the same interval every time
    with pytest.raises(ValueError, match="equal, non-empty"):
        summarise(jax_s, l2l_s[:-1], target=2.0)
