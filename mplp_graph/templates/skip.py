"""Skip-connection and residual DAG nets: a dense chain (:func:`feedforward`) plus connections
that jump over layers, so some agents receive messages from several groups.

Nodes are numbered along the chain: node 0 is the input ``x``, node ``k`` (``0 < k < L``) is
the hidden activation ``a{k-1}`` (the output of dense layer ``k-1``), node ``L`` the output. A
connection ``(u, v)`` with ``v > u`` carries node ``u``'s output (its activation, or ``x``)
into the pre-activation of node ``v``, i.e. into the inbox ``b{v-1}.z`` that layer ``v-1``'s
synapses already send into (``aggregate: sum``):

* ``skips``: a dense connection through its own synapses ``S{u}_{v}`` (shape
  ``[sizes[u], sizes[v]]``, ``v >= u + 2``: it jumps over a layer): ``pre_v += act(pre_u) S``;
* ``residual``: an identity connection (``sizes[u] == sizes[v]``, ``v >= u + 1``), no weights:
  ``pre_v += act(pre_u)``; ``(k, k + 1)`` is the classic residual layer
  ``h_{k+1} = act(h_k W + b + h_k)``.

Backward, the backprop protocol sends the gradient along every connection: bias ``b{v-1}``
sends ``g`` to the skip synapses too (``j -> i j``), and node ``u``'s gradient inbox
``a{u-1}.g`` sums the messages of every group it feeds. :func:`mplp_skip` does the same with
learned messages: node ``u``'s message inbox averages over every synapse and connection it
feeds (the paper's eq. 5 over the whole fan-out).
"""

from __future__ import annotations

from typing import Literal, Sequence

from mplp_graph.ir.spec import ArrowSpec, FieldSpec, GraphSpec, GroupSpec, OpRef
from mplp_graph.templates.feedforward import W_INIT_STD, feedforward
from mplp_graph.templates.mplp import _add_fields, learner_arrow, learner_share, mplp_feedforward

_B = FieldSpec(batched=True)
Link = tuple[int, int]


def _arrow(name, src, dst, op, inputs, *, phase="forward", map=None, aggregate="mean", into=None, updates=None, **args) -> ArrowSpec:
    return ArrowSpec(
        name=name, src=src, dst=dst, phase=phase, op=OpRef(name=op, args=args), inputs=tuple(inputs),
        map=map, aggregate=aggregate, into=into, updates=updates or {},
    )


def check_links(sizes: Sequence[int], skips: Sequence[Link], residual: Sequence[Link]) -> None:
    n_nodes = len(sizes)
    seen: set[Link] = set()
    for kind, links in (("skips", skips), ("residual", residual)):
        jump = 2 if kind == "skips" else 1  # a dense link parallel to one layer would only duplicate it
        for u, v in links:
            if not (0 <= u and u + jump <= v < n_nodes):
                raise ValueError(
                    f"{kind} connection ({u}, {v}) must go forward{' over at least one layer' if jump == 2 else ''}: "
                    f"0 <= u and u + {jump} <= v <= {n_nodes - 1} (nodes 0..{n_nodes - 1}: the input, the hidden layers, the output)"
                )
            if (u, v) in seen:
                raise ValueError(f"connection ({u}, {v}) is given twice")
            seen.add((u, v))
            if kind == "residual" and sizes[u] != sizes[v]:
                raise ValueError(f"residual connection ({u}, {v}) needs equal widths, got {sizes[u]} and {sizes[v]}; use a dense skip")


def _source(u: int, activation: str) -> tuple[str, str, str]:
    """Group, field and op giving node ``u``'s output."""
    return ("x", "value", "identity") if u == 0 else (f"a{u - 1}", "pre", activation)


def _forward_links(spec: GraphSpec, sizes, skips, residual, activation: str, fields) -> tuple[dict, list[ArrowSpec]]:
    """Skip groups (with ``fields``) and the forward arrows of every connection."""
    groups = dict(spec.groups)
    arrows = []
    for u, v in skips:
        S, (src, field, op) = f"S{u}_{v}", _source(u, activation)
        groups[S] = GroupSpec(kind="weight", shape=(sizes[u], sizes[v]), state=dict(fields))
        arrows.append(_arrow(f"{src}->{S}", src, S, op, [field], map="i -> i j", into="x"))
        arrows.append(_arrow(f"{S}->b{v - 1}", S, f"b{v - 1}", "mul", ["w", "x"], map="i j -> j", aggregate="sum", into="z"))
    for u, v in residual:
        src, field, op = _source(u, activation)
        arrows.append(_arrow(f"{src}=>b{v - 1}", src, f"b{v - 1}", op, [field], aggregate="sum", into="z"))
    return groups, arrows


def _name(prefix: str, sizes, skips, residual, activation, loss) -> str:
    dims = "-".join(str(s) for s in sizes)
    links = "".join(f"_s{u}{v}" for u, v in skips) + "".join(f"_r{u}{v}" for u, v in residual)
    return f"{prefix}_{dims}{links}_{activation}_{loss}"


def skip_feedforward(
    sizes: Sequence[int],
    skips: Sequence[Link] = (),
    residual: Sequence[Link] = (),
    activation: str = "relu",
    loss: Literal["l2", "ce"] = "l2",
    *,
    protocol: Literal["backprop", "none"] = "backprop",
    lr: float = 0.1,
    name: str | None = None,
) -> GraphSpec:
    """A dense chain ``sizes`` with extra ``skips`` (dense) and ``residual`` (identity)
    connections ``(u, v)`` between nodes (module docstring); ``protocol`` as :func:`feedforward`."""
    skips, residual = [tuple(s) for s in skips], [tuple(r) for r in residual]
    check_links(sizes, skips, residual)
    base = feedforward(sizes, activation, loss, protocol=protocol, lr=lr)
    fields = {"w": FieldSpec(init={"kind": "normal", "std": W_INIT_STD}), "x": FieldSpec(batched=True, constant_along=(1,))}
    if protocol == "backprop":
        fields["g"] = FieldSpec(batched=True, constant_along=(0,))
    groups, fw = _forward_links(base, sizes, skips, residual, activation, fields)
    bw = []
    if protocol == "backprop":
        for u, v in skips:
            S, b = f"S{u}_{v}", f"b{v - 1}"
            bw.append(_arrow(f"{b}->{S}", b, S, "identity", ["g"], phase="backward", map="j -> i j", into="g"))
            bw.append(_arrow(f"{S}.sgd", S, S, "sgd_mul", ["w", "x", "g"], phase="backward", updates={"w": "message"}, lr=lr))
            if u > 0:  # joins a{u-1}'s gradient inbox: sum over everything node u feeds
                bw.append(_arrow(f"{S}->a{u - 1}", S, f"a{u - 1}", "mul", ["w", "g"], phase="backward", map="i j -> i", aggregate="sum", into="g"))
        for u, v in residual:
            if u > 0:
                bw.append(_arrow(f"b{v - 1}=>a{u - 1}", f"b{v - 1}", f"a{u - 1}", "identity", ["g"], phase="backward", aggregate="sum", into="g"))
    fwd = [a for a in base.arrows if a.phase == "forward"]
    back = [a for a in base.arrows if a.phase != "forward"]
    links = ", ".join([f"dense {u}->{v}" for u, v in skips] + [f"identity {u}->{v}" for u, v in residual]) or "none"
    return base.model_copy(
        update={
            "name": name or _name("skip", sizes, skips, residual, activation, loss),
            "description": f"dense net ({', '.join(map(str, sizes))}), {activation}, {loss} loss, skip connections: {links}, protocol {protocol}",
            "groups": groups,
            "arrows": tuple(fwd + fw + back + bw),
        }
    )


def mplp_skip(
    sizes: Sequence[int],
    skips: Sequence[Link] = (),
    residual: Sequence[Link] = (),
    activation: str = "relu",
    loss: Literal["l2", "ce"] = "l2",
    *,
    learner: Literal["gru", "mlp"] = "gru",
    msg: int = 8,
    hidden: int = 15,
    sharing: Literal["none", "layers", "layers+norm"] = "none",
    standardize: Literal["frozen", "online"] = "frozen",
    out_scale_init: float = 0.01,
    hybrid: bool = False,
    name: str | None = None,
) -> GraphSpec:
    """:func:`skip_feedforward`'s net trained by a learned protocol (:func:`mplp_feedforward`).

    A bias ``b{v-1}`` receiving connections runs its learner as a reflexive arrow
    ``b{v-1}.learn`` whose message lands in its own field ``mo``; identity arrows then send ``mo``
    to every group feeding it (``W{v-1}``, each ``S{u}_{v}``, and ``a{u-1}`` for a residual),
    so the bias is updated once however many groups it answers. Skip synapses run weight
    learners (``S{u}_{v}->a{u-1}``, or ``S0_{v}.learn`` whose message is dropped like the first
    layer's). ``hybrid``: as in :func:`mplp_feedforward`, the chain-rule gradient also travels
    along the connections (``<arrow>:grad``) and every learner gets ``g`` as its last input."""
    skips, residual = [tuple(s) for s in skips], [tuple(r) for r in residual]
    check_links(sizes, skips, residual)
    spec = mplp_feedforward(
        sizes, activation, loss, learner=learner, msg=msg, hidden=hidden, sharing=sharing,
        standardize=standardize, out_scale_init=out_scale_init, hybrid=hybrid,
    )
    stateful = learner == "gru"
    g = ["g"] if hybrid else []
    c_param = 1 + hidden + msg
    m_w = FieldSpec(shape=(msg,), batched=True, constant_along=(0,))
    fields = {"w": FieldSpec(init={"kind": "normal", "std": W_INIT_STD}), "x": FieldSpec(batched=True, constant_along=(1,)), "m": m_w}
    if stateful:
        fields["carry"] = FieldSpec(shape=(c_param,), batched=True)
    if hybrid:
        fields["g"] = FieldSpec(batched=True, constant_along=(0,))
    groups, fw = _forward_links(spec, sizes, skips, residual, activation, fields)

    def learn(name, src, dst, inputs, **kw) -> ArrowSpec:
        return learner_arrow(name, src, dst, inputs, learner=learner, msg=msg, hidden=hidden, standardize=standardize, out_scale_init=out_scale_init, **kw)

    fed = sorted({v for _, v in skips} | {v for _, v in residual})
    arrows = []
    for a in spec.arrows:
        v = next((v for v in fed if a.name == f"b{v - 1}->W{v - 1}"), None)
        if v is None:
            arrows.append(a)
            continue
        b = f"b{v - 1}"
        groups[b] = _add_fields(groups[b], mo=FieldSpec(shape=(msg,), batched=True))
        # the bias learner answers once, into its own outbox; identity arrows deliver it
        arrows.append(a.model_copy(update={"name": f"{b}.learn", "dst": b, "map": None, "into": "mo"}))
        arrows.append(_arrow(f"{b}->W{v - 1}", b, f"W{v - 1}", "identity", ["mo"], phase="backward", map="j -> i j", into="m"))
        for u, vv in skips:
            if vv == v:
                arrows.append(_arrow(f"{b}->S{u}_{v}", b, f"S{u}_{v}", "identity", ["mo"], phase="backward", map="j -> i j", into="m"))
        for u, vv in residual:
            if vv == v and u > 0:
                arrows.append(_arrow(f"{b}=>a{u - 1}", b, f"a{u - 1}", "identity", ["mo"], phase="backward", into="m"))
    if hybrid:  # the chain rule along the connections, as skip_feedforward's backprop protocol
        for u, v in skips:
            S, b = f"S{u}_{v}", f"b{v - 1}"
            arrows.append(_arrow(f"{b}->{S}:grad", b, S, "identity", ["g"], phase="backward", map="j -> i j", into="g"))
            if u > 0:
                arrows.append(_arrow(f"{S}->a{u - 1}:grad", S, f"a{u - 1}", "mul", ["w", "g"], phase="backward", map="i j -> i", aggregate="sum", into="g"))
        for u, v in residual:
            if u > 0:
                arrows.append(_arrow(f"b{v - 1}=>a{u - 1}:grad", f"b{v - 1}", f"a{u - 1}", "identity", ["g"], phase="backward", aggregate="sum", into="g"))
    for u, v in skips:
        S = f"S{u}_{v}"
        if u > 0:  # joins a{u-1}'s message inbox (mean over the whole fan-out, eq. 5)
            nm = f"{S}->a{u - 1}"
            arrows.append(learn(nm, S, f"a{u - 1}", ["m", "w", "x"] + g, param="w", map="i j -> i", share=learner_share(sharing, learner, "W", nm)))
        else:
            nm = f"{S}.learn"
            arrows.append(learn(nm, S, S, ["m", "w", "x"] + g, param="w", into=None, share=learner_share(sharing, learner, "W", nm)))
    fwd = [a for a in arrows if a.phase == "forward"]
    back = [a for a in arrows if a.phase != "forward"]
    links = ", ".join([f"dense {u}->{v}" for u, v in skips] + [f"identity {u}->{v}" for u, v in residual]) or "none"
    return spec.model_copy(
        update={
            "name": name or _name("mplp_skip", sizes, skips, residual, activation, loss) + ("_hybrid" if hybrid else ""),
            "description": spec.description.replace(", trained", f", skip connections: {links}, trained", 1),
            "groups": groups,
            "arrows": tuple(fwd + fw + back),
        }
    )
