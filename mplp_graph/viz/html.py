"""One self-contained, offline HTML page showing a graph and, with a trace, a replay of a run
(docs/view.md).

The page inlines everything it runs: the vendored cytoscape.js (``assets/cytoscape.min.js``, its
licence beside it; docs/view.md says why and how to update it), the viewer's own script and
style (``assets/view.js``, ``assets/view.css``) and the data as JSON. Nothing is fetched: a
Content-Security-Policy allows only the page's own inline scripts (by hash) and no connections.

Everything that comes from a user's file (names, descriptions, op arguments) travels inside the
JSON block, with ``<``, ``>`` and ``&`` escaped so that no text can end the block, and the
script puts it on the page as text (``textContent``, canvas labels), never as HTML.

The data: the group view (groups with kind, agent shape and fields; arrows with phase, stage,
map, op, share key and parameter count; positions from :func:`mplp_graph.viz.draw.group_layers`,
left to right along the schedule), the compile report's kernels (which arrows share one kernel),
for each group the agents shown when it is expanded (a leading window of at most ``max_agents``
agents, laid out at their places: a grid's cells as a grid, a weight matrix as a matrix) with
the agent-level edges between shown agents, and with a trace the recorded values per step (one
number per agent: the value, or the norm of a vector field or message) and the metric curves.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mplp_graph.ir.indexmap import bind_sizes, parse_index_map
from mplp_graph.ir.pretty import effective_share, format_field, format_shape
from mplp_graph.ir.spec import ArrowSpec, GraphSpec
from mplp_graph.viz.draw import _positions, group_layers
from mplp_graph.viz.topology import _stages, arrow_map_text, kind_color, phase_color

MAX_AGENTS = 1024  # agents shown per expanded group (a leading window)
MAX_AGENT_EDGES = 4000  # agent-level edges shown per arrow
X_GAP, Y_GAP = 210.0, 130.0  # pixels between layers, between groups of one layer
_OTHER_PHASES = ("#7d3c98", "#1f77b4", "#2ca02c", "#d35400", "#8c564b", "#e377c2")


def _asset(name: str) -> str:
    return resources.files("mplp_graph.viz").joinpath("assets", name).read_text(encoding="utf-8")


def phase_colors(spec: GraphSpec) -> dict[str, str]:
    """forward and backward as in the static drawings (:func:`phase_color`); other phases get
    distinct colours in order of appearance."""
    out: dict[str, str] = {}
    k = 0
    for a in spec.arrows:
        if a.phase in out:
            continue
        if a.phase in ("forward", "backward"):
            out[a.phase] = phase_color(a.phase)
        else:
            out[a.phase] = _OTHER_PHASES[k % len(_OTHER_PHASES)]
            k += 1
    return out


def agent_window(shape: Sequence[int], cap: int) -> tuple[int, ...]:
    """The leading window of agents shown for a group: per axis a count <= its size, whose
    product is at most ``cap``, cutting the largest axis first (so a 144 x 50 matrix shows 32 x
    32, a 64 x 64 grid 32 x 32 of its cells)."""
    w = list(shape)
    while math.prod(w) > cap:
        i = int(np.argmax(w))
        rest = math.prod(w) // w[i]
        second = max((n for k, n in enumerate(w) if k != i), default=1)
        w[i] = max(1, min(w[i] - 1, max(second, cap // rest)))
    return tuple(w)


def window_edges(spec: GraphSpec, a: ArrowSpec, wsrc: Sequence[int], wdst: Sequence[int]) -> tuple[np.ndarray, int]:
    """The agent-level edges of arrow ``a`` between the shown windows of its groups, as ``(k, 2)``
    flat indices into the windows (row-major), and the arrow's total number of agent edges."""
    src_shape, dst_shape = spec.groups[a.src].shape, spec.groups[a.dst].shape
    if a.edges is not None:
        e = np.asarray(a.edges, np.int64).reshape(-1, 2)
        s = np.array(np.unravel_index(e[:, 0], src_shape)).T.reshape(len(e), len(src_shape))
        d = np.array(np.unravel_index(e[:, 1], dst_shape)).T.reshape(len(e), len(dst_shape))
        keep = np.all(s < np.asarray(wsrc, np.int64), axis=1) & np.all(d < np.asarray(wdst, np.int64), axis=1)
        s, d = s[keep], d[keep]
        total = len(e)
    else:
        m = parse_index_map(a.map if a.map is not None else "identity", len(src_shape))
        sizes = bind_sizes(m, src_shape, dst_shape)
        letters = list(m.src) + list(m.broadcast)
        total = math.prod(sizes[x] for x in letters)
        limit = dict(sizes)
        for axis, x in enumerate(m.src):
            limit[x] = min(limit[x], wsrc[axis])
        for axis, x in enumerate(m.dst):
            limit[x] = min(limit[x], wdst[axis])
        grids = np.meshgrid(*(np.arange(limit[x]) for x in letters), indexing="ij") if letters else []
        at = {x: g.ravel() for x, g in zip(letters, grids)}
        n = int(np.prod([limit[x] for x in letters])) if letters else 1
        s = np.stack([at[x] for x in m.src], axis=1) if m.src else np.zeros((n, 0), np.int64)
        d = np.stack([at[x] for x in m.dst], axis=1) if m.dst else np.zeros((n, 0), np.int64)
    fs = np.ravel_multi_index(tuple(s.T), tuple(wsrc)) if len(wsrc) else np.zeros(len(s), np.int64)
    fd = np.ravel_multi_index(tuple(d.T), tuple(wdst)) if len(wdst) else np.zeros(len(d), np.int64)
    return np.stack([fs, fd], axis=1).astype(np.int64), total


def _param_counts(prog: Any) -> dict[str, int]:
    import jax

    params = jax.eval_shape(prog.init_params, jax.random.PRNGKey(0))
    return {k: sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(v)) for k, v in params.items()}


def _share_keys(share: Any) -> list[str]:
    if isinstance(share, dict):
        return list(dict.fromkeys(share.values()))
    return [] if share is None else [share]


def graph_data(prog: Any, *, max_agents: int = MAX_AGENTS, max_agent_edges: int = MAX_AGENT_EDGES) -> dict[str, Any]:
    """The page's description of the compiled graph ``prog`` (module docstring)."""
    from mplp_graph.compile.report import kernel_row
    from mplp_graph.meta.checkpoint import graph_hash

    spec: GraphSpec = prog.spec
    layers = group_layers(spec)
    pos = _positions(layers, X_GAP, Y_GAP)
    windows = {g: agent_window(grp.shape, max_agents) for g, grp in spec.groups.items()}
    groups = []
    for name, grp in spec.groups.items():
        x, y = pos[name]
        groups.append({
            "name": name, "kind": grp.kind, "shape": list(grp.shape), "shape_text": format_shape(grp.shape), "n_agents": math.prod(grp.shape),
            "color": kind_color(grp.kind), "layer": layers[name], "x": x, "y": -y,
            "fields": [{"name": f, "text": format_field(fs)} for f, fs in grp.state.items()],
            "window": list(windows[name]), "n_shown": math.prod(windows[name]),
        })
    kernels = []
    kernel_of: dict[str, int] = {}
    for phase, stages in prog.phases.items():
        for k, ks in enumerate(stages):
            for kernel in ks:
                row = kernel_row(phase, k, kernel)
                kernel_of.update({a: len(kernels) for a in row.arrows})
                share = row.share if not isinstance(row.share, tuple) else ", ".join(f"{p}={s}" for p, s in row.share)
                kernels.append({"phase": row.phase, "stage": row.stage, "op": row.op, "arrows": list(row.arrows), "agents": row.agents,
                                "lowering": row.lowering, "share": share, "fused": len(row.arrows) > 1})
    counts = _param_counts(prog)
    stage = _stages(spec)
    colors = phase_colors(spec)
    arrows = []
    for a in spec.arrows:
        edges, total = window_edges(spec, a, windows[a.src], windows[a.dst])
        share = effective_share(a)
        params = sum(counts.get(k, 0) for k in _share_keys(share))
        map_text = f"edges ({len(a.edges)})" if a.edges is not None else arrow_map_text(a)
        if a.src == a.dst:  # a local computation: name the op, and the map unless it is the identity
            label = a.op.name if map_text == "identity" else f"{a.op.name} · {map_text}"
        else:
            label = map_text
        if params:
            label += f" · {a.op.name} ({params:,} p)" if a.src != a.dst else f" ({params:,} p)"
        arrows.append({
            "name": a.name, "src": a.src, "dst": a.dst, "phase": a.phase, "color": colors[a.phase], "stage": stage.get(a.name),
            "op": a.op.name, "args": {k: str(v) for k, v in a.op.args.items()}, "inputs": list(a.inputs), "map": map_text,
            "aggregate": a.aggregate, "into": a.into, "updates": dict(a.updates), "reflexive": a.src == a.dst,
            "share": share if not isinstance(share, dict) else ", ".join(f"{p}={k}" for p, k in share.items()),
            "params": params, "kernel": kernel_of.get(a.name), "label": label,
            "agent_edges": edges[:max_agent_edges].ravel().tolist(), "agent_edges_total": total,
        })
    return {
        "graph": {"name": spec.name, "description": spec.description, "hash": graph_hash(spec), "step": list(prog_step(spec)),
                  "inputs": dict(spec.inputs), "outputs": dict(spec.outputs), "params": sum(counts.values())},
        "phase_colors": colors, "groups": groups, "arrows": arrows, "kernels": kernels,
        "limits": {"max_agents": max_agents, "max_agent_edges": max_agent_edges}, "trace": None,
    }


def prog_step(spec: GraphSpec) -> tuple[str, ...]:
    from mplp_graph.ir.pretty import safe_schedule

    return tuple(safe_schedule(spec)[0].step)


def _b64(arr: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(arr, dtype="<f4").tobytes()).decode("ascii")


def trace_data(trace: Any) -> dict[str, Any]:
    """The page's replay data: per record one number per agent and step (the value; the L2
    norm over the field's own axes for vectors: message magnitudes), with its range over the
    run and the mean over agents per step; the metric curves."""
    records = []
    for r in trace.records:
        v = np.asarray(trace.values[r.name], np.float32)
        if r.feature_len:
            v = np.sqrt(np.sum(np.square(v.astype(np.float64)), axis=tuple(range(v.ndim - r.feature_len, v.ndim)))).astype(np.float32)
        finite = v[np.isfinite(v)]
        agent_shape = list(v.shape[1:])
        records.append({
            "name": r.name, "kind": r.kind, "group": r.group, "field": r.field, "arrow": r.arrow, "shape": agent_shape,
            "reduce": "norm" if r.feature_len else "value", "feature_shape": list(r.shape[len(r.shape) - r.feature_len:]),
            "lo": float(finite.min()) if finite.size else 0.0, "hi": float(finite.max()) if finite.size else 0.0,
            "mean": [float(x) for x in np.nanmean(np.abs(v).reshape(v.shape[0], -1), axis=1)] if v[0].size else [0.0] * v.shape[0],
            "data": _b64(v),
        })
    metrics = {k: [None if not np.isfinite(x) else float(x) for x in np.asarray(v, np.float64)] for k, v in trace.metrics.items()}
    return {"steps": trace.steps, "records": records, "metrics": metrics, "meta": trace.meta, "file": Path(trace.path).name if trace.path else None}


def _json_block(data: Any) -> str:
    """JSON that cannot end its ``<script>`` block or open a comment: ``<``, ``>``, ``&`` escaped."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _script_hash(code: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(code.encode("utf-8")).digest()).decode() + "'"


def render_html(data: dict[str, Any]) -> str:
    """The page for ``data`` (:func:`graph_data`, with ``trace`` filled in for a replay)."""
    scripts = [_asset("cytoscape.min.js"), _asset("view.js")]
    for code in scripts:
        if "</script" in code.lower():
            raise ValueError("an inlined script contains '</script': it would end its block early")
    csp = ("default-src 'none'; script-src " + " ".join(_script_hash(c) for c in scripts) +
           "; style-src 'unsafe-inline'; img-src data: blob:; connect-src 'none'; base-uri 'none'; form-action 'none'")
    title = html.escape(f"{data['graph']['name']}: mplp-graph view", quote=True)
    body = _asset("view.html")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{csp}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{title}</title>\n<style>\n{_asset('view.css')}\n</style>\n</head>\n<body>\n{body}\n"
        f"<script type=\"application/json\" id=\"mg-data\">{_json_block(data)}</script>\n"
        + "".join(f"<script>{code}</script>\n" for code in scripts)
        + "</body>\n</html>\n"
    )


def view(source: Any, path: str | Path, *, trace: Any = None, max_agents: int = MAX_AGENTS, max_agent_edges: int = MAX_AGENT_EDGES) -> Path:
    """Write the interactive page of ``source`` (a :class:`~mplp_graph.ir.spec.GraphSpec` or a
    compiled :class:`~mplp_graph.runtime.program.Program`) to ``path``, one self-contained HTML
    file that opens from disk with no network. ``trace``: a trace file path or a
    :class:`~mplp_graph.viz.trace.Trace` of this graph (adds the replay). Written atomically."""
    from mplp_graph.meta.checkpoint import atomic_write_bytes, graph_hash
    from mplp_graph.runtime.program import Program, compile_graph
    from mplp_graph.viz.trace import Trace, TraceError, read_trace

    prog = source if isinstance(source, Program) else compile_graph(source)
    if max_agents < 1 or max_agent_edges < 0:
        raise ValueError(f"max_agents must be >= 1 and max_agent_edges >= 0, got {max_agents} and {max_agent_edges}")
    data = graph_data(prog, max_agents=max_agents, max_agent_edges=max_agent_edges)
    if trace is not None:
        if not isinstance(trace, Trace):
            trace = read_trace(trace, prog.spec)
        elif trace.graph_hash != graph_hash(prog.spec):
            raise TraceError(f"the trace was recorded from graph {trace.graph_name!r}, not from {prog.spec.name!r} (their hashes differ)")
        data["trace"] = trace_data(trace)
    path = Path(path)
    atomic_write_bytes(path, render_html(data).encode("utf-8"))
    return path
