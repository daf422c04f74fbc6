"""Pass: group arrows into kernels. Within a stage, arrows with the same share key become one
kernel (one op call over all their agents); every other arrow is a kernel of its own."""

from __future__ import annotations

from mplp_graph.compile.lower import Kernel
from mplp_graph.ir.resolve import ArrowPlan
from mplp_graph.ir.schedule import Schedule


def group_stage(plans: dict[str, ArrowPlan], stage: tuple[str, ...]) -> tuple[Kernel, ...]:
    kernels: list[Kernel] = []
    by_share: dict[str, int] = {}
    for name in stage:
        plan = plans[name]
        if plan.share is not None and plan.share in by_share:
            k = by_share[plan.share]
            kernels[k] = Kernel(plan.share, kernels[k].arrows + (plan,))
            continue
        if plan.share is not None:
            by_share[plan.share] = len(kernels)
        kernels.append(Kernel(plan.share, (plan,)))
    return tuple(kernels)


def group_kernels(plans: tuple[ArrowPlan, ...], schedule: Schedule) -> dict[str, tuple[tuple[Kernel, ...], ...]]:
    by_name = {p.name: p for p in plans}
    return {phase: tuple(group_stage(by_name, s) for s in stages) for phase, stages in schedule.phases.items()}
