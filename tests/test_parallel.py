"""Data parallelism over tasks: a sharded meta-training step equals the one-device step.

XLA's host-platform device count must be set before JAX initialises, and these tests share a
process with others, so each check runs a small script in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``. The model is a one-block Conv-4 (MAML,
second order) so that compilation stays short.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from smallsample.parallel import check_divisible

ONEDNN = pytest.mark.onednn

COMMON = """
import json, os, sys
import jax, jax.numpy as jnp, numpy as np, optax
from smallsample.learners.maml import maml
from smallsample.models.conv4 import Conv4
from smallsample.parallel import task_mesh, replicated
from smallsample.train import init_state, make_sampler, make_train_step

BATCH = 8
IMPL = os.environ.get("SMALLSAMPLE_TEST_CONV_IMPL", "im2col")
model = Conv4(width=4, blocks=1, downsample="stride", num_classes=3, conv_impl=IMPL,
              bn_scale_init="uniform")
learner = maml(model, 3, inner_steps=1, inner_lr=0.4)
sample = make_sampler(meta_batch=BATCH, ways=3, shots=1, queries=2)
data = np.random.default_rng(0).integers(0, 256, (6, 4, 12, 12, 1), dtype=np.uint8)
opt = optax.sgd(1.0)  # new params = params - meta-gradient
state = init_state(learner, opt, jnp.zeros((2, 12, 12, 1)), 0)

def run(mesh, state, data, chunks=None):
    step = jax.jit(make_train_step(learner, opt, sample, mesh=mesh, batch=BATCH, chunks=chunks))
    compiled = step.lower(state, data).compile()
    new, m = compiled(state, data)
    local = lambda x: np.asarray(x.addressable_data(0), np.float64)
    old = jax.tree.leaves(state.params)
    grads = [(local(a) - local(b)).tolist() for a, b in zip(old, jax.tree.leaves(new.params))]
    hlo = compiled.as_text()
    return {"loss": float(local(m["loss"])[0]), "accuracy": float(local(m["accuracy"])[0]),
            "grads": grads, "all_reduce": "all-reduce" in hlo, "onednn": "ss_conv_fwd" in hlo,
            "devices": 1 if mesh is None else int(mesh.size)}
"""

MULTI_DEVICE = COMMON + """
assert jax.device_count() == 8, jax.devices()
out = {"one": run(None, state, data), "eight": run(task_mesh(), state, data),
       # 4 devices, 2 sequential chunks of 4 tasks (one per device), and the plain vmap
       "four": run(task_mesh(jax.devices()[:4]), state, data),
       "vmapped": run(None, state, data, chunks=1)}
json.dump(out, open(sys.argv[1], "w"))
"""

MULTI_HOST = """
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
import sys
addr, nproc, pid, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
jax.distributed.initialize(coordinator_address=addr, num_processes=nproc, process_id=pid)
""" + COMMON + """
assert jax.process_count() == nproc and jax.device_count() == 2 * nproc, jax.devices()
one = run(None, state, data)  # this process alone, its first local device
mesh = task_mesh()  # every process's devices
put = lambda t: jax.tree.map(lambda x: jax.device_put(np.asarray(x), replicated(mesh)), t)
out = {"one": one, "all": run(mesh, put(state), put(jnp.asarray(data))),
       "process_count": jax.process_count()}
json.dump(out, open(path, "w"))
"""


def _env(devices: int, conv_impl: str = "im2col") -> dict:
    env = dict(os.environ)
    env["SMALLSAMPLE_TEST_CONV_IMPL"] = conv_impl
    # the caller's other XLA flags (e.g. --xla_cpu_max_isa=AVX2) are kept; only the device count
    # is this test's
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _assert_same(a: dict, b: dict) -> None:
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a["accuracy"], b["accuracy"], atol=1e-7)
    assert len(a["grads"]) == len(b["grads"])
    for ga, gb in zip(a["grads"], b["grads"], strict=True):
        ga, gb = np.asarray(ga), np.asarray(gb)
        # float32 sums in another order: an entry near zero moves by a few ulps of the leaf's
        # largest (2.5e-6 of it between chunkings on an AVX-512 CPU, tests/test_train.py)
        np.testing.assert_allclose(ga, gb, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(ga).max()))


@pytest.mark.parametrize("conv_impl", ["im2col", pytest.param("onednn", marks=ONEDNN)])
def test_sharded_step_equals_one_device(tmp_path, conv_impl):
    """Meta-batch of 8 tasks over 8 host devices: same loss, accuracy and meta-gradient (read off
    an SGD(1) update) as on one device, and the compiled step really all-reduces. Also over 4
    devices (two sequential chunks of 4 tasks, one per device) and vmapped in one chunk. With
    im2col and with oneDNN convolutions (custom calls inside the sharded program)."""
    script = tmp_path / "multi_device.py"
    script.write_text(MULTI_DEVICE)
    out_path = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, str(script), str(out_path)], env=_env(8, conv_impl),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(out_path.read_text())
    assert out["eight"]["devices"] == 8
    assert out["eight"]["all_reduce"] and not out["one"]["all_reduce"]
    assert any(np.abs(np.asarray(g)).max() > 1e-4 for g in out["one"]["grads"])
    _assert_same(out["one"], out["eight"])
    assert out["four"]["devices"] == 4 and out["four"]["all_reduce"]
    _assert_same(out["one"], out["four"])
    _assert_same(out["one"], out["vmapped"])
    assert all(out[k]["onednn"] == (conv_impl == "onednn") for k in out)


def test_check_divisible_names_the_sizes():
    class FakeMesh:  # only .size is read
        size = 8

    with pytest.raises(ValueError, match="meta-batch 12 .* 8 devices"):
        check_divisible(12, FakeMesh())
    check_divisible(16, FakeMesh())
    check_divisible(3, None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_on_localhost(tmp_path):
    """``jax.distributed.initialize`` with two processes (two CPU devices each) on localhost: the
    step sharded over all four devices equals each process's one-device step."""
    script = tmp_path / "multi_host.py"
    script.write_text(MULTI_HOST)
    addr = f"127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen([sys.executable, str(script), addr, "2", str(i),
                               str(tmp_path / f"out{i}.json")], env=_env(2),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    errs = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        errs.append((p.returncode, err))
    if any(rc != 0 for rc, _ in errs):
        text = "\n".join(e[-2000:] for _, e in errs)
        if "collective" in text.lower() and "not implemented" in text.lower():
            pytest.skip(f"this CPU backend has no cross-process collectives: {text[-500:]}")
        raise AssertionError(textwrap.shorten(text, 4000))
    for i in range(2):
        out = json.loads((tmp_path / f"out{i}.json").read_text())
        assert out["process_count"] == 2 and out["all"]["devices"] == 4
        assert out["all"]["all_reduce"]
        _assert_same(out["one"], out["all"])


BENCH_FLOPS = """
import json, sys
from smallsample import bench
out = {}
for devices in [1, 2]:
    path = f"{sys.argv[1]}.{devices}"
    assert bench.main(["--quick", "--only", "quick-maml", "--steps", "1", "--conv-impl", "onednn",
                       "--devices", str(devices), "--json", path]) == 0
    (rec,) = json.load(open(path))["results"]
    out[devices] = [rec["gflop_per_step"], rec["flops_source"]]
json.dump(out, open(sys.argv[1], "w"))
"""


@ONEDNN
def test_bench_flops_do_not_depend_on_devices(tmp_path):
    """`smallsample bench` counts one step's FLOPs, the same over one and two host devices. With
    oneDNN convolutions (which XLA does not count) they come from the step lowered with im2col,
    uncompiled; the meta-gradient is a shard_map, whose body is one device's share there too, so
    the count is multiplied by the devices (and would be 2x too small if it were not)."""
    script = tmp_path / "bench_flops.py"
    script.write_text(BENCH_FLOPS)
    out_path = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, str(script), str(out_path)], env=_env(2),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(out_path.read_text())
    assert out["1"][0] > 0
    np.testing.assert_allclose(out["2"][0], out["1"][0], rtol=0.05)  # not 2x
    assert out["2"][1].startswith("im2col lowering") and out["2"][1].endswith("x devices")


TRAIN = """
import json, sys
from pathlib import Path
import numpy as np
import jax
from smallsample.config import make_config
from smallsample.train import load_checkpoint, train_and_evaluate

assert jax.local_device_count() == 2, jax.devices()
out = Path(sys.argv[1])
rng = np.random.default_rng(0)
data = {k: rng.integers(0, 256, (8, 4, 12, 12, 1), dtype=np.uint8) for k in ("train", "test")}
base = ["learner=maml", "backbone=conv4-stride", "width=4", "ways=3", "shots=1", "queries=2",
        "train_queries=2", "meta_batch=4", "steps_per_call=2", "log_every=2", "eval_every=2",
        "checkpoint_every=2", "test_episodes=6", "image_size=12", "val_part="]
for name, devices, steps in [("one", 1, 4), ("auto", 0, 4), ("two", 2, 4)]:
    cfg = make_config(None, base + [f"devices={devices}", f"steps={steps}"])
    train_and_evaluate(cfg, out / name, progress=False, data=data, log=lambda s: None)
cfg = make_config(None, base + ["devices=0", "steps=6"])
train_and_evaluate(cfg, out / "auto", progress=False, data=data, log=lambda s: None,
                   resume=True)
"""


def test_training_splits_the_meta_batch_over_cpu_devices(tmp_path):
    """`train` with ``devices=0`` (auto) on a process with two CPU devices splits the meta-batch
    of 4 over both (as ``devices=2`` does), and trains the same run as on one device: the same
    losses and parameters up to float32 summation order. A two-device run resumes."""
    script = tmp_path / "train_two.py"
    script.write_text(TRAIN)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], env=_env(2),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = {k: json.loads((tmp_path / k / "results.json").read_text())
           for k in ("one", "auto", "two")}
    assert [res[k]["devices"] for k in ("one", "auto", "two")] == [1, 2, 2]
    assert res["auto"]["steps"] == 6

    def losses(name):
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [json.loads(x)["loss"] for x in lines if "loss" in json.loads(x)]

    one, auto = losses("one"), losses("auto")
    assert len(one) == 2 and len(auto) == 3  # steps 2, 4 (and 6 after the resume)
    np.testing.assert_allclose(auto[:2], one, rtol=1e-4)
    np.testing.assert_allclose(losses("two"), one, rtol=1e-4)
    import jax  # noqa: PLC0415

    from smallsample.train import load_params  # noqa: PLC0415

    params = [jax.tree.map(np.asarray, load_params(tmp_path / k / "checkpoint.msgpack"))
              for k in ("one", "two")]
    flat = [np.concatenate([np.ravel(x) for x in _leaves(p)]) for p in params]
    np.testing.assert_allclose(flat[1], flat[0], rtol=0, atol=1e-5 * np.abs(flat[0]).max())


def _leaves(tree):
    if isinstance(tree, dict):
        return [x for k in sorted(tree) for x in _leaves(tree[k])]
    return [tree]


CORES = """
import json, os, sys
if len(sys.argv) > 1:  # pinned to that CPU before JAX loads
    os.sched_setaffinity(0, {int(sys.argv[1])})
from smallsample.runtime import cpu_devices_per_core
n = cpu_devices_per_core()
import jax
json.dump({"set": n, "devices": jax.local_device_count(),
           "cores": len(os.sched_getaffinity(0))}, sys.stdout)
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_the_command_line_makes_one_cpu_device_per_core():
    """`cpu_devices_per_core` (run by the `smallsample` command before JAX starts) gives a
    process one CPU device per core it may run on, here one on a process pinned to one core;
    a count the user chose is left alone; after JAX has started it changes nothing."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("JAX_NUM_CPU_DEVICES", None)
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if "device_count" not in f)

    def run(env, cpu=None):
        proc = subprocess.run([sys.executable, "-c", CORES] + ([] if cpu is None else [str(cpu)]),
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout)

    free = run(env)
    assert free["set"] == free["devices"] == free["cores"] >= 1
    pinned = run(env, sorted(os.sched_getaffinity(0))[0])
    assert pinned == {"set": 1, "devices": 1, "cores": 1}
    chosen = run(dict(env, JAX_NUM_CPU_DEVICES="3"))
    assert chosen["set"] is None and chosen["devices"] == 3
    forced = run(dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=3"))
    assert forced["set"] is None and forced["devices"] == 3
    import jax  # noqa: PLC0415

    from smallsample.runtime import cpu_devices_per_core  # noqa: PLC0415

    jax.devices()  # started in this process: too late to change
    assert cpu_devices_per_core({}) is None


def test_split_devices_and_train_devices():
    from smallsample.config import make_config  # noqa: PLC0415
    from smallsample.parallel import SPLIT_MAX_TASK_VALUES, auto_devices, split_devices  # noqa: PLC0415,I001
    from smallsample.train import train_devices  # noqa: PLC0415

    assert [split_devices(32, d) for d in (1, 2, 3, 5, 8, 64)] == [1, 2, 2, 4, 8, 32]
    assert split_devices(1, 16) == 1 and split_devices(6, 4) == 3
    with pytest.raises(ValueError, match="meta-batch 0 and devices 2"):
        split_devices(0, 2)
    # auto: small tasks split over the CPU devices, large ones and accelerators do not
    assert auto_devices(32, SPLIT_MAX_TASK_VALUES, 2, "cpu") == 2
    assert auto_devices(32, SPLIT_MAX_TASK_VALUES + 1, 2, "cpu") == 1
    assert auto_devices(32, 10, 8, "gpu") == 1
    omniglot = (28, 28, 1)
    maml5 = make_config("omniglot-maml-5w1s")  # 5 x (1 + 15) x 784 = 62,720 values a task
    assert train_devices(maml5, omniglot, "cpu", 2) == 2
    assert train_devices(maml5, omniglot, "cpu", 1) == 1
    assert train_devices(maml5, omniglot, "gpu", 8) == 1  # accelerators: one unless asked
    assert train_devices(maml5.replace(devices=4), omniglot, "gpu", 8) == 4
    assert train_devices(maml5.replace(devices=3), omniglot, "cpu", 4) == 2  # divides 32
    assert train_devices(maml5.replace(meta_batch=1), omniglot, "cpu", 16) == 1
    maml20 = make_config("omniglot-maml-20w1s")  # 20 x 16 x 784 = 250,880: measured slower
    assert train_devices(maml20, omniglot, "cpu", 2) == 1
    assert train_devices(maml20.replace(devices=2), omniglot, "cpu", 2) == 2
    with pytest.raises(ValueError, match="devices=4 but this process sees only 2 cpu"):
        train_devices(maml5.replace(devices=4), omniglot, "cpu", 2)
    with pytest.raises(ValueError, match="devices=-1 must be >= 0"):
        train_devices(maml5.replace(devices=-1), omniglot, "cpu", 2)
