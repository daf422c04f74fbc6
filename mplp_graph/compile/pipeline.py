"""compile_spec(): the passes, one line each. The result is static data; running it is the
runtime's business (:class:`mplp_graph.runtime.program.Program`, made by ``compile_graph``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mplp_graph.compile.group import Kernel, group_kernels
from mplp_graph.compile.liveness import persistent_fields
from mplp_graph.ir.resolve import ArrowPlan, resolve
from mplp_graph.ir.schedule import Schedule, build_schedule
from mplp_graph.ir.spec import GraphSpec
from mplp_graph.ir.verify import ensure_verified


@dataclass(frozen=True, eq=False)
class CompiledGraph:
    """What the compiler made of a graph: plans, schedule, kernels and liveness, no behaviour.
    Static data, hashable by identity (so it can be a static argument of ``jax.jit``)."""

    spec: GraphSpec
    plans: tuple[ArrowPlan, ...]
    schedule: Schedule
    phases: dict[str, tuple[tuple[Kernel, ...], ...]]
    persistent: frozenset[tuple[str, str]]  # (group, field) pairs that live from step to step
    # groups split across devices (mplp_graph.compile.partition.AgentSharding); None: not split
    partition: Any = None

    @property
    def step_phases(self) -> tuple[str, ...]:
        return self.schedule.step


def compile_spec(spec: GraphSpec) -> CompiledGraph:
    spec = ensure_verified(spec)  # rules, one function each (ir/verify.py); once per spec
    plans = resolve(spec)  # shapes, batch flags, constant axes, connectivity per arrow
    schedule = build_schedule(spec)  # phases -> ordered stages
    phases = group_kernels(plans, schedule)  # stages -> kernels (arrows sharing a key fused)
    persistent = persistent_fields(spec, schedule)  # fields that live from step to step
    return CompiledGraph(spec, plans, schedule, phases, persistent)  # lowering happens when a phase is traced
