"""Pass: liveness. Which fields must survive from one step to the next?

A field is *step-local* when every step overwrites it before reading it: the batch fields fed
at the start of a step, the forward inputs stored by the forward phase, the messages of the
backward phase. Only the other, *persistent*, fields (weights, biases, recurrent carries) need
to be carried between steps; :meth:`Program.step_carry` carries just those, which keeps the
state of a ``lax.scan`` over steps small (fewer buffers, fewer copies).

Custom schedules: writes in a phase with ``schedule.random`` ``fire < 1`` are partial (agents
that do not fire keep their old value) and do not count as overwrites; in a shuffled phase any
read may come before any write.
"""

from __future__ import annotations

from mplp_graph.ir.schedule import Schedule
from mplp_graph.ir.spec import GraphSpec


def persistent_fields(spec: GraphSpec, schedule: Schedule) -> frozenset[tuple[str, str]]:
    """Fields read (by an arrow, or as an output) before any write in one step."""
    arrows = {a.name: a for a in spec.arrows}
    written: set[tuple[str, str]] = set()
    for ref in spec.inputs.values():
        written.add(tuple(ref.split(".", 1)))  # the batch is written first
    persistent: set[tuple[str, str]] = set()
    for phase in schedule.step:
        rand = spec.schedule.random.get(phase)
        stages = schedule.phases[phase]
        if rand is not None and rand.order == "shuffle":
            stages = (tuple(n for s in stages for n in s),)  # any order: every read may come first
        for stage in stages:
            # all arrows of a stage read the state as it was when the stage began
            for name in stage:
                a = arrows[name]
                for f in a.inputs:
                    if (a.src, f) not in written:
                        persistent.add((a.src, f))
            if rand is not None and rand.fire < 1.0:
                continue  # a partial write (only firing agents) keeps the old values elsewhere
            for name in stage:
                a = arrows[name]
                written.update((a.src, f) for f in a.updates)
                if a.into is not None:
                    written.add((a.dst, a.into))
    # outputs are read at the end of the step; fields never written keep their value
    for ref in spec.outputs.values():
        g, f = ref.split(".", 1)
        if (g, f) not in written:
            persistent.add((g, f))
    for g, grp in spec.groups.items():
        for f in grp.state:
            if (g, f) not in written:
                persistent.add((g, f))
    return frozenset(persistent)
