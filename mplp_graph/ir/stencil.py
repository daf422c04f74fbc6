"""Stencils: structured neighbourhoods on grids (Neural Cellular Automata, Mordvintsev et al.,
"Growing Neural Cellular Automata", Distill 2020, which the paper cites as a locally connected
graph of agents). Destination agent ``d`` receives the message of source agent ``d + o`` for
every offset ``o``, optionally weighted (a depthwise correlation, as a convolution layer
computes it). The runtime lowers a stencil to shifted copies of the message tensor added
together (mplp_graph/runtime/route.py), never to an edge list.

This module resolves a :class:`~mplp_graph.ir.spec.StencilSpec` against a group shape (named
neighbourhoods, checks with messages that say what to fix) and gives the agent-level view used
by the reference interpreter and the drawings (:func:`neighbours`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from mplp_graph.ir.spec import StencilSpec

_MOORE = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
_SQUARE = tuple((r, c) for r in (-1, 0, 1) for c in (-1, 0, 1))
# Sobel filters as in the Growing NCA article: outer([1, 2, 1], [-1, 0, 1]) / 8 (x: along
# columns) and its transpose (y: along rows); weights in the order of _SQUARE.
_SOBEL_X = tuple(float(a * b) / 8.0 for a in (1, 2, 1) for b in (-1, 0, 1))
_SOBEL_Y = tuple(float(a * b) / 8.0 for a in (-1, 0, 1) for b in (1, 2, 1))

NEIGHBOURHOODS: dict[str, tuple[tuple[tuple[int, int], ...], tuple[float, ...] | None]] = {
    "moore": (_MOORE, None),  # the 8 neighbours
    "von_neumann": (((-1, 0), (0, -1), (0, 1), (1, 0)), None),  # the 4 neighbours
    "moore9": (_SQUARE, None),  # the 3 x 3 square, the cell itself included
    "sobel_x": (_SQUARE, _SOBEL_X),
    "sobel_y": (_SQUARE, _SOBEL_Y),
    "laplacian": (((-1, 0), (0, -1), (0, 0), (0, 1), (1, 0)), (1.0, 1.0, -4.0, 1.0, 1.0)),
}


class StencilError(ValueError):
    """A stencil that does not fit its groups; ``where`` is the YAML path suffix."""

    def __init__(self, where: str, message: str):
        self.where = where
        super().__init__(message)


@dataclass(frozen=True)
class Stencil:
    """A resolved stencil: ``offsets`` (K, rank) ints, ``weights`` K floats or None, ``boundary``."""

    offsets: tuple[tuple[int, ...], ...]
    weights: tuple[float, ...] | None
    boundary: str

    def source(self, d: tuple[int, ...], o: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """The source agent whose message ``d`` receives through offset ``o`` (clamped or wrapped
        by the boundary); None where it reads zero (``zero``) or nothing (``none``)."""
        s = tuple(di + oi for di, oi in zip(d, o))
        if all(0 <= si < n for si, n in zip(s, shape)):
            return s
        if self.boundary == "wrap":
            return tuple(si % n for si, n in zip(s, shape))
        if self.boundary == "clamp":
            return tuple(min(max(si, 0), n - 1) for si, n in zip(s, shape))
        return None

    def counts(self, shape: tuple[int, ...]) -> np.ndarray:
        """Messages arriving at each agent: len(offsets) everywhere, except with ``none``, where
        only offsets that stay inside the grid count."""
        if self.boundary != "none":
            return np.full(shape, float(len(self.offsets)), np.float32)
        count = np.zeros(shape, np.float32)
        for o in self.offsets:
            inside = np.ones(shape, bool)
            for ax, (oi, n) in enumerate(zip(o, shape)):
                idx = np.arange(n) + oi
                ok = (idx >= 0) & (idx < n)
                inside &= ok.reshape([-1 if k == ax else 1 for k in range(len(shape))])
            count += inside
        return count


def neighbours(stencil: Stencil, shape: tuple[int, ...], zeros: bool = False) -> Iterator[tuple[tuple[int, ...] | None, tuple[int, ...], float]]:
    """Every (source agent, destination agent, weight) of the stencil; ``zero``/``none``
    boundaries send nothing from outside the grid, except that ``zeros=True`` yields the
    ``zero`` boundary's zero messages with source ``None`` (they count in a ``mean``)."""
    weights = stencil.weights or (1.0,) * len(stencil.offsets)
    for d in np.ndindex(*shape):
        for o, w in zip(stencil.offsets, weights):
            s = stencil.source(d, o, shape)
            if s is not None or (zeros and stencil.boundary == "zero"):
                yield s, d, w


def resolve_stencil(spec: StencilSpec, src_shape: tuple[int, ...], dst_shape: tuple[int, ...], aggregate: str) -> Stencil:
    """Check ``spec`` against the groups it connects; raise :class:`StencilError` saying what to fix."""
    if tuple(src_shape) != tuple(dst_shape):
        rank = "rank" if len(src_shape) != len(dst_shape) else "shape"
        raise StencilError(
            "stencil",
            f"a stencil connects groups of the same shape (agent d receives from d + offset), but the groups have {rank}s "
            f"{list(src_shape)} and {list(dst_shape)}; use an index map ('map') or 'edges' between groups of different shapes",
        )
    rank = len(src_shape)
    if rank == 0:
        raise StencilError("stencil", "a stencil needs a group with agent axes (a grid, e.g. shape [64, 64]); this group is a single agent")
    weights = spec.weights
    if isinstance(spec.offsets, str):
        if spec.offsets not in NEIGHBOURHOODS:
            close = difflib.get_close_matches(spec.offsets, list(NEIGHBOURHOODS), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise StencilError("stencil.offsets", f"unknown neighbourhood {spec.offsets!r}.{hint} Named ones: {', '.join(NEIGHBOURHOODS)}; or give a list of offsets such as [[0, 1], [0, -1]]")
        if rank != 2:
            raise StencilError(
                "stencil.offsets",
                f"the neighbourhood {spec.offsets!r} is for 2-D grids, but the group has shape {list(src_shape)} ({rank} axes); "
                f"give the offsets as a list of {rank}-element vectors",
            )
        offsets, named_weights = NEIGHBOURHOODS[spec.offsets]
        if named_weights is not None:
            if weights is not None:
                raise StencilError("stencil.weights", f"the kernel {spec.offsets!r} has weights of its own; remove 'weights'")
            weights = named_weights
    else:
        offsets = spec.offsets
        if not offsets:
            raise StencilError("stencil.offsets", "a stencil needs at least one offset, e.g. [[0, 1]]")
        for k, o in enumerate(offsets):
            if len(o) != rank:
                raise StencilError(f"stencil.offsets[{k}]", f"offset {list(o)} has {len(o)} elements, but the group has {rank} agent axes (shape {list(src_shape)})")
        seen: dict[tuple[int, ...], int] = {}
        for k, o in enumerate(offsets):
            if tuple(o) in seen:
                raise StencilError(f"stencil.offsets[{k}]", f"offset {list(o)} is listed twice (first at offsets[{seen[tuple(o)]}]); list each once (use 'weights' to count one twice)")
            seen[tuple(o)] = k
    for k, o in enumerate(offsets):
        for ax, (oi, n) in enumerate(zip(o, src_shape)):
            if abs(oi) >= n:
                raise StencilError(
                    f"stencil.offsets[{k}]" if not isinstance(spec.offsets, str) else "stencil.offsets",
                    f"offset {list(o)} reaches {abs(oi)} agents along axis {ax}, which has only {n}; offsets must be smaller than the grid",
                )
    if weights is not None:
        if len(weights) != len(offsets):
            raise StencilError("stencil.weights", f"expected one weight per offset ({len(offsets)}), got {len(weights)}")
        if aggregate != "sum":
            raise StencilError("aggregate", f"a weighted stencil computes a weighted sum; set 'aggregate: sum' (got {aggregate!r})")
    return Stencil(tuple(tuple(int(x) for x in o) for o in offsets), None if weights is None else tuple(float(w) for w in weights), spec.boundary)
