"""Schedules: every phase becomes an ordered tuple of stages (tuples of arrow names).

A pure function of the IR, kept beside it because the verifier (a derivable order, no
conflicting writes), the printer and the compiler all need it.

Stage semantics: the arrows of one stage all read the state as it was when the stage began, and
their writes land together when it ends, so they are independent and may run in any order.

Derived order for a phase without an explicit one (topological forward, reverse backward, both
follow from the same rule): arrow A runs after arrow B when B sends messages ``into`` a field of
A's source group that A reads (read after write); A runs after B when B reads a field that A
overwrites through ``updates`` (write after read, so a learner reads the pre-update weight).
Arrows sending into the same field of the same group form one inbox and share a stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from mplp_graph.ir.spec import ArrowSpec, GraphSpec


class ScheduleError(ValueError):
    def __init__(self, where: str, message: str):
        self.where = where
        super().__init__(message)


@dataclass(frozen=True)
class Schedule:
    phases: dict[str, tuple[tuple[str, ...], ...]]
    step: tuple[str, ...]


def phase_names(graph: GraphSpec) -> list[str]:
    """Phases in first-use order (arrows, then explicit schedule entries)."""
    names: list[str] = []
    for a in graph.arrows:
        if a.phase not in names:
            names.append(a.phase)
    for p in graph.schedule.phases:
        if p not in names:
            names.append(p)
    return names


def default_step(graph: GraphSpec) -> tuple[str, ...]:
    names = phase_names(graph)
    head = [p for p in ("forward", "backward") if p in names]
    return tuple(head + [p for p in names if p not in head])


def _inbox(a: ArrowSpec) -> tuple[str, str] | None:
    return (a.dst, a.into) if a.into is not None else None


def dependency_graph(arrows: list[ArrowSpec]) -> nx.DiGraph:
    """Nodes are inboxes (arrows sharing a destination field) or single arrows."""
    node_of: dict[str, object] = {}
    for a in arrows:
        node_of[a.name] = ("inbox",) + _inbox(a) if a.into is not None else ("arrow", a.name)
    g = nx.DiGraph()
    for a in arrows:
        g.add_node(node_of[a.name])
        g.nodes[node_of[a.name]].setdefault("arrows", []).append(a.name)
    for a in arrows:
        reads = {(a.src, f) for f in a.inputs}
        for b in arrows:
            if node_of[a.name] == node_of[b.name]:
                continue
            # read after write: b's messages land in a field a reads
            if b.into is not None and (b.dst, b.into) in reads:
                g.add_edge(node_of[b.name], node_of[a.name])
            # write after read: b overwrites (updates) a field that a reads
            if any((b.src, f) in reads for f in b.updates):
                g.add_edge(node_of[a.name], node_of[b.name])
    return g


def derive_phase(graph: GraphSpec, phase: str) -> tuple[tuple[str, ...], ...]:
    arrows = [a for a in graph.arrows if a.phase == phase]
    g = dependency_graph(arrows)
    try:
        cycle = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        names = [" + ".join(g.nodes[u]["arrows"]) for u, _ in cycle]
        first = g.nodes[cycle[0][0]]["arrows"][0]
        index = next(k for k, a in enumerate(graph.arrows) if a.name == first)
        raise ScheduleError(
            f"arrows[{index}]",
            f"the arrows of phase {phase!r} form a cycle ({' -> '.join(names + names[:1])}), so no order can be "
            f"derived; give one explicitly under schedule.phases.{phase} as a list of stages",
        )
    order = {a.name: k for k, a in enumerate(graph.arrows)}
    stages = []
    for gen in nx.topological_generations(g):
        stage = sorted((n for node in gen for n in g.nodes[node]["arrows"]), key=order.__getitem__)
        stages.append(tuple(stage))
    return tuple(stages)


def build_schedule(graph: GraphSpec) -> Schedule:
    phases = {}
    for p in phase_names(graph):
        if p in graph.schedule.phases:
            phases[p] = tuple(tuple(s) for s in graph.schedule.phases[p])
        else:
            phases[p] = derive_phase(graph, p)
    step = graph.schedule.step or default_step(graph)
    return Schedule(phases, tuple(step))
