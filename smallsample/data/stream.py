"""Episodes gathered on the host from a (memory-mapped) class-indexed set, streamed to the device.

The device sampler (:func:`smallsample.episodes.sample_episode`, called by the training step)
needs the whole class-indexed array on the device. A set larger than the device's memory
(tieredImageNet at 84x84, which :mod:`smallsample.data.cache` memory-maps) is instead read here:
for each training call the episodes' classes and examples are drawn from the call's keys, only
those images are gathered from the array on the host (a memory map reads only their pages), and
one call's worth of episodes, ``[steps_per_call, meta_batch, ways, shots + queries, H, W, C]``
uint8, is put on the device by a background thread while the previous call runs.

Same episodes as the device sampler. The indices are drawn by
:func:`smallsample.episodes.sample_episode` itself, run (on the CPU) on a small probe array of
example numbers instead of the images: each example is a 2x2 int32 image holding its flat number
``class * per_class + example`` in one corner and -1 elsewhere, so the gather returns the numbers
of the drawn examples and a class's rotation moves the number to the corner that tells the number
of quarter turns. With the keys of the training step (:func:`step_keys`, which follows
:mod:`smallsample.train.step`: ``fold_in(run_key, step)``, then the sampler's splits), the
streamed meta-batch is the device sampler's, image for image, label for label, rotation for
rotation; :func:`make_stream_sampler` turns a gathered call back into the device sampler's
:class:`~smallsample.episodes.Episode` (float32 in [0, 1], rotated, augmented with the same keys),
so a run trained from the stream equals one trained from the array on the device and resumes at
any step the same way.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from smallsample.episodes import (
    Episode,
    augment_episodes,
    check_episode_request,
    rotate_class,
    sample_episode,
    to_float,
)

STREAM_BYTES = 2 << 30
"""Sets larger than this (2 GiB), or memory-mapped, are streamed by :func:`should_stream`."""


class Gathered(NamedTuple):
    """Episodes gathered on the host, before conversion (leading axes ``[...]``: e.g.
    ``[steps_per_call, meta_batch]``).

    Attributes:
      x: ``[..., ways, shots + queries, H, W, C]`` the examples as stored (uint8 images), class
        ``j`` of an episode gets label ``j``; the first ``shots`` of a class are its support.
      turns: int32 ``[..., ways]`` quarter turns (counter-clockwise) applied to each class on the
        device (all 0 without ``rotate``).
    """

    x: np.ndarray | jax.Array
    turns: np.ndarray | jax.Array


class Indices(NamedTuple):
    """What an episode draws. ``classes`` int32 ``[..., ways]``, ``examples`` int32
    ``[..., ways, shots + queries]`` (within the class), ``turns`` int32 ``[..., ways]``."""

    classes: np.ndarray
    examples: np.ndarray
    turns: np.ndarray


def should_stream(data, *, max_bytes: int = STREAM_BYTES) -> bool:
    """Whether the class-indexed ``data`` should be streamed rather than put on the device:
    a ``np.memmap`` (the caches memory-map sets over 1 GiB) or more than ``max_bytes``."""
    return isinstance(data, np.memmap) or int(np.asarray(data.shape).prod()) * np.dtype(
        data.dtype).itemsize > max_bytes


def _probe(num_classes: int, per_class: int) -> np.ndarray:
    """int32 ``[num_classes, per_class, 2, 2, 1]``: example ``(c, e)`` is ``c * per_class + e``
    in its top-left pixel, -1 in the three others."""
    probe = np.full((num_classes, per_class, 2, 2, 1), -1, np.int32)
    probe[:, :, 0, 0, 0] = np.arange(num_classes * per_class, dtype=np.int32).reshape(
        num_classes, per_class)
    return probe


def _corner_turns() -> np.ndarray:
    """int32 ``[2, 2]``: the quarter turns that move the top-left pixel to each corner, found by
    :func:`smallsample.episodes.rotate_class` itself."""
    table = np.full((2, 2), -1, np.int32)
    one = jnp.asarray(_probe(1, 1)[0])
    for k in range(4):
        where = np.argwhere(np.asarray(rotate_class(one, jnp.int32(k)))[0, :, :, 0] >= 0)[0]
        table[where[0], where[1]] = k
    return table


def make_index_sampler(num_classes: int, per_class: int, *, ways: int, shots: int, queries: int,
                       rotate: bool = False, use: int | None = None,
                       device: jax.Device | None = None) -> Callable[[jax.Array], Indices]:
    """``draw(keys) -> Indices``: the classes, examples and turns that
    ``sample_episode(key, data, ways=, shots=, queries=, rotate=, per_class=use)`` draws for each
    key of ``keys [n]`` from a set of ``[num_classes, per_class, ...]``, as NumPy arrays with a
    leading ``[n]`` axis.

    ``device``: where the drawing runs (default the first CPU device, leaving the accelerator to
    training; JAX's threefry keys give the same bits on every backend).

    Raises:
      ValueError: the episode cannot be drawn from the set (naming the numbers).
    """
    use = per_class if use is None else use
    if use > per_class:
        raise ValueError(f"per_class={use} is more than the {per_class} examples per class")
    check_episode_request(num_classes, use, ways=ways, shots=shots, queries=queries)
    device = device or jax.devices("cpu")[0]
    probe = jax.device_put(_probe(num_classes, per_class), device)
    table = jax.device_put(_corner_turns(), device)

    def one(key, probe):
        ep = sample_episode(key, probe, ways=ways, shots=shots, queries=queries, rotate=rotate,
                            per_class=use)
        x = jnp.concatenate([ep.support_x.reshape(ways, shots, 4),
                             ep.query_x.reshape(ways, queries, 4)], axis=1)
        flat = x.max(-1)  # [ways, shots + queries]: the one pixel that is not -1
        corner = jnp.argmax(x[:, 0], -1)  # [ways]: where a class's rotation put the number
        return flat // per_class, flat % per_class, table.reshape(-1)[corner]

    draw_jit = jax.jit(jax.vmap(one, in_axes=(0, None)))

    def draw(keys: jax.Array) -> Indices:
        flat_c, examples, turns = draw_jit(jax.device_put(keys, device), probe)
        classes = np.asarray(flat_c)[..., 0]
        return Indices(classes.astype(np.int32), np.asarray(examples, np.int32),
                       np.asarray(turns, np.int32))

    return draw


def gather(data: np.ndarray, indices: Indices) -> Gathered:
    """The drawn examples of ``data [num_classes, per_class, ...]`` on the host:
    ``x [..., ways, shots + queries, ...]`` (only these examples are read from a memory map)."""
    return Gathered(np.asarray(data[indices.classes[..., None], indices.examples]),
                    indices.turns)


def _is_typed_key(key) -> bool:
    dtype = getattr(key, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def step_keys(run_key: jax.Array, steps, *, meta_batch: int) -> jax.Array:
    """The episode keys ``[len(steps), meta_batch]`` of training steps ``steps``, as the training
    step derives them: ``fold_in(run_key, step)`` split into (sample, adapt); the sample key split
    into (episodes, augmentation) by the sampler; the episodes key split over the meta-batch.

    ``run_key``: a typed key or its raw ``uint32`` data (``TrainState.key``).
    """
    if not _is_typed_key(run_key):
        run_key = jax.random.wrap_key_data(jnp.asarray(run_key))

    def one(step):
        k_sample, _ = jax.random.split(jax.random.fold_in(run_key, step))
        k_episodes, _ = jax.random.split(k_sample)
        return jax.random.split(k_episodes, meta_batch)

    return jax.vmap(one)(jnp.asarray(steps, jnp.int32))  # the step counter is int32


def assemble(x: jax.Array, turns: jax.Array, *, shots: int, rotate: bool = False) -> Episode:
    """One gathered episode (``x [ways, shots + queries, ...]``, ``turns [ways]``) as the device
    sampler's :class:`~smallsample.episodes.Episode`: float32 in [0, 1] (from uint8), and with
    ``rotate`` each class turned by its ``turns`` (square images ``[..., H, H, C]`` only)."""
    ways, n = x.shape[:2]
    queries = n - shots
    x = to_float(jnp.asarray(x))
    if rotate:
        if x.ndim != 5 or x.shape[2] != x.shape[3]:
            raise ValueError(f"rotate=True needs square images [.., H, H, C], got {x.shape[2:]}")
        x = jax.vmap(rotate_class)(x, turns)
    labels = jnp.arange(ways, dtype=jnp.int32)
    return Episode(support_x=x[:, :shots].reshape((ways * shots,) + x.shape[2:]),
                   support_y=jnp.repeat(labels, shots),
                   query_x=x[:, shots:].reshape((ways * queries,) + x.shape[2:]),
                   query_y=jnp.repeat(labels, queries))


def make_stream_sampler(*, shots: int, rotate: bool = False,
                        augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None):
    """``sample(key, gathered) -> Episode [meta_batch, ...]``: the counterpart of
    ``smallsample.train.make_sampler`` for one step's gathered episodes
    (``Gathered(x [meta_batch, ways, shots + queries, ...], turns [meta_batch, ways])``).

    With the step's sample key and the episodes :func:`stream_batches` gathered for that step, it
    returns what ``make_sampler(...)(key, data)`` returns from the whole array: the augmentation
    key is split off ``key`` the same way, one key per image.
    """

    def sample(key, gathered: Gathered) -> Episode:
        _, k_aug = jax.random.split(key)
        episodes = jax.vmap(lambda x, t: assemble(x, t, shots=shots, rotate=rotate))(
            gathered.x, gathered.turns)
        return episodes if augment is None else augment_episodes(k_aug, episodes, augment)

    return sample


def stream_batches(data: np.ndarray, run_key: jax.Array, *, start_step: int, steps_per_call: int,
                   meta_batch: int, ways: int, shots: int, queries: int, rotate: bool = False,
                   per_class: int | None = None, stop_step: int | None = None,
                   prefetch: int = 1,
                   device: jax.Device | jax.sharding.Sharding | None = None) -> Iterator[Gathered]:
    """Yields, for each training call from ``start_step`` on, its episodes on ``device``:
    ``Gathered(x [steps_per_call, meta_batch, ways, shots + queries, ...], turns
    [steps_per_call, meta_batch, ways])``, drawn with the keys of :func:`step_keys` (so the same
    as the device sampler's for those steps) and gathered from ``data`` on the host.

    A background thread gathers and transfers the next ``prefetch`` calls while the current one
    trains, so at most ``prefetch + 2`` calls' episodes exist at once (the one training, the
    ones ready, the one being gathered). Ends at ``stop_step`` (default: never). An error while
    gathering (a file that cannot be read) is raised by the next ``next()``; closing the
    generator stops the thread.

    Args:
      data: class-indexed ``[num_classes, per_class, ...]``, usually a ``np.memmap``.
      run_key: the run's key (``TrainState.key``, raw ``uint32`` data, or a typed key).
      device: where the episodes go: a device (default: the first local device) or a sharding,
        e.g. ``NamedSharding(mesh, P(None, 'tasks'))`` to give each device of a task mesh its
        share of the meta-batch.
    """
    if steps_per_call < 1 or meta_batch < 1 or prefetch < 1:
        raise ValueError(f"steps_per_call={steps_per_call}, meta_batch={meta_batch} and "
                         f"prefetch={prefetch} must be >= 1")
    draw = make_index_sampler(data.shape[0], data.shape[1], ways=ways, shots=shots,
                              queries=queries, rotate=rotate, use=per_class)
    cpu = jax.devices("cpu")[0]
    run_key = jax.device_put(jax.random.key_data(run_key) if _is_typed_key(run_key)
                             else np.asarray(run_key), cpu)
    keys_of = jax.jit(lambda k, steps: step_keys(k, steps, meta_batch=meta_batch))
    device = device or jax.local_devices()[0]
    ready: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def produce():
        step = start_step
        try:
            while not stop.is_set() and (stop_step is None or step < stop_step):
                steps = jax.device_put(np.arange(step, step + steps_per_call, dtype=np.int32),
                                       cpu)
                keys = keys_of(run_key, steps)
                idx = draw(keys.reshape(-1))
                shape = (steps_per_call, meta_batch)
                host = gather(data, Indices(*(a.reshape(shape + a.shape[1:]) for a in idx)))
                item = jax.device_put(host, device)
                while not stop.is_set():
                    try:
                        ready.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                step += steps_per_call
        except BaseException as e:  # handed to the consumer, raised by its next()
            ready.put(e)
            return
        ready.put(None)

    worker = threading.Thread(target=produce, name="smallsample-episode-stream", daemon=True)
    worker.start()
    try:
        while True:
            item = ready.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                ready.get_nowait()
            except queue.Empty:
                pass
            worker.join(timeout=0.05)
