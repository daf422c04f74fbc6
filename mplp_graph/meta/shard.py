"""Data parallelism over tasks: the outer batch of a meta-step split across devices.

``MetaStep(..., mesh=task_mesh())`` places each task (and its prior) of the outer batch on one of
the mesh's devices and keeps the learner parameters replicated; XLA's SPMD partitioner then runs
the inner loops where their tasks live and all-reduces the meta-gradient (the mean over tasks).
The code is the same on 1 or N devices. On a CPU, several devices can be simulated with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (set before JAX starts); on several hosts,
call ``jax.distributed.initialize()`` first and build the mesh over ``jax.devices()``, which then
lists every host's devices.
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


def shard_tasks(mesh: Mesh, tree: Any) -> Any:
    """Constrain every leaf's leading (task) axis to be split over the mesh."""
    n = mesh.shape[AXIS]

    def constrain(x):
        if x.shape[0] % n:
            raise MplpGraphError(f"the outer batch ({x.shape[0]} tasks) must be a multiple of the number of devices ({n}); change meta.outer_batch or the mesh")
        spec = PartitionSpec(AXIS, *([None] * (x.ndim - 1)))
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    return jax.tree_util.tree_map(constrain, tree)


def replicate(mesh: Mesh, tree: Any) -> Any:
    """Put ``tree`` on every device of the mesh (learner parameters, optimizer state, pools)."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))
