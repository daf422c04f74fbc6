"""compile_report(prog) -> CompileReport: what the compiler made of a graph.

One row per kernel (per phase and stage) says how the kernel is lowered, then parameter counts
per share key, the size of the agent state and XLA's FLOP estimate for one ``step``. Nothing is
computed on real data: parameter and state shapes come from ``jax.eval_shape`` and the FLOPs from
compiling ``step`` on abstract arguments.

Lowerings (see :mod:`mplp_graph.runtime.lower` and :mod:`mplp_graph.runtime.route`):

* ``einsum``: a bilinear op (``a * b``) with scalar features under sum/mean, fused with its
  reduction into one ``jnp.einsum`` (``can_fuse_bilinear``);
* ``broadcast``: the op runs on broadcast arrays, the index map becomes axis reductions;
* ``gather+segment``: an edge list, lowered to a gather and a segment reduction;
* ``local``: the arrow sends no message, it only writes back into its source (``updates``).

Stage numbers count from 0 in :class:`KernelRow` (an index into ``prog.phases[phase]``) and
from 1 in the printed table, as in :func:`mplp_graph.ir.pretty.format_graph`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import jax

from mplp_graph.compile.group import Kernel, can_fuse_bilinear
from mplp_graph.ir.layout import stored_shape
from mplp_graph.ir.resolve import ArrowPlan

LOWERINGS = ("einsum", "broadcast", "gather+segment", "local")


@dataclass(frozen=True)
class KernelRow:
    """One kernel of one stage."""

    phase: str
    stage: int  # 0-based index into prog.phases[phase]
    share: str | tuple[tuple[str, str], ...] | None  # a key, or (part, key) pairs for multi-part ops
    op: str
    arrows: tuple[str, ...]
    agents: int  # source agents the op runs at (summed over the kernel's arrows)
    in_features: tuple[tuple[int, ...], ...]  # feature shape of each op input (scalars are (1,))
    message: tuple[int, ...] | None  # feature shape of the routed message; None when nothing is sent
    lowering: str  # one of LOWERINGS, or several joined by '+' for a fused kernel of mixed arrows


@dataclass(frozen=True)
class CompileReport:
    graph: str
    batch_size: int
    rows: tuple[KernelRow, ...]
    params: Mapping[str, int]  # share key -> number of parameters
    state_size: int  # number of scalars in prog.init(key, batch_size)
    state_bytes: int
    flops: float | None  # XLA's estimate for one jitted step; None if the backend gives none
    bytes_accessed: float | None
    # groups split across devices (compile.partition): (group, agent axis, agents, devices, fields split)
    split: tuple[tuple[str, int, int, int, tuple[str, ...]], ...] = ()
    # cross-device operations XLA inserted into one step of a split program (None: not compiled)
    collectives: Mapping[str, int] | None = None

    @property
    def n_params(self) -> int:
        return sum(self.params.values())

    def __str__(self) -> str:
        return format_report(self)


def arrow_lowering(a: ArrowPlan, fused: bool) -> str:
    if a.spec.into is None:
        return "local"
    if a.conn.is_edges:
        return "gather+segment"
    if a.conn.is_stencil:
        return f"stencil({len(a.conn.stencil.offsets)} shifts, {a.conn.stencil.boundary})"
    if not fused and can_fuse_bilinear(a):
        return "einsum"
    return "broadcast"


def kernel_row(phase: str, stage: int, kernel: Kernel) -> KernelRow:
    arrows = kernel.arrows
    fused = len(arrows) > 1  # lower.run_kernel only uses the einsum path for one-arrow kernels
    lowerings: list[str] = []
    for a in arrows:
        low = arrow_lowering(a, fused)
        if low not in lowerings:
            lowerings.append(low)
    senders = [a for a in arrows if a.spec.into is not None]
    return KernelRow(
        phase=phase,
        stage=stage,
        share=kernel.share,
        op=kernel.op.name,
        arrows=tuple(a.name for a in arrows),
        agents=sum(math.prod(a.src_shape) for a in arrows),
        in_features=arrows[0].in_features,
        message=senders[0].out_features.get("message") if senders else None,
        lowering="+".join(lowerings),
    )


def _count(tree: Any) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def _cost(compiled: Any) -> dict[str, float]:
    """``cost_analysis()`` is a dict in recent jax, a list of one dict per device in older
    releases, and None (or raises) on backends without cost models."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001  (backend-specific failures; the FLOP count is optional)
        return {}
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return dict(cost) if cost else {}


def abstract_batch(prog: Any, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of a batch for ``prog.step`` (one entry per ``spec.inputs`` key)."""
    batch = {}
    for key, ref in prog.spec.inputs.items():
        gname, fname = ref.split(".", 1)
        group = prog.spec.groups[gname]
        f = group.state[fname]
        batch[key] = jax.ShapeDtypeStruct(stored_shape(group, f, batch_size), f.dtype)
    return batch


def compile_report(prog: Any, batch_size: int = 1, *, flops: bool = True) -> CompileReport:
    """Report on the compiled program ``prog`` (a :class:`~mplp_graph.runtime.program.Program`).

    ``flops=False`` skips compiling ``step`` with XLA (the slow part on large graphs).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rows = tuple(
        kernel_row(phase, k, kernel)
        for phase, stages in prog.phases.items()
        for k, kernels in enumerate(stages)
        for kernel in kernels
    )
    key = jax.random.PRNGKey(0)
    params = jax.eval_shape(prog.init_params, key)
    state = jax.eval_shape(lambda k: prog.init(k, batch_size), key)
    leaves = jax.tree_util.tree_leaves(state)
    cost: dict[str, float] = {}
    collectives = None
    part = getattr(prog, "partition", None)
    if flops:
        args = state
        if part is not None:  # the state as it lies on the mesh: split groups split
            from mplp_graph.compile.partition import state_shardings

            shardings = state_shardings(prog.spec, part, state)
            args = jax.tree_util.tree_map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), state, shardings)
        compiled = jax.jit(prog.step).lower(params, args, abstract_batch(prog, batch_size)).compile()
        cost = _cost(compiled)
        if part is not None:
            from mplp_graph.compile.partition import count_collectives

            collectives = count_collectives(compiled.as_text())
    split = ()
    if part is not None:
        fields = part.split_fields(prog.spec)
        split = tuple((g, axis, prog.spec.groups[g].shape[axis], part.devices, fields[g]) for g, axis in part.axes)
    return CompileReport(
        graph=prog.spec.name,
        batch_size=batch_size,
        rows=rows,
        params={share: _count(p) for share, p in params.items()},
        state_size=sum(math.prod(x.shape) for x in leaves),
        state_bytes=sum(math.prod(x.shape) * x.dtype.itemsize for x in leaves),
        flops=cost.get("flops"),
        bytes_accessed=cost.get("bytes accessed"),
        split=split,
        collectives=collectives,
    )


# ---------------------------------------------------------------------------------------------
# printing


def _share(share: str | tuple[tuple[str, str], ...] | None) -> str:
    if isinstance(share, tuple):
        return ",".join(f"{part}={key}" for part, key in share)
    return "-" if share is None else share


def _shape(s: tuple[int, ...] | None) -> str:
    return "-" if s is None else "[" + ",".join(str(n) for n in s) + "]"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> list[str]:
    widths = [max(len(h), *(len(r[k]) for r in rows)) if rows else len(h) for k, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()

    return [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]


def _human(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.4g}"


def format_report(r: CompileReport) -> str:
    lines = [f"compile report: {r.graph} (batch {r.batch_size})", ""]
    header = ("phase", "stage", "share", "op", "arrows", "agents", "inputs", "message", "lowering")
    cells = [
        (
            row.phase,
            str(row.stage + 1),
            _share(row.share),
            row.op,
            ", ".join(row.arrows),
            str(row.agents),
            " ".join(_shape(s) for s in row.in_features) or "-",
            _shape(row.message),
            row.lowering,
        )
        for row in r.rows
    ]
    lines += _table(header, cells, (False, True, False, False, False, True, False, False, False))
    lines += ["", f"parameters: {r.n_params}"]
    if r.params:
        lines += ["  " + ln for ln in _table(("share", "count"), [(k, str(v)) for k, v in r.params.items()], (False, True))]
    lines.append(f"state: {r.state_size} scalars ({_human(r.state_bytes)}B) at batch {r.batch_size}")
    if r.flops is None:
        lines.append("flops per step: not available (XLA gave no cost analysis)")
    else:
        moved = f", {_human(r.bytes_accessed)}B accessed" if r.bytes_accessed is not None else ""
        lines.append(f"flops per step: {_human(r.flops)} ({r.flops:.0f}){moved} (XLA cost analysis)")
    if r.split:
        devices = r.split[0][3]
        lines += ["", f"split across {devices} devices (mesh axis 'agents'; docs/scaling.md):"]
        rows = [(g, str(axis), str(n), str(n // d), ", ".join(fs) or "-") for g, axis, n, d, fs in r.split]
        lines += ["  " + ln for ln in _table(("group", "axis", "agents", "per device", "fields split (others replicated)"), rows, (False, True, True, True, False))]
        if r.collectives is None:
            lines.append("collectives per step: not compiled")
        else:
            found = ", ".join(f"{n} {op}" for op, n in r.collectives.items() if n) or "none"
            lines.append(f"collectives per step (inserted by XLA's SPMD partitioner): {found}")
    return "\n".join(lines)
