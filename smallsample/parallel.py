"""Data parallelism over tasks: a one-axis device mesh and sharding of the meta-batch.

The meta-batch axis of the sampled episodes is constrained to be split over the mesh axis
``'tasks'``; parameters, optimiser state and the class-indexed data are replicated. XLA's SPMD
partitioner then runs each device's share of tasks locally and all-reduces the meta-gradient.
Over several hosts, call :func:`initialize_distributed` first in every process; the mesh then spans
every process's devices (``jax.devices()`` is global).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "tasks"


def task_mesh(devices=None) -> Mesh:
    """A one-axis mesh named ``'tasks'`` over ``devices`` (default: all devices, all hosts)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def by_task(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(AXIS))


def shard_tasks(tree, mesh: Mesh | None):
    """Inside ``jit``: constrain the leading (task) axis of every leaf to be split over the mesh."""
    if mesh is None:
        return tree
    return jax.lax.with_sharding_constraint(tree, by_task(mesh))


def check_divisible(batch: int, mesh: Mesh | None) -> None:
    if mesh is not None and batch % mesh.size:
        raise ValueError(f"meta-batch {batch} does not split evenly over {mesh.size} devices")


def split_devices(batch: int, devices: int) -> int:
    """The most devices, at most ``devices``, over which a meta-batch of ``batch`` splits evenly."""
    if batch < 1 or devices < 1:
        raise ValueError(f"meta-batch {batch} and devices {devices} must be >= 1")
    return max(d for d in range(1, min(batch, devices) + 1) if batch % d == 0)


#: ``auto_devices``: on CPU the meta-batch is split over the CPU devices only when a task's episode
#: holds at most this many input values (:func:`episode_values`): a small task's chain of small
#: operations leaves a core idle that a second task fills, while a large task's operations are
#: split over the cores already (docs/performance.md, "one cpu device per core").
SPLIT_MAX_TASK_VALUES = 100_000


def episode_values(ways: int, shots: int, queries: int, image_shape) -> int:
    """Input values in one task's episode: ``ways x (shots + queries) x H x W x C``."""
    return ways * (shots + queries) * int(np.prod(image_shape))


def auto_devices(batch: int, task_values: int, available: int, backend: str) -> int:
    """The devices ``devices=0`` (auto) splits a meta-batch of ``batch`` tasks over, out of
    ``available``: on CPU all that divide it (:func:`split_devices`) when a task's episode holds
    at most :data:`SPLIT_MAX_TASK_VALUES` input values, else 1; on accelerators 1 (a device's
    share of a vmapped meta-batch; ask for more explicitly)."""
    if backend != "cpu" or task_values > SPLIT_MAX_TASK_VALUES:
        return 1
    return split_devices(batch, available)


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Multi-host start-up through ``jax.distributed.initialize``.

    With no arguments JAX reads the cluster from the environment (SLURM, Cloud TPU, ...); else pass
    the coordinator ``host:port``, the number of processes and this process's id. Call it once per
    process before any other JAX call.
    """
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
