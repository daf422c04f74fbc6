"""Groups of agents split across devices: model parallelism for graphs too large for one device.

A :class:`AgentSharding` names, for some groups, one agent axis to split over the ``"agents"``
axis of a device mesh. :meth:`Program.shard_agents
<mplp_graph.runtime.program.Program.shard_agents>` attaches it to a program; the runtime then
constrains every field of those groups (``[B?, *agent_shape, *field_shape]``: the agent axis,
where the field is not stored once along it) to be split over the mesh after each feed and each
stage (:func:`constrain_state`), and XLA's SPMD partitioner partitions the kernels between them:
index-map einsums and broadcasts, gathers and segment sums of edge lists, with the collectives
they need (the compile report lists them). The results are those of the unsplit program.

The mesh may also have a ``"tasks"`` axis (the outer batch, :mod:`mplp_graph.meta.shard`):
``device_mesh(tasks, agents)``. docs/scaling.md is the user's guide.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mplp_graph.errors import CompileError
from mplp_graph.ir.layout import stored_shape
from mplp_graph.ir.spec import GraphSpec

AGENTS = "agents"
TASKS = "tasks"


def device_mesh(tasks: int = 1, agents: int | None = None, devices: Any = None) -> Mesh:
    """A ``("tasks", "agents")`` mesh over ``devices`` (default: every device of every
    process): ``tasks x agents`` must be their number; ``agents`` None: all that ``tasks``
    leaves."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    n = devices.size
    agents = n // tasks if agents is None else agents
    if tasks < 1 or agents < 1 or tasks * agents != n:
        raise CompileError(f"a mesh of {tasks} (tasks) x {agents} (agents) devices needs {tasks * agents} devices, there are {n}; "
                           "choose sizes whose product is the number of devices")
    return Mesh(devices.reshape(tasks, agents), (TASKS, AGENTS))


def sharding_problems(spec: GraphSpec, axes: Mapping[str, int], devices: int) -> list[tuple[str, str]]:
    """``(group, message)`` for each entry of ``{group: agent axis}`` that cannot be split over
    ``devices`` devices: an unknown group, an axis it does not have, a size that is not a
    multiple of ``devices``."""
    problems = []
    for g, axis in axes.items():
        if g not in spec.groups:
            problems.append((g, f"graph {spec.name!r} has no group {g!r}; its groups are {', '.join(spec.groups)}"))
            continue
        shape = spec.groups[g].shape
        if not isinstance(axis, int) or isinstance(axis, bool) or not 0 <= axis < len(shape):
            have = f"agent axes 0..{len(shape) - 1} (shape {list(shape)})" if shape else "no agent axes (a single agent)"
            problems.append((g, f"group {g!r} has {have}; found axis {axis!r}"))
            continue
        if shape[axis] % devices:
            problems.append((g, f"agent axis {axis} of group {g!r} has {shape[axis]} agents, not a multiple of the {devices} devices it would be "
                                f"split over; split another axis or use a device count that divides {shape[axis]}"))
    return problems


@dataclass(frozen=True, eq=False)
class AgentSharding:
    """Which agent axis of which group is split over the mesh's ``"agents"`` axis."""

    mesh: Mesh
    axes: tuple[tuple[str, int], ...]  # (group, agent axis), in the graph's group order

    @property
    def devices(self) -> int:
        return int(self.mesh.shape[AGENTS])

    def field_spec(self, spec: GraphSpec, group: str, field: str) -> PartitionSpec | None:
        """The partition of a stored field (None: the group is not split, or the field is
        stored once along the split axis)."""
        axis = dict(self.axes).get(group)
        if axis is None:
            return None
        grp = spec.groups[group]
        f = grp.state[field]
        if axis in f.constant_along:
            return None
        lead = 1 if f.batched else 0
        parts: list[Any] = [None] * len(stored_shape(grp, f, 1))
        parts[lead + axis] = AGENTS
        return PartitionSpec(*parts)

    def split_fields(self, spec: GraphSpec) -> dict[str, tuple[str, ...]]:
        """``{group: fields split}`` (fields stored once along the axis are replicated)."""
        return {g: tuple(f for f in spec.groups[g].state if self.field_spec(spec, g, f) is not None) for g, _ in self.axes}


def plan(spec: GraphSpec, mesh: Mesh, axes: Mapping[str, int]) -> AgentSharding:
    """An :class:`AgentSharding` of ``spec`` over ``mesh``'s ``"agents"`` axis; a
    :class:`CompileError` naming each group that cannot be split."""
    if AGENTS not in mesh.shape:
        raise CompileError(f"the mesh has axes {list(mesh.shape)}; splitting agents needs an {AGENTS!r} axis (partition.device_mesh)")
    problems = sharding_problems(spec, axes, int(mesh.shape[AGENTS]))
    if problems:
        raise CompileError("; ".join(f"shard {g}: {msg}" for g, msg in problems))
    return AgentSharding(mesh, tuple((g, axes[g]) for g in spec.groups if g in axes))


def constrain_state(spec: GraphSpec, sharding: AgentSharding | None, state: Any) -> Any:
    """``state`` with the fields of split groups constrained to their partition (inside a
    traced function: ``jax.lax.with_sharding_constraint``). Groups or fields absent from
    ``state`` (a carry) are left alone."""
    if sharding is None:
        return state
    out = dict(state)
    for g, _ in sharding.axes:
        if g not in state:
            continue
        fields = dict(state[g])
        for f, value in fields.items():
            p = sharding.field_spec(spec, g, f)
            if p is not None and np.ndim(value) == len(p):
                fields[f] = jax.lax.with_sharding_constraint(value, NamedSharding(sharding.mesh, p))
        out[g] = fields
    return out


def state_shardings(spec: GraphSpec, sharding: AgentSharding, state: Any) -> Any:
    """A tree of ``NamedSharding`` matching ``state`` (split fields split, the rest
    replicated): for ``jax.device_put`` of a state onto the mesh."""
    replicated = NamedSharding(sharding.mesh, PartitionSpec())
    return {
        g: {f: (NamedSharding(sharding.mesh, p) if (p := sharding.field_spec(spec, g, f)) is not None else replicated) for f in fs}
        for g, fs in state.items()
    }


COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def count_collectives(hlo_text: str) -> dict[str, int]:
    """How many of each cross-device operation a compiled program's HLO text holds (the async
    ``-start`` forms counted as one)."""
    import re

    return {op: len(re.findall(rf"\b{op}(?:-start)?\(", hlo_text)) for op in COLLECTIVES}
