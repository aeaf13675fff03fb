"""``smallsample bench``: the smoke run writes a complete JSON record (no timing assertions)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from smallsample import bench


def test_quick_run_writes_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    rc = bench.main(["--quick", "--only", "quick-maml", "--steps", "2", "--json", str(path)])
    assert rc == 0
    out = json.loads(path.read_text())
    env = out["environment"]
    for key in ("device_kind", "platform", "jax", "jaxlib", "device_count", "loadavg"):
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
    assert rec["conv_impl"] == bench.default_conv_impl()
    assert "quick-maml" in capsys.readouterr().out


def test_suite_lists_standard_workloads(capsys):
    assert bench.main(["--list"]) == 0
    text = capsys.readouterr().out
    for name in ("maml-omniglot-5w1s", "fomaml-omniglot-5w1s", "anil-omniglot-5w1s",
                 "maml-omniglot-20w1s", "protonet-omniglot-5w5s-b1",
                 "protonet-omniglot-5w5s-b32", "maml-mini-5w5s"):
        assert name in text
    w = bench.WORKLOADS["maml-omniglot-5w1s"]
    assert (w.image, w.ways, w.shots, w.queries, w.meta_batch, w.inner_steps) == \
        ((28, 28, 1), 5, 1, 15, 32, 1)


def test_unknown_workload_is_an_error():
    with pytest.raises(SystemExit):
        bench.main(["--only", "no-such-workload"])


def test_build_gives_data_of_the_workload_shape():
    w = bench.WORKLOADS["protonet-mini-5w5s"]
    _, _, data = bench.build(w)
    assert data.shape == (w.num_classes, w.per_class, 84, 84, 3) and data.dtype == np.uint8


def test_default_conv_impl_per_backend():
    assert bench.default_conv_impl("cpu") == "im2col"
    assert bench.default_conv_impl("gpu") == "xla"
    assert bench.default_conv_impl("tpu") == "xla"
