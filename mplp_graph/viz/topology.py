"""The topology of a graph spec as a networkx graph, Graphviz DOT text, or a matplotlib picture.

Two views:

* the group view (``expand=False``): one node per group, one edge per arrow (a
  ``MultiDiGraph``: forward and backward arrows between the same groups are parallel edges,
  arrows from a group to itself are self-loops);
* the agent view (``expand=True``): one node per agent (``W0[2,1]``), one edge per agent-level
  edge. Index maps are enumerated: a letter on both sides connects equal indices, a letter only
  on the left is reduced, a letter only on the right ranges over the destination's size
  (``x -> W0`` with ``i -> i j`` and shapes ``[2]``, ``[2, 3]`` gives 2 * 3 edges).

``stage`` attributes are 0-based indices into ``build_schedule(spec).phases[phase]`` (the text
printers show them from 1). Nothing here needs Graphviz: :func:`to_dot` writes the text by hand
and :func:`mplp_graph.viz.draw.draw` renders with matplotlib's Agg canvas.
"""

from __future__ import annotations

import itertools
import math
import zlib
from typing import Iterator

import networkx as nx
import numpy as np

from mplp_graph.ir.indexmap import bind_sizes, parse_index_map
from mplp_graph.ir.pretty import effective_share, format_field, format_shape, safe_schedule, stencil_text
from mplp_graph.ir.spec import ArrowSpec, GraphSpec
from mplp_graph.ir.stencil import neighbours, resolve_stencil

MAX_AGENT_EDGES = 5_000

KIND_COLORS = {
    "input": "#8dd3c7",
    "weight": "#80b1d3",
    "bias": "#fdb462",
    "activation": "#b3de69",
    "softmax": "#bebada",
    "loss": "#fb8072",
}
_OTHER_COLORS = ("#fccde5", "#d9d9d9", "#bc80bd", "#ccebc5", "#ffed6f", "#e5c494", "#a6cee3")
PHASE_STYLES = {"forward": "solid", "backward": "dashed"}  # any other phase: dotted
PHASE_COLORS = {"forward": "#333333", "backward": "#c0392b"}  # any other phase: purple
_OTHER_PHASE_COLOR = "#7d3c98"

TOO_MANY_EDGES = (
    "graph {name!r} has {n} agent-level edges, more than max_edges={limit}; draw the group view "
    "(expand=False) or pass a larger max_edges"
)


def kind_color(kind: str) -> str:
    """A fixed color for the usual kinds; other kinds get a stable color from their name."""
    if kind in KIND_COLORS:
        return KIND_COLORS[kind]
    return _OTHER_COLORS[zlib.crc32(kind.encode()) % len(_OTHER_COLORS)]


def phase_style(phase: str) -> str:
    return PHASE_STYLES.get(phase, "dotted")


def phase_color(phase: str) -> str:
    return PHASE_COLORS.get(phase, _OTHER_PHASE_COLOR)


def arrow_map_text(a: ArrowSpec) -> str:
    if a.edges is not None:
        return "edges"
    if a.stencil is not None:
        return stencil_text(a)
    return a.map if a.map is not None else "identity"


def agent_name(group: str, index: tuple[int, ...]) -> str:
    return f"{group}[{','.join(str(i) for i in index)}]"


def _stages(spec: GraphSpec) -> dict[str, int]:
    """Arrow name -> 0-based stage index within its phase (none when no order can be derived)."""
    schedule, _ = safe_schedule(spec)
    return {name: k for stages in schedule.phases.values() for k, stage in enumerate(stages) for name in stage}


# ---------------------------------------------------------------------------------------------
# networkx


def _group_view(spec: GraphSpec) -> nx.MultiDiGraph:
    g = nx.MultiDiGraph(name=spec.name)
    for name, grp in spec.groups.items():
        g.add_node(
            name,
            kind=grp.kind,
            shape=grp.shape,
            n_agents=math.prod(grp.shape),
            fields={f: format_field(fs) for f, fs in grp.state.items()},
        )
    stage = _stages(spec)
    for a in spec.arrows:
        g.add_edge(
            a.src,
            a.dst,
            key=a.name,
            phase=a.phase,
            op=a.op.name,
            map=arrow_map_text(a),
            n_edges=len(a.edges) if a.edges is not None else None,
            aggregate=a.aggregate,
            into=a.into,
            inputs=a.inputs,
            updates=dict(a.updates),
            share=effective_share(a),
            stage=stage.get(a.name),
            reflexive=a.src == a.dst,
        )
    return g


def _map_edges(spec: GraphSpec, a: ArrowSpec) -> tuple[int, Iterator[tuple[tuple[int, ...], tuple[int, ...]]]]:
    """(number of agent edges, iterator of (src index, dst index)) for one arrow."""
    src_shape, dst_shape = spec.groups[a.src].shape, spec.groups[a.dst].shape
    if a.edges is not None:
        pairs = [
            (tuple(int(i) for i in np.unravel_index(s, src_shape)), tuple(int(i) for i in np.unravel_index(d, dst_shape)))
            for s, d in a.edges
        ]
        return len(pairs), iter(pairs)
    if a.stencil is not None:
        st = resolve_stencil(a.stencil, src_shape, dst_shape, a.aggregate)
        pairs = [(src, dst) for src, dst, _ in neighbours(st, src_shape)]
        return len(pairs), iter(pairs)
    m = parse_index_map(a.map if a.map is not None else "identity", len(src_shape))
    sizes = bind_sizes(m, src_shape, dst_shape)
    letters = list(m.src) + list(m.broadcast)  # every letter once; only-right letters span the destination

    def gen():
        for values in itertools.product(*(range(sizes[x]) for x in letters)):
            at = dict(zip(letters, values))
            yield tuple(at[x] for x in m.src), tuple(at[x] for x in m.dst)

    return math.prod(sizes[x] for x in letters), gen()


def _agent_view(spec: GraphSpec, max_edges: int) -> nx.MultiDiGraph:
    counted = [(a, *_map_edges(spec, a)) for a in spec.arrows]
    total = sum(n for _, n, _ in counted)
    if total > max_edges:
        raise ValueError(TOO_MANY_EDGES.format(name=spec.name, n=total, limit=max_edges))
    g = nx.MultiDiGraph(name=spec.name)
    for name, grp in spec.groups.items():
        for index in itertools.product(*(range(n) for n in grp.shape)):
            g.add_node(agent_name(name, index), group=name, index=index, kind=grp.kind)
    stage = _stages(spec)
    for a, _, pairs in counted:
        for s, d in pairs:
            u, v = agent_name(a.src, s), agent_name(a.dst, d)
            key = a.name
            k = 1
            while g.has_edge(u, v, key):  # an edge list may repeat a pair
                key = f"{a.name}#{k}"
                k += 1
            g.add_edge(u, v, key=key, arrow=a.name, phase=a.phase, stage=stage.get(a.name))
    return g


def to_networkx(spec: GraphSpec, expand: bool = False, max_edges: int = MAX_AGENT_EDGES) -> nx.MultiDiGraph:
    """The group view (``expand=False``) or the agent view of ``spec``.

    Group view: nodes carry ``kind``, ``shape``, ``n_agents``, ``fields`` (name -> compact
    description); edges are keyed by arrow name and carry ``phase``, ``op``, ``map`` (the map text
    or ``'edges'``), ``aggregate``, ``into``, ``share``, ``stage`` and ``reflexive``.
    Agent view: nodes ``group[i,j]`` carry ``group``, ``index``, ``kind``; edges carry ``arrow``,
    ``phase`` and ``stage``. Raises ValueError when it would have more than ``max_edges`` edges.
    """
    return _agent_view(spec, max_edges) if expand else _group_view(spec)


# ---------------------------------------------------------------------------------------------
# DOT


def _q(text: str) -> str:
    """A DOT quoted string; ``\\n`` in the text stays a DOT line break."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def node_label(name: str, kind: str, shape: tuple[int, ...]) -> str:
    return f"{name}\n{kind} {format_shape(shape)}"


def to_dot(spec: GraphSpec, expand: bool = False, max_edges: int = MAX_AGENT_EDGES) -> str:
    """Graphviz DOT text: left to right, nodes coloured by kind, forward arrows solid, backward
    dashed, other phases dotted; reflexive arrows are self-loops."""
    g = to_networkx(spec, expand, max_edges)
    lines = [
        f"digraph {_q(spec.name)} {{",
        "  rankdir=LR;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11];',
        '  edge [fontname="Helvetica", fontsize=9];',
    ]
    for n, d in g.nodes(data=True):
        if expand:
            label = n
        else:
            label = node_label(n, d["kind"], d["shape"])
        lines.append(f"  {_q(n)} [label={_q(label)}, fillcolor={_q(kind_color(d['kind']))}];")
    for u, v, key, d in g.edges(keys=True, data=True):
        attrs = {"style": phase_style(d["phase"]), "color": phase_color(d["phase"])}
        if expand:
            attrs["tooltip"] = d["arrow"]
        else:
            attrs["label"] = d["map"]
            attrs["tooltip"] = key
        body = ", ".join(f"{k}={_q(v_)}" for k, v_ in attrs.items())
        lines.append(f"  {_q(u)} -> {_q(v)} [{body}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# drawing with matplotlib
