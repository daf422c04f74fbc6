"""Grid template: a 2-D grid of cell agents with neighbour arrows, a cellular automaton in the
style of Neural CA (Mordvintsev et al. 2020, cited by the paper as a special case of a locally
connected graph of agents). No loss and no backward phase: a step is a local rule.

One group ``cell`` of shape ``[height, width]`` (agent ``(r, c)`` has flat index
``r * width + c``) with per-example fields ``s`` (the cell's state) and ``n`` (what it sensed).
Two phases, each one arrow. A full grid is wired by a stencil (a named neighbourhood with the
boundary rule ``wrap`` or ``none``; mplp_graph/ir/stencil.py), lowered to shifted copies of the
state; a grid with holes (``mask`` removes cells: no edge reaches or leaves them) is irregular
and wired by explicit edge lists:

* ``sense``: every present cell sends ``s`` to its neighbours (Moore: 8, von Neumann: 4),
  aggregated into ``n`` (``sum``: the number of live neighbours for ``life``; ``mean`` for
  ``diffuse``);
* ``update``: every present cell applies the rule to ``(s, n)`` and writes the result back into
  its own ``s`` (a reflexive edge per present cell; absent cells receive nothing, so an update
  sets them to 0: start them at 0).

Rules: ``life`` (Conway's Game of Life, op ``life``, not differentiable) and ``diffuse``
(``s <- s + rate (n - s)``, op ``mix``). ``fire < 1`` makes the update asynchronous: each cell
applies it with probability ``fire`` per step (``schedule.random``; the draws come from the
counter ``clock.t``). ``rounds`` repeats ``[sense, update]`` that many times per step.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from mplp_graph.ir.spec import ArrowSpec, FieldSpec, GraphSpec, GroupSpec, OpRef, RandomSpec, ScheduleSpec, StencilSpec

RULES = ("life", "diffuse")
NEIGHBOURHOODS = {
    "moore": ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)),
    "von_neumann": ((-1, 0), (0, -1), (0, 1), (1, 0)),
}


def neighbour_edges(
    height: int, width: int, neighbourhood: str = "moore", mask: np.ndarray | None = None, wrap: bool = False
) -> tuple[tuple[int, int], ...]:
    """``(source, destination)`` flat indices: every present cell to each present neighbour."""
    present = np.ones((height, width), bool) if mask is None else np.asarray(mask, bool)
    edges = []
    for r in range(height):
        for c in range(width):
            if not present[r, c]:
                continue
            for dr, dc in NEIGHBOURHOODS[neighbourhood]:
                rr, cc = r + dr, c + dc
                if wrap:
                    rr, cc = rr % height, cc % width
                elif not (0 <= rr < height and 0 <= cc < width):
                    continue
                if present[rr, cc]:
                    edges.append((r * width + c, rr * width + cc))
    return tuple(edges)


def grid(
    height: int,
    width: int,
    *,
    rule: Literal["life", "diffuse"] = "life",
    neighbourhood: Literal["moore", "von_neumann"] = "moore",
    mask: np.ndarray | None = None,
    wrap: bool = False,
    fire: float = 1.0,
    rate: float = 0.5,
    rounds: int = 1,
    name: str | None = None,
) -> GraphSpec:
    """A ``height x width`` cellular automaton (module docstring)."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if neighbourhood not in NEIGHBOURHOODS:
        raise ValueError(f"neighbourhood must be one of {sorted(NEIGHBOURHOODS)}, got {neighbourhood!r}")
    if wrap and min(height, width) < 3:
        raise ValueError(f"a wrapped grid needs at least 3 x 3 cells (or a neighbour would be counted twice), got {height} x {width}")
    if mask is not None and np.shape(mask) != (height, width):
        raise ValueError(f"mask must have shape ({height}, {width}), got {np.shape(mask)}")
    if not 0 < fire <= 1 or rounds < 1:
        raise ValueError(f"fire must be in (0, 1] and rounds >= 1, got fire={fire}, rounds={rounds}")
    present = np.ones((height, width), bool) if mask is None else np.asarray(mask, bool)
    keep = tuple((k, k) for k in np.flatnonzero(present.ravel()).tolist())
    b = FieldSpec(batched=True)
    groups = {"cell": GroupSpec(kind="cell", shape=(height, width), state={"s": b, "n": b})}
    if rule == "life":
        update = OpRef(name="life")
        aggregate = "sum"
    else:
        update = OpRef(name="mix", args={"rate": rate})
        aggregate = "mean"
    if mask is None:  # a full grid: structured connectivity, no edge list
        sense = {"stencil": StencilSpec(offsets=neighbourhood, boundary="wrap" if wrap else "none")}
        own: dict = {}  # identity map: every cell updates itself
    else:
        sense = {"edges": neighbour_edges(height, width, neighbourhood, mask, wrap)}
        own = {"edges": keep}
    arrows = (
        ArrowSpec(name="sense", src="cell", dst="cell", phase="sense", op=OpRef(name="identity"), inputs=("s",),
                  aggregate=aggregate, into="n", **sense),
        ArrowSpec(name="update", src="cell", dst="cell", phase="update", op=update, inputs=("s", "n"), into="s", **own),
    )
    schedule = ScheduleSpec(step=("sense", "update") * rounds)
    if fire < 1.0:
        groups["clock"] = GroupSpec(kind="clock", state={"t": FieldSpec(dtype="int32")})
        schedule = schedule.model_copy(update={"random": {"update": RandomSpec(fire=fire)}, "rng": "clock.t"})
    holes = int((~present).sum())
    return GraphSpec(
        name=name or f"grid_{height}x{width}_{rule}",
        description=f"{height} x {width} grid of cells ({holes} masked out{', wrapped' if wrap else ''}), {neighbourhood} neighbours, "
        f"rule {rule}" + (f", asynchronous (each cell updates with p={fire:g})" if fire < 1 else ""),
        groups=groups,
        arrows=arrows,
        schedule=schedule,
        outputs={"s": "cell.s"},
    )
