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


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Multi-host start-up through ``jax.distributed.initialize``.

    With no arguments JAX reads the cluster from the environment (SLURM, Cloud TPU, ...); else pass
    the coordinator ``host:port``, the number of processes and this process's id. Call it once per
    process before any other JAX call.
    """
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
