"""Pass: group arrows into kernels. Within a stage, arrows with the same share key become one
kernel (one op call over all their agents); every other arrow is a kernel of its own.

A kernel is static data; the runtime (:mod:`mplp_graph.runtime.lower`) runs it. Which lowering
a kernel gets is decided from static facts alone (:func:`can_fuse_bilinear`), so the compile
report can name it without running anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from mplp_graph.ir.resolve import ArrowPlan
from mplp_graph.ir.schedule import Schedule


@dataclass(frozen=True)
class Kernel:
    """One op call: the arrows (>= 1) of a stage that share a share key."""

    share: str | None
    arrows: tuple[ArrowPlan, ...]

    @property
    def op(self):
        return self.arrows[0].op


def can_fuse_bilinear(a: ArrowPlan) -> bool:
    """Does a one-arrow kernel run as one einsum (a bilinear op with scalar features under
    sum/mean, fused with its reduction) instead of a broadcast product and a reduction?"""
    return (
        a.op.bilinear
        and a.spec.aggregate in ("sum", "mean")
        and a.conn.index_map is not None
        and all(f == (1,) for f in a.in_features)
        and not a.spec.updates
    )


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
