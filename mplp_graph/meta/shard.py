"""Data parallelism over tasks: the outer batch of a meta-step split across devices.

``MetaStep(..., mesh=task_mesh())`` places each task (and its prior) of the outer batch on one of
the mesh's devices and keeps the learner parameters replicated; XLA's SPMD partitioner then runs
the inner loops where their tasks live and all-reduces the meta-gradient (the mean over tasks).
The code is the same on 1 or N devices. On a CPU, several devices can be simulated with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (set before JAX starts). In a job of
several processes (:mod:`mplp_graph.distributed`, docs/scaling.md) ``jax.devices()`` lists every
process's devices, so the same mesh splits the outer batch across processes and hosts;
:func:`replicate` then gives every process process 0's values.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mplp_graph.errors import MplpGraphError

AXIS = "tasks"


def task_mesh(devices: Any = None) -> Mesh:
    """A one-axis mesh named ``"tasks"`` over ``devices`` (default: all of them)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (AXIS,))


def divisibility_problem(outer_batch: int, mesh_or_devices: Any) -> str | None:
    """Why ``outer_batch`` tasks cannot be split evenly over the mesh's ``"tasks"`` axis (or a
    number of devices); None when they can."""
    n = mesh_or_devices.shape[AXIS] if isinstance(mesh_or_devices, Mesh) else int(mesh_or_devices)
    if outer_batch % n:
        lower, upper = outer_batch - outer_batch % n, outer_batch + n - outer_batch % n
        return (f"the outer batch ({outer_batch} tasks) must be a multiple of the number of devices it is split over ({n}, all processes "
                f"together): use {lower or upper} or {upper}")
    return None


def shard_tasks(mesh: Mesh, tree: Any) -> Any:
    """Constrain every leaf's leading (task) axis to be split over the mesh."""
    n = mesh.shape[AXIS]

    def constrain(x):
        problem = divisibility_problem(x.shape[0], n)
        if problem:
            raise MplpGraphError(problem + " (meta.outer_batch)")
        spec = PartitionSpec(AXIS, *([None] * (x.ndim - 1)))
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    return jax.tree_util.tree_map(constrain, tree)


def replicate(mesh: Mesh, tree: Any) -> Any:
    """Put ``tree`` on every device of the mesh (learner parameters, optimizer state, pools).
    In a job of several processes, every process gets process 0's values (broadcast), so all
    start from the same parameters even when each computed or read its own."""
    sharding = NamedSharding(mesh, PartitionSpec())
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    from jax.experimental import multihost_utils

    host = multihost_utils.broadcast_one_to_all(jax.device_get(tree))
    return jax.device_put(host, sharding)


def broadcast(tree: Any) -> Any:
    """Process 0's values of a tree of host values (numpy), on every process; the tree itself
    with a single process."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    return multihost_utils.broadcast_one_to_all(tree)


def split_leading(mesh: Mesh, tree: Any) -> Any:
    """Global arrays with every leaf's leading axis (a sweep's runs) split over the mesh's
    ``"tasks"`` axis; in a job of several processes, process 0's values (each process places
    the pieces its devices hold)."""
    host = broadcast(jax.device_get(tree))

    def place(x):
        x = np.asarray(x)
        sharding = NamedSharding(mesh, PartitionSpec(AXIS, *([None] * (x.ndim - 1))))
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree_util.tree_map(place, host)


def gather(tree: Any) -> Any:
    """Whole host (numpy) copies of arrays that may be split across processes; in a job of
    several processes every process must call it (a collective operation)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
