"""Shape resolution: turns each arrow into an :class:`ArrowPlan` with every static fact the
lowering needs (op, feature shapes, batch flags, constant axes, connectivity, writes).

A pure function of the IR and the op registry (the IR's type checking), kept beside the IR
because the verifier reports its errors; the compiler keeps the plans it makes.

Inside kernels every value has layout ``[b, *agent_axes, *feature]`` where ``b`` is the batch
size or 1, agent axes have their size or 1 (constant along that axis), and a scalar field has
one feature axis of size 1.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mplp_graph.ir.indexmap import IndexMap, IndexMapError, bind_sizes, parse_index_map
from mplp_graph.ir.spec import ArrowSpec, FieldSpec, GraphSpec
from mplp_graph.ops.registry import Op, OpShapeError, get_op


class ResolveError(ValueError):
    """A problem with one arrow; ``where`` is the YAML path suffix (e.g. ``map``)."""

    def __init__(self, where: str, message: str):
        self.where = where
        super().__init__(message)


def feature_shape(f: FieldSpec) -> tuple[int, ...]:
    """Feature shape of a field inside kernels: scalars get one axis of size 1."""
    return f.shape if f.shape else (1,)


@dataclass(frozen=True)
class Connectivity:
    """How messages travel: an index map (dense lowering) or an explicit edge list."""

    index_map: IndexMap | None
    sizes: dict[str, int]
    edges: np.ndarray | None  # (E, 2) int32 flat agent indices [src, dst]

    @property
    def is_edges(self) -> bool:
        return self.edges is not None


@dataclass(frozen=True)
class ArrowPlan:
    index: int
    spec: ArrowSpec
    op: Op
    args: dict[str, Any]
    src_shape: tuple[int, ...]
    dst_shape: tuple[int, ...]
    in_features: tuple[tuple[int, ...], ...]
    in_batched: tuple[bool, ...]
    in_constant: tuple[frozenset[int], ...]  # agent axes of the source along which each input is constant
    out_features: dict[str, tuple[int, ...]]
    batched: bool  # is the op's output per example
    constant: frozenset[int]  # source agent axes along which the op's output is constant
    conn: Connectivity
    share: str | tuple[tuple[str, str], ...] | None  # key, or (part, key) pairs for multi-part ops

    @property
    def name(self) -> str:
        return self.spec.name


def resolve_share(a: ArrowSpec, op: Op) -> str | tuple[tuple[str, str], ...] | None:
    """Share key of an arrow: its own name by default for ops with parameters."""
    if op.param_parts is None:
        if isinstance(a.share, dict):
            raise ResolveError("share", f"op {op.name!r} has one undivided parameter set; give 'share' as one key, not a mapping")
        return a.share if a.share is not None else (a.name if op.init is not None else None)
    keys = a.share if isinstance(a.share, dict) else {}
    unknown = sorted(set(keys) - set(op.param_parts))
    if unknown:
        close = [p for u in unknown for p in difflib.get_close_matches(u, op.param_parts, n=1)]
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ResolveError("share", f"op {op.name!r} has parameter parts {list(op.param_parts)}, not {unknown}.{hint}")
    missing = [p for p in op.param_parts if p not in keys]
    if isinstance(a.share, dict) and missing:
        # a part left out would silently get parameters of its own: say so instead
        raise ResolveError(
            "share",
            f"the share mapping gives keys for {sorted(keys)} but not for {missing}; op {op.name!r} has parameter parts "
            f"{list(op.param_parts)}: give every part a key (a key used by this arrow only, such as {a.name!r}, keeps "
            "that part's parameters per arrow), or give 'share' as one key for all parts",
        )
    default = a.share if isinstance(a.share, str) else a.name
    return tuple((part, keys.get(part, default)) for part in op.param_parts)


def _connectivity(graph: GraphSpec, a: ArrowSpec) -> Connectivity:
    src_shape, dst_shape = graph.groups[a.src].shape, graph.groups[a.dst].shape
    if a.edges is not None:
        # checked as Python ints, before any conversion: an index or a shape beyond int64 must be
        # an "out of range" message, not an OverflowError
        n_src, n_dst = math.prod(src_shape), math.prod(dst_shape)
        for k, (s, d) in enumerate(a.edges):
            if not 0 <= s < n_src:
                raise ResolveError(f"edges[{k}]", f"source agent {s} is out of range: group {a.src!r} has {n_src} agents (flat indices 0..{n_src - 1})")
            if not 0 <= d < n_dst:
                raise ResolveError(f"edges[{k}]", f"destination agent {d} is out of range: group {a.dst!r} has {n_dst} agents (flat indices 0..{n_dst - 1})")
        edges = np.asarray(a.edges, dtype=np.int64).reshape(-1, 2)
        return Connectivity(None, {}, edges.astype(np.int32))
    text = a.map
    if text is None:
        if src_shape != dst_shape:
            raise ResolveError(
                "map",
                f"groups {a.src!r} {list(src_shape)} and {a.dst!r} {list(dst_shape)} have different shapes, so the "
                "arrow needs a 'map' (e.g. 'i -> i j') or 'edges'",
            )
        text = "identity"
    try:
        m = parse_index_map(text, len(src_shape))
        sizes = bind_sizes(m, src_shape, dst_shape)
    except IndexMapError as e:
        raise ResolveError("map", str(e)) from None
    return Connectivity(m, sizes, None)


def resolve_arrow(graph: GraphSpec, index: int, a: ArrowSpec) -> ArrowPlan:
    """Static facts of one arrow. Raises :class:`ResolveError` naming the bad part."""
    src, dst = graph.groups[a.src], graph.groups[a.dst]
    op = get_op(a.op.name)
    if op.arity is not None and len(a.inputs) != op.arity:
        raise ResolveError("inputs", f"op {op.name!r} takes {op.arity} input(s), got {len(a.inputs)}: {list(a.inputs)}")
    fields = [src.state[n] for n in a.inputs]
    in_features = tuple(feature_shape(f) for f in fields)
    args = op.check_args(a.op.args)  # the verifier reported arguments that do not fit the op's model
    try:
        out_features = op.infer(in_features, args)
    except OpShapeError as e:
        raise ResolveError("op", f"op {op.name!r}: {e}") from None
    batched = any(f.batched for f in fields)
    constant = frozenset(range(len(src.shape)))
    for f in fields:
        constant &= frozenset(f.constant_along)
    conn = _connectivity(graph, a)
    if a.into is not None:
        target = dst.state[a.into]
        want = feature_shape(target)
        got = out_features.get("message")
        if got is None:
            raise ResolveError("into", f"op {op.name!r} has no 'message' output to send into {a.dst}.{a.into}")
        if tuple(got) != want:
            raise ResolveError(
                "into",
                f"op {op.name!r} sends messages of feature shape {list(got)} but field {a.dst}.{a.into} has shape "
                f"{list(target.shape)}; make the field's shape {list(got) if got != (1,) else []} or change the op",
            )
        _check_constancy(a, conn, constant, target)
    for field_name, out_name in a.updates.items():
        if out_name not in out_features:
            raise ResolveError(
                f"updates.{field_name}",
                f"op {op.name!r} has no output {out_name!r}; its outputs are {sorted(out_features)}",
            )
        target = src.state[field_name]
        if tuple(out_features[out_name]) != feature_shape(target):
            raise ResolveError(
                f"updates.{field_name}",
                f"output {out_name!r} has feature shape {list(out_features[out_name])} but field {a.src}.{field_name} "
                f"has shape {list(target.shape)}",
            )
        extra = frozenset(target.constant_along) - constant
        if extra:
            raise ResolveError(
                f"updates.{field_name}",
                f"field {a.src}.{field_name} is constant along axes {sorted(extra)} but the op's output varies there",
            )
    share = resolve_share(a, op)
    return ArrowPlan(
        index=index,
        spec=a,
        op=op,
        args=args,
        src_shape=src.shape,
        dst_shape=dst.shape,
        in_features=in_features,
        in_batched=tuple(f.batched for f in fields),
        in_constant=tuple(frozenset(f.constant_along) for f in fields),
        out_features={k: tuple(v) for k, v in out_features.items()},
        batched=batched,
        constant=constant,
        conn=conn,
        share=share,
    )


def _check_constancy(a: ArrowSpec, conn: Connectivity, constant: frozenset[int], target: FieldSpec) -> None:
    """A field stored once along an axis can only receive messages that do not vary along it."""
    if not target.constant_along:
        return
    if conn.is_edges:
        raise ResolveError("edges", f"field {a.dst}.{a.into} is constant along axes {list(target.constant_along)}; edge lists can only write full fields")
    m = conn.index_map
    assert m is not None, "index-map connectivity without a map"
    for axis in target.constant_along:
        letter = m.dst[axis]
        if letter in m.src and m.src.index(letter) not in constant:
            raise ResolveError(
                "into",
                f"field {a.dst}.{a.into} is stored once along destination axis {axis} ({letter!r}) but the messages "
                f"vary along it; remove {axis} from its constant_along or change the map",
            )


def resolve(graph: GraphSpec) -> tuple[ArrowPlan, ...]:
    """Resolve every arrow (the graph must have passed :func:`verify`)."""
    return tuple(resolve_arrow(graph, k, a) for k, a in enumerate(graph.arrows))
