"""Drawing a graph's topology with matplotlib: hierarchical left-to-right layout along the forward
schedule, nodes coloured by kind, arrows styled by phase (see :mod:`mplp_graph.viz.topology`)."""

from __future__ import annotations
import math
from pathlib import Path
from typing import Any
import networkx as nx
from mplp_graph.ir.pretty import safe_schedule
from mplp_graph.ir.spec import GraphSpec
from mplp_graph.viz.topology import (
    MAX_AGENT_EDGES,
    _stages,
    kind_color,
    node_label,
    phase_color,
    phase_style,
    to_dot,
    to_networkx,
)


def layout_phase(spec: GraphSpec) -> str | None:
    """The phase that orders the picture: ``forward`` if present, else the first phase run."""
    phases = {a.phase for a in spec.arrows}
    if "forward" in phases:
        return "forward"
    step = safe_schedule(spec)[0].step
    return next((p for p in step if p in phases), None)


def group_layers(spec: GraphSpec) -> dict[str, int]:
    """Layer of each group: longest-path layering of the groups along the forward arrows
    (self-loops ignored). If the forward arrows between groups have a cycle, fall back to the
    forward stage at which the group is first written (0 if never)."""
    phase = layout_phase(spec)
    arrows = [a for a in spec.arrows if a.phase == phase and a.src != a.dst]
    dag = nx.DiGraph()
    dag.add_nodes_from(spec.groups)
    dag.add_edges_from((a.src, a.dst) for a in arrows)
    layers: dict[str, int] = {}
    if nx.is_directed_acyclic_graph(dag):
        for n in nx.topological_sort(dag):
            layers[n] = max((layers[p] + 1 for p in dag.predecessors(n)), default=0)
        return {n: layers[n] for n in spec.groups}
    stage = _stages(spec)
    for a in arrows:
        if a.into is not None:
            k = stage.get(a.name, 0) + 1
            layers[a.dst] = min(layers.get(a.dst, k), k)
    return {n: layers.get(n, 0) for n in spec.groups}


def _positions(nodes: dict[str, int], x_gap: float, y_gap: float) -> dict[str, tuple[float, float]]:
    """Columns by layer (``nx.multipartite_layout``), rescaled to fixed gaps in inches; within a
    column the nodes keep their order in ``nodes`` (spec order, agents row-major), top down."""
    h = nx.Graph()
    for n, layer in nodes.items():
        h.add_node(n, layer=layer)
    raw = nx.multipartite_layout(h, subset_key="layer", align="vertical")
    pos: dict[str, tuple[float, float]] = {}
    columns = sorted({float(xy[0]) for xy in raw.values()})  # one per layer, left to right
    for c, cx in enumerate(columns):
        column = [n for n in nodes if float(raw[n][0]) == cx]
        for k, n in enumerate(column):
            pos[n] = (c * x_gap, ((len(column) - 1) / 2 - k) * y_gap)
    return pos


def _agent_positions(
    spec: GraphSpec, g: nx.MultiDiGraph, group_layer: dict[str, int], x_gap: float, y_gap: float, cell_w: float
) -> dict[str, tuple[float, float]]:
    """Agent view: one column per layer as :func:`_positions`, except that a 2-D group alone in
    its layer (a grid of cells, a weight matrix) is drawn at its agents' places, row ``r`` and
    column ``c`` of the agent ``[r, c]``; the layers to its right move over to make room."""
    by_layer: dict[int, list[str]] = {}
    for name in spec.groups:
        by_layer.setdefault(group_layer[name], []).append(name)
    agents = list(g.nodes(data=True))
    pos: dict[str, tuple[float, float]] = {}
    x = 0.0
    for k in sorted(by_layer):
        names = by_layer[k]
        if len(names) == 1 and len(spec.groups[names[0]].shape) == 2:
            h, w = spec.groups[names[0]].shape
            for n, d in agents:
                if d["group"] == names[0]:
                    r, c = d["index"]
                    pos[n] = (x + c * cell_w, ((h - 1) / 2 - r) * y_gap)
            x += (w - 1) * cell_w + x_gap
            continue
        column = [n for n, d in agents if d["group"] in names]  # spec order, agents row-major
        for i, n in enumerate(column):
            pos[n] = (x, ((len(column) - 1) / 2 - i) * y_gap)
        x += x_gap
    return pos


# sizes in inches (the axes use one data unit per inch, so text and boxes keep their size)
_FONT = 9.0
_EDGE_FONT = 7.5
_CHAR_W = 0.62 * _FONT / 72
_EDGE_CHAR_W = 0.62 * _EDGE_FONT / 72
_LINE_H = 1.35 * _FONT / 72


def _edge_label(u: str, v: str, d: dict[str, Any]) -> str:
    """The map text; a self-loop with the identity map is a local computation, so it shows the
    op instead, and a self-loop with another map adds its aggregate (``i -> j (max)``)."""
    if d["map"] == "edges":
        return f"edges ({d['n_edges']})"
    if u == v:
        return d["op"] if d["map"] == "identity" else f"{d['map']} ({d['aggregate']})"
    return d["map"]


def _arc_rads(
    edges: list[tuple[str, str, str]], pos: dict[str, tuple[float, float]], layer: dict[str, int], y_gap: float
) -> dict[tuple, float]:
    """Parallel arrows between two nodes fan out (``arc3`` radii spread around 0 in one
    orientation, so opposite directions bend to opposite sides: with one forward and one backward
    arrow, forward runs above); arrows that skip layers bend so they do not run through the
    nodes in between."""
    by_pair: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
    for e in edges:
        u, v, _ = e
        if u != v:
            left_to_right = sorted((u, v), key=lambda n: (pos[n][0], -pos[n][1]))
            by_pair.setdefault(tuple(left_to_right), []).append(e)
    rads: dict[tuple, float] = {}
    step = 0.32
    for (a, b), es in by_pair.items():
        skip = abs(layer[a] - layer[b]) > 1 or (layer[a] == layer[b] and abs(pos[a][1] - pos[b][1]) > 1.5 * y_gap)
        base = 0.35 if skip else 0.0
        n = len(es)
        for k, e in enumerate(es):
            offset = base + (k - (n - 1) / 2) * step
            rads[e] = offset if (e[0], e[1]) == (a, b) else -offset
    return rads


def draw(spec: GraphSpec, path: str | Path, expand: bool = False, phase: str | None = None, max_edges: int = MAX_AGENT_EDGES) -> Path:
    """Write a picture of ``spec`` to ``path`` (``.png``, ``.svg``, ``.pdf``; ``.dot`` writes
    :func:`to_dot`). Left to right along the forward schedule; ``phase`` keeps only that phase's
    arrows. Returns the path."""
    path = Path(path)
    if path.suffix.lower() == ".dot":
        path.write_text(to_dot(spec, expand, max_edges))
        return path
    if not path.suffix:
        raise ValueError(f"cannot tell the image format of {str(path)!r}: give it a suffix (.png, .svg, .pdf or .dot)")
    phases = {a.phase for a in spec.arrows}
    if phase is not None and phase not in phases:
        raise ValueError(f"graph {spec.name!r} has no arrows in phase {phase!r}; its phases are {sorted(phases)}")

    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch
    from matplotlib.path import Path as MplPath

    g = to_networkx(spec, expand, max_edges)
    group_layer = group_layers(spec)
    if expand:
        layer = {n: group_layer[d["group"]] for n, d in g.nodes(data=True)}
        labels = {n: n for n in g.nodes}
    else:
        layer = dict(group_layer)
        labels = {n: node_label(n, d["kind"], d["shape"]) for n, d in g.nodes(data=True)}
    edges = [(u, v, k) for u, v, k, d in g.edges(keys=True, data=True) if phase is None or d["phase"] == phase]
    edge_text = {} if expand else {(u, v, k): _edge_label(u, v, g.edges[u, v, k]) for u, v, k in edges}

    box_w = max(len(line) for t in labels.values() for line in t.split("\n")) * _CHAR_W + 0.25
    box_h = max(t.count("\n") + 1 for t in labels.values()) * _LINE_H + 0.16
    label_w = max((len(t) for t in edge_text.values()), default=0) * _EDGE_CHAR_W
    x_gap = box_w + max(0.9, label_w + 0.5)
    y_gap = box_h + (0.9 if not expand else 0.35)
    pos = _agent_positions(spec, g, group_layer, x_gap, y_gap, box_w + 0.3) if expand else _positions(layer, x_gap, y_gap)
    rads = _arc_rads(edges, pos, layer, y_gap)

    fig = Figure()
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    xs: list[float] = []
    ys: list[float] = []
    boxes = {}
    for n, (x, y) in pos.items():
        kind = g.nodes[n]["kind"]
        box = FancyBboxPatch(
            (x - box_w / 2, y - box_h / 2), box_w, box_h, boxstyle="round,pad=0,rounding_size=0.08",
            facecolor=kind_color(kind), edgecolor="#444444", linewidth=1.0, zorder=3,
        )
        ax.add_patch(box)
        boxes[n] = box
        name, _, rest = labels[n].partition("\n")
        ax.text(x, y + (_LINE_H / 2 if rest else 0), name, ha="center", va="center", fontsize=_FONT, weight="bold", zorder=4)
        if rest:
            ax.text(x, y - _LINE_H / 2, rest, ha="center", va="center", fontsize=_FONT * 0.9, zorder=4)
        xs += [x - box_w / 2, x + box_w / 2]
        ys += [y - box_h / 2, y + box_h / 2]

    label_box = dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.85)
    loops_on: dict[tuple[str, int], int] = {}
    for e in edges:
        u, v, key = e
        d = g.edges[e]
        style = dict(
            arrowstyle="-|>", mutation_scale=10, linewidth=1.1, linestyle=phase_style(d["phase"]),
            color=phase_color(d["phase"]), zorder=2,
        )
        text = edge_text.get(e)
        if u == v:
            # forward loops above the node, backward below, others alternate; each further
            # loop on one side is taller, so several loops stay distinguishable
            side = {"forward": 1, "backward": -1}.get(d["phase"], 1 if len(loops_on) % 2 == 0 else -1)
            k = loops_on.get((u, side), 0)
            loops_on[(u, side)] = k + 1
            x, y = pos[u]
            rise = (0.32 if not expand else 0.22) + (0.3 if not expand else 0.15) * k
            half = max(0.18 * box_w, 0.1) + 0.12 * k
            y0 = y + side * box_h / 2
            verts = [(x - half, y0), (x - 1.6 * half, y0 + side * rise * 4 / 3), (x + 1.6 * half, y0 + side * rise * 4 / 3), (x + half, y0)]
            loop = MplPath(verts, [MplPath.MOVETO, MplPath.CURVE4, MplPath.CURVE4, MplPath.CURVE4])
            ax.add_patch(FancyArrowPatch(path=loop, shrinkA=0, shrinkB=0, **style))
            top = y0 + side * rise
            ys.append(top + side * 0.12)
            if text:
                ax.text(x, top, text, ha="center", va="center", fontsize=_EDGE_FONT, bbox=label_box, zorder=5)
            continue
        rad = rads[e]
        ax.add_patch(
            FancyArrowPatch(
                pos[u], pos[v], connectionstyle=f"arc3,rad={rad}", patchA=boxes[u], patchB=boxes[v],
                shrinkA=1, shrinkB=1, **style,
            )
        )
        (x1, y1), (x2, y2) = pos[u], pos[v]
        # midpoint of the quadratic Bezier arc3 draws (equal aspect: data and display agree)
        mx, my = (x1 + x2) / 2 + 0.5 * rad * (y2 - y1), (y1 + y2) / 2 - 0.5 * rad * (x2 - x1)
        ys.append(my)
        if text:
            ax.text(mx, my, text, ha="center", va="center", fontsize=_EDGE_FONT, bbox=label_box, zorder=5)

    kinds = list(dict.fromkeys(g.nodes[n]["kind"] for n in g.nodes))
    shown = [p for p in dict.fromkeys(g.edges[e]["phase"] for e in edges)]
    handles = [Patch(facecolor=kind_color(k), edgecolor="#444444", label=k) for k in kinds]
    handles += [Line2D([], [], color=phase_color(p), linestyle=phase_style(p), label=f"{p} arrow") for p in shown]

    # legend entries (~ handle + text at 8 pt) in as many columns as fit, at least 6 inches
    entry_w = [0.75 + len(h.get_label()) * 0.075 for h in handles]
    margin = 0.35
    x0, x1 = min(xs) - margin, max(xs) + margin
    ncol = len(handles)
    while ncol > 1 and max(entry_w) * ncol > max(x1 - x0, 6.0):
        ncol -= 1
    widen = max(0.0, (max(sum(entry_w[:ncol]), max(entry_w) * ncol) + 0.3 - (x1 - x0)) / 2)
    x0, x1 = x0 - widen, x1 + widen
    title = spec.name + (f"  ({phase} phase)" if phase else "") + ("  (agents)" if expand else "")
    title_h, legend_h = 0.45, 0.2 + 0.2 * math.ceil(len(handles) / ncol)
    extra = max(0.0, (len(title) * 0.11 - (x1 - x0)) / 2)
    x0, x1 = x0 - extra, x1 + extra
    y0, y1 = min(ys) - margin - legend_h, max(ys) + margin + title_h
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    fig.set_size_inches(x1 - x0, y1 - y0)
    ax.text((x0 + x1) / 2, y1 - title_h / 2, title, ha="center", va="center", fontsize=11, weight="bold")
    ax.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.savefig(path, dpi=110)
    return path

