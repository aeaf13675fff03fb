"""Streamed episodes: drawn with the device sampler's own logic, gathered on the host from a real
memory-mapped file, equal to what the training step samples on the device for the same keys."""

from __future__ import annotations

import threading

import jax
import numpy as np
import pytest

from smallsample.augment import parse_pipeline
from smallsample.data.stream import (
    Gathered,
    assemble,
    gather,
    make_index_sampler,
    make_stream_sampler,
    should_stream,
    step_keys,
    stream_batches,
)
from smallsample.episodes import sample_episode
from smallsample.train.step import make_sampler


@pytest.fixture(scope="module")
def images():
    """uint8 [7, 9, 6, 6, 3]: every image different."""
    return np.random.default_rng(0).integers(0, 256, (7, 9, 6, 6, 3), dtype=np.uint8)


@pytest.fixture
def memmapped(tmp_path, images):
    path = tmp_path / "images.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=images.shape)
    out[:] = images
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def _assert_episodes_equal(a, b, atol=0.0):
    """Labels exactly; images as uint8 exactly (x * 255 rounded: XLA may divide by 255 or
    multiply by 1/255, one float32 ulp apart) and as floats within ``atol`` (augmented)."""
    for name, x, y in zip(a._fields, a, b, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.shape == y.shape and x.dtype == y.dtype, name
        if name.endswith("_y"):
            np.testing.assert_array_equal(x, y, err_msg=name)
            continue
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=atol, err_msg=name)
        if not atol:
            np.testing.assert_array_equal(np.rint(x * 255), np.rint(y * 255), err_msg=name)


@pytest.mark.parametrize("rotate,use", [(False, None), (True, 5), (False, 6)])
def test_same_episodes_as_the_device_sampler(images, rotate, use):
    keys = jax.random.split(jax.random.key(3), 12)
    draw = make_index_sampler(7, 9, ways=4, shots=2, queries=3, rotate=rotate, use=use)
    got = gather(images, draw(keys))
    assert got.x.shape == (12, 4, 5, 6, 6, 3) and got.x.dtype == np.uint8
    if not rotate:
        assert not got.turns.any()
    else:  # all four rotations occur in 48 classes
        assert set(got.turns.ravel().tolist()) == {0, 1, 2, 3}
    on_device = jax.numpy.asarray(images)
    want = jax.jit(jax.vmap(lambda k: sample_episode(k, on_device, ways=4, shots=2, queries=3,
                                                     rotate=rotate, per_class=use)))(keys)
    mine = jax.jit(jax.vmap(lambda x, t: assemble(x, t, shots=2, rotate=rotate)))(*got)
    _assert_episodes_equal(mine, want)
    if use is None:
        return
    # and one episode run op by op, unbatched
    _assert_episodes_equal(assemble(got.x[0], got.turns[0], shots=2, rotate=rotate),
                           sample_episode(keys[0], images, ways=4, shots=2, queries=3,
                                          rotate=rotate, per_class=use))


def test_every_class_and_example_is_reachable_and_episodes_are_valid():
    draw = make_index_sampler(6, 5, ways=3, shots=1, queries=2)
    idx = draw(jax.random.split(jax.random.key(0), 400))
    assert idx.classes.shape == (400, 3) and idx.examples.shape == (400, 3, 3)
    assert all(len(set(row)) == 3 for row in idx.classes.tolist())  # distinct classes
    assert all(len(set(row)) == 3 for row in idx.examples.reshape(-1, 3).tolist())
    pairs = {(c, e) for cs, es in zip(idx.classes, idx.examples, strict=True)
             for c, row in zip(cs, es, strict=True) for e in row}
    assert pairs == {(c, e) for c in range(6) for e in range(5)}
    # uniform over classes: each of the 6 is drawn 400 * 3 / 6 = 200 times, +- 5 sigma
    counts = np.bincount(idx.classes.ravel(), minlength=6)
    assert np.all(np.abs(counts - 200) < 5 * np.sqrt(200 * (1 - 1 / 6)))


def test_the_training_steps_episodes_from_a_memory_map(memmapped, images):
    """The stream's episodes for steps 20..23 of a run, through the stream sampler, equal what the
    training step's sampler draws from the array (augmentation and rotation included)."""
    assert isinstance(memmapped, np.memmap) and should_stream(memmapped)
    assert not should_stream(images) and should_stream(images, max_bytes=1000)
    run_key = jax.random.key_data(jax.random.key(11))
    augment = parse_pipeline("noise(std=0.05)")
    device = make_sampler(meta_batch=4, ways=3, shots=1, queries=2, rotate=True,
                          augment=augment)
    streamed = jax.jit(make_stream_sampler(shots=1, rotate=True, augment=augment))
    device = jax.jit(device)
    batches = stream_batches(memmapped, run_key, start_step=20, steps_per_call=2, meta_batch=4,
                             ways=3, shots=1, queries=2, rotate=True, stop_step=24)
    calls = list(batches)
    assert len(calls) == 2
    for c, call in enumerate(calls):
        assert call.x.shape == (2, 4, 3, 3, 6, 6, 3) and call.turns.shape == (2, 4, 3)
        assert isinstance(call.x, jax.Array) and call.x.dtype == np.uint8
        for s in range(2):
            step = 20 + 2 * c + s
            k_sample, _ = jax.random.split(jax.random.fold_in(jax.random.wrap_key_data(
                run_key), step))
            one = Gathered(call.x[s], call.turns[s])
            _assert_episodes_equal(streamed(k_sample, one), device(k_sample, images),
                                   atol=1e-6)


def test_a_resumed_stream_continues_where_it_was(memmapped):
    run_key = jax.random.key(5)
    opts = dict(steps_per_call=3, meta_batch=2, ways=2, shots=1, queries=1)
    whole = list(stream_batches(memmapped, run_key, start_step=0, stop_step=9, **opts))
    resumed = list(stream_batches(memmapped, run_key, start_step=6, stop_step=9, **opts))
    assert len(whole) == 3 and len(resumed) == 1
    np.testing.assert_array_equal(np.asarray(whole[2].x), np.asarray(resumed[0].x))
    assert not np.array_equal(np.asarray(whole[0].x), np.asarray(whole[1].x))
    keys = step_keys(jax.random.key_data(run_key), [6, 7], meta_batch=2)
    assert keys.shape == (2, 2)


def test_closing_the_stream_stops_its_thread(memmapped):
    stream = stream_batches(memmapped, jax.random.key(0), start_step=0, steps_per_call=2,
                            meta_batch=2, ways=2, shots=1, queries=1, prefetch=2)
    next(stream)
    assert any(t.name == "smallsample-episode-stream" for t in threading.enumerate())
    stream.close()
    assert not any(t.name == "smallsample-episode-stream" for t in threading.enumerate())


def test_errors_are_clear_and_raised_by_next(images):
    with pytest.raises(ValueError, match="ways=8 is more than the 7 classes"):
        make_index_sampler(7, 9, ways=8, shots=1, queries=1)
    with pytest.raises(ValueError, match="shots \\+ queries = 5 \\+ 5 = 10 is more than the 9"):
        make_index_sampler(7, 9, ways=2, shots=5, queries=5)
    with pytest.raises(ValueError, match="per_class=10 is more than the 9"):
        make_index_sampler(7, 9, ways=2, shots=1, queries=1, use=10)
    with pytest.raises(ValueError, match="steps_per_call=0"):
        next(stream_batches(images, jax.random.key(0), start_step=0, steps_per_call=0,
                            meta_batch=1, ways=2, shots=1, queries=1))
    with pytest.raises(ValueError, match="rotate=True needs square images"):
        assemble(images[:2, :2, :, :5], np.zeros(2, np.int32), shots=1, rotate=True)
    # an error in the background thread (here: examples JAX cannot hold) reaches next()
    odd = np.full((3, 4, 2), None, dtype=object)
    stream = stream_batches(odd, jax.random.key(0), start_step=0, steps_per_call=1,
                            meta_batch=1, ways=2, shots=1, queries=1)
    with pytest.raises(TypeError):
        next(stream)
