import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from smallsample.config import Config, make_config
from smallsample.episodes import sample_meta_batch
from smallsample.evaluate import mean_ci95
from smallsample.learners.protonet import protonet
from smallsample.models.conv4 import Conv4
from smallsample.train import (
    TrainState,
    default_chunks,
    init_state,
    load_checkpoint,
    load_params,
    make_sampler,
    make_train_step,
    meta_gradient,
    save_checkpoint,
    train_and_evaluate,
)

RNG = np.random.default_rng(0)
DATA = {"train": RNG.integers(0, 256, (10, 6, 8, 8, 1), dtype=np.uint8),
        "val": RNG.integers(0, 256, (6, 6, 8, 8, 1), dtype=np.uint8),
        "test": RNG.integers(0, 256, (6, 6, 8, 8, 1), dtype=np.uint8)}
# whole runs use the config's Conv-4 (four poolings): 16x16 pools to 1x1 (8x8 pooled to nothing,
# every logit 0, and a run that never moved passed its resume tests)
RUN_DATA = {k: np.repeat(np.repeat(v, 2, axis=2), 2, axis=3) for k, v in DATA.items()}
TINY = make_config(None, ["width=4", "ways=3", "shots=1", "queries=2", "train_queries=2",
                          "meta_batch=4", "steps=6", "steps_per_call=2", "log_every=2",
                          "eval_every=4", "checkpoint_every=2", "val_episodes=8",
                          "test_episodes=10", "image_size=16"])


def tiny_learner():
    return protonet(Conv4(width=4, blocks=2), 3)


def assert_leaves_close(ref, got, rtol):
    """Leaf by leaf, to ``rtol`` of the leaf's largest entry. An entry near zero beside large
    ones is the difference of large terms; in float32 the order of summation (chunks, and the
    kernels the CPU's instruction set picks) moves it by a few ulps of those terms, not of
    itself (a BatchNorm bias gradient of 0.0058 beside 0.89 moved by 2e-6 on AVX-512)."""
    chex.assert_trees_all_equal_structs(ref, got)
    for (path, r), g in zip(jax.tree_util.tree_leaves_with_path(ref), jax.tree.leaves(got),
                            strict=True):
        r, g = np.asarray(r), np.asarray(g)
        np.testing.assert_allclose(g, r, rtol=0, atol=rtol * np.abs(r).max(),
                                   err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_chunked_meta_gradient_equals_plain(dtype):
    learner = tiny_learner()
    with jax.enable_x64(dtype == "float64"):
        eps = sample_meta_batch(jax.random.key(0), jnp.asarray(DATA["train"]), batch=4, ways=3,
                                shots=1, queries=2)
        eps = jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating)
                           else a, eps)
        params = learner.init(jax.random.key(1), eps.support_x[0])
        assert jax.tree.leaves(params)[0].dtype == dtype
        key = jax.random.key(2)
        def grad_with(chunks):  # jitted: op by op, second-order MAML took ~50 s here
            return jax.jit(lambda p, e, k: meta_gradient(learner, p, e, k, chunks=chunks))(
                params, eps, key)

        plain = grad_with(1)
        # Chunking changes only the order of summation: float64 agrees to ~1e-15, float32 to
        # a few ulps of each leaf's largest entry (the default CPU lowering, oneDNN, is float32)
        tol = {"float32": (1e-5, 1e-4), "float64": (1e-12, 1e-11)}[dtype]
        # 2 chunks of 2 vmapped tasks; 4 chunks of one task (no vmap); the CPU default (= 4)
        for chunks in (2, 4, None):
            chunked = grad_with(chunks)
            assert_leaves_close(plain[:2], chunked[:2], tol[0])
            assert_leaves_close(plain[2], chunked[2], tol[1])
        assert jnp.abs(plain[2]["Conv_0"]["kernel"]).max() > 1e-4  # a non-trivial comparison
        with pytest.raises(ValueError, match="meta-batch 4 is not divisible into 3 chunks"):
            meta_gradient(learner, params, eps, key, chunks=3)


def test_default_chunks_per_backend():
    assert default_chunks(32, backend="cpu") == 32  # one task at a time (measured fastest)
    assert default_chunks(32, devices=8, backend="cpu") == 4  # one task per device per chunk
    assert default_chunks(12, devices=8, backend="cpu") == 1  # uneven: left to check_divisible
    assert default_chunks(32, backend="gpu") == default_chunks(32, backend="tpu") == 1


def test_step_traces_once_and_is_deterministic():
    learner = tiny_learner()
    opt = optax.adam(1e-3)
    sample = make_sampler(meta_batch=4, ways=3, shots=1, queries=2)
    step = make_train_step(learner, opt, sample, steps_per_call=2, batch=4)
    traced = chex.assert_max_traces(step, n=1)
    jitted = jax.jit(traced)
    data = jnp.asarray(DATA["train"])

    def run():
        state = init_state(learner, opt, jnp.zeros((2, 8, 8, 1)), seed=0)
        losses = []
        for _ in range(3):
            state, m = jitted(state, data)
            losses.append(np.asarray(m["loss"]))
        return state, np.concatenate(losses)

    s1, l1 = run()
    s2, l2 = run()  # second run: no retrace, identical numbers
    np.testing.assert_array_equal(l1, l2)
    chex.assert_trees_all_equal(s1.params, s2.params)
    assert int(s1.step) == 6 and l1.shape == (6,)


def test_checkpoint_round_trip_and_failed_write_keeps_the_old_file(tmp_path):
    learner = tiny_learner()
    opt = optax.adam(1e-3)
    state = init_state(learner, opt, jnp.zeros((2, 8, 8, 1)), seed=0)
    path = tmp_path / "checkpoint.msgpack"
    save_checkpoint(path, state)
    good = path.read_bytes()
    restored = load_checkpoint(path, state)
    chex.assert_trees_all_equal(restored, jax.device_get(state))
    bad = state._replace(params={"not": object()})  # cannot be serialised
    with pytest.raises(TypeError):
        save_checkpoint(path, bad)
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.msgpack"]
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="checkpoint .*checkpoint.msgpack is corrupt: its "
                                         "content does not match its checksum"):
        load_checkpoint(path, state)
    path.write_bytes(b"\x93\x01")  # a format-1 (bare msgpack) file that is not a state
    with pytest.raises(ValueError, match="checkpoint .*checkpoint.msgpack cannot be read"):
        load_checkpoint(path, state)


def test_train_writes_a_run_folder(tmp_path):
    train_and_evaluate(TINY, tmp_path / "run", progress=False, data=RUN_DATA, log=lambda s: None)
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert {"config.json", "metrics.jsonl", "checkpoint.msgpack", "results.json",
            "best.msgpack", "test_accuracies.npy"} <= set(names)
    assert Config.from_json((tmp_path / "run" / "config.json").read_text()) == TINY
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().split("\n")
             if x]
    assert [r["step"] for r in lines if "loss" in r] == [2, 4, 6]
    assert [r["step"] for r in lines if "val_accuracy" in r] == [4, 6]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["steps"] == 6 and res["test_episodes"] == 10
    accs = np.load(tmp_path / "run" / "test_accuracies.npy")
    assert res["test_accuracy"] == pytest.approx(mean_ci95(accs).mean)
    with pytest.raises(FileExistsError, match="already holds a run"):
        train_and_evaluate(TINY, tmp_path / "run", progress=False, data=RUN_DATA)


def test_a_run_saved_before_conv_bias_existed_resumes_with_its_biases(tmp_path):
    run = tmp_path / "old"
    train_and_evaluate(TINY.replace(steps=2, conv_bias=True), run, progress=False, data=RUN_DATA,
          log=lambda s: None)
    saved = json.loads((run / "config.json").read_text())
    del saved["conv_bias"]  # as written by a version without the setting
    (run / "config.json").write_text(json.dumps(saved))
    saved = Config.from_json((run / "config.json").read_text())
    out = train_and_evaluate(saved.replace(steps=4), run, resume=True, progress=False,
                             data=RUN_DATA, log=lambda s: None)
    assert out.steps == 4
    assert Config.from_json((run / "config.json").read_text()).conv_bias is True
    params = load_params(run / "checkpoint.msgpack")
    assert "bias" in params["Conv_0"]


def test_resume_continues_exactly(tmp_path):
    full = train_and_evaluate(TINY, tmp_path / "full", progress=False, data=RUN_DATA,
                              log=lambda s: None)
    train_and_evaluate(TINY.replace(steps=2), tmp_path / "split", progress=False, data=RUN_DATA,
          log=lambda s: None)
    resumed = train_and_evaluate(TINY, tmp_path / "split", resume=True, progress=False,
                                 data=RUN_DATA, log=lambda s: None)
    assert resumed.steps == full.steps == 6
    template = init_state(tiny_learner(), optax.adam(1e-3), jnp.zeros((2, 8, 8, 1)), 0)
    a = load_checkpoint(tmp_path / "full" / "checkpoint.msgpack", template)
    b = load_checkpoint(tmp_path / "split" / "checkpoint.msgpack", template)
    chex.assert_trees_all_close(a.params, b.params, rtol=1e-6)
    losses = lambda d: [json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text()
                        .split("\n") if x and "loss" in x]
    np.testing.assert_allclose(losses(tmp_path / "full"), losses(tmp_path / "split"), rtol=1e-6)
    assert np.ptp(losses(tmp_path / "full")) > 1e-3  # the run trains


def test_augmentation_runs_inside_the_step():
    from smallsample.augment import parse_pipeline

    pipeline = parse_pipeline("rotate(max_degrees=30),noise(std=0.1)")
    plain = make_sampler(meta_batch=2, ways=3, shots=1, queries=2)
    augmented = make_sampler(meta_batch=2, ways=3, shots=1, queries=2, augment=pipeline)
    key = jax.random.key(0)
    data = jnp.asarray(DATA["train"])
    a, b = jax.jit(plain)(key, data), jax.jit(augmented)(key, data)
    assert a.support_x.shape == b.support_x.shape and a.query_x.shape == b.query_x.shape
    np.testing.assert_array_equal(a.support_y, b.support_y)  # same tasks, other pixels
    assert not np.allclose(a.support_x, b.support_x)
    # each image gets its own draw: two identical inputs come out different
    twin = jnp.broadcast_to(data[:1, :1], (10, 6, 8, 8, 1))
    c = jax.jit(augmented)(key, twin)
    assert not np.allclose(c.support_x[0, 0], c.support_x[0, 1])


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="unknown setting 'stepz'"):
        make_config(None, ["stepz=3"])
    with pytest.raises(ValueError, match="setting steps='x': expected a int"):
        make_config(None, ["steps=x"])
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        make_config("nope")


def test_non_finite_loss_stops_the_run_and_is_never_checkpointed(tmp_path):
    """MAML at lr=1e30: the first step's update sends the head's weights past float32, so the
    second step's loss is not finite; the run stops naming the step, before its first
    checkpoint is written (it used to be written before the deferred check)."""
    cfg = TINY.replace(learner="maml", backbone="conv4-stride", meta_batch=2, lr=1e30, steps=8,
                       eval_every=8, checkpoint_every=2, log_every=2)
    with pytest.raises(FloatingPointError, match="non-finite in the 2 steps up to step 2"):
        train_and_evaluate(cfg, tmp_path / "nan", progress=False, data=RUN_DATA, log=lambda s: None)
    assert not (tmp_path / "nan" / "checkpoint.msgpack").exists()


def test_resume_refuses_a_change_that_would_change_the_run(tmp_path):
    run = tmp_path / "run"
    train_and_evaluate(TINY.replace(steps=2), run, progress=False, data=RUN_DATA,
                       log=lambda s: None)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(ValueError, match=r"cannot change lr \(0.001 -> 0.5\) when resuming"):
        train_and_evaluate(TINY.replace(lr=0.5), run, resume=True, progress=False, data=RUN_DATA)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    out = train_and_evaluate(TINY.replace(steps=4, val_episodes=4), run, resume=True,
                             progress=False, data=RUN_DATA, log=lambda s: None)
    assert out.steps == 4 and len(out.val.accuracies) == 4


def test_trainstate_is_a_pytree():
    s = TrainState(jnp.zeros(()), {"w": jnp.ones(2)}, (), jnp.zeros(2, jnp.uint32))
    assert len(jax.tree.leaves(s)) == 3



@pytest.mark.parametrize("name", ["protonet", "maml", "fomaml", "anil", "metasgd", "reptile",
                                  "imaml", "matching", "r2d2", "baseline", "baseline++"])
def test_every_learner_trains_and_evaluates_through_one_loop(name, tmp_path):
    from smallsample.cli import _restore  # noqa: PLC0415

    cfg = TINY.replace(learner=name, backbone="conv4-stride", steps=2, eval_every=2,
                       checkpoint_every=2, val_part="", test_episodes=4, meta_batch=2,
                       inner_lr=0.1, pretrain_batch=8)
    result = train_and_evaluate(cfg, tmp_path / name, progress=False, data=RUN_DATA,
                                log=lambda s: None)
    assert result.steps == 2 and len(result.test.accuracies) == 4
    learner, params, which = _restore(tmp_path / name, cfg, 3)
    assert which == "checkpoint.msgpack"
    assert jax.tree.leaves(params)
