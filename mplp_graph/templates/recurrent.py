"""Recurrent template: an Elman network unrolled over a short sequence.

``h_t = act(x_t Wx + h_{t-1} Wh + b)`` for ``t < T`` (``h_{-1} = 0``), then
``pred = h_{T-1} Wo + bo`` and an elementwise loss. Unrolling does not copy the weights: each
synapse of ``Wx`` and ``Wh`` is one agent that takes part in every time step, so it stores
one forward input per step (fields ``x0 .. x{T-1}``) and receives one gradient per step
(``g0 ..``); the hidden units likewise keep ``pre{t}`` and ``g{t}`` (agent state per time step,
paper appendix A). Groups:

=======  =============  ===================================================================
``x``    ``[T, n_in]``  the input sequence (batch key ``x``: ``[B, T, n_in]``)
``Wx``   ``[n_in, H]``  input synapses; ``x{t}`` is filled from row ``t`` of ``x`` through an
                        explicit edge list (an index map cannot pick one row)
``Wh``   ``[H, H]``     recurrent synapses; ``x{t}`` = ``h_{t-1}`` for ``t >= 1``
``b``    ``[H]``        hidden biases; ``z{t}`` sums ``Wx`` and ``Wh`` messages (one inbox)
``h``    ``[H]``        hidden units, ``pre{t}``; ``Wo``/``bo``/``loss``: the readout of ``h_{T-1}``
=======  =============  ===================================================================

``protocol="backprop"`` is backpropagation through time as message passing: the gradients
travel back step by step (``Wh -> h`` with ``sum``), and every parameter used at several
steps is updated once with the sum of its per-step gradients (ops ``sgd_sum``,
``sgd_mul_sum``), which equals ``jax.grad`` of the unrolled loss followed by SGD.
"""

from __future__ import annotations

from typing import Literal

from mplp_graph.errors import NotDifferentiableError
from mplp_graph.ir.spec import ArrowSpec, FieldSpec, GraphSpec, GroupSpec, OpRef
from mplp_graph.templates.feedforward import W_INIT_STD

ACTIVATIONS = ("tanh", "sigmoid", "relu", "step", "identity")
_B = FieldSpec(batched=True)


def _arrow(name, src, dst, op, inputs, *, phase="forward", map=None, edges=None, aggregate="mean", into=None, updates=None, **args) -> ArrowSpec:
    return ArrowSpec(
        name=name, src=src, dst=dst, phase=phase, op=OpRef(name=op, args=args), inputs=tuple(inputs),
        map=map, edges=edges, aggregate=aggregate, into=into, updates=updates or {},
    )


def row_edges(t: int, n_in: int, hidden: int) -> tuple[tuple[int, int], ...]:
    """Edges from agent ``(t, i)`` of ``x [T, n_in]`` to every synapse ``(i, j)`` of ``Wx``."""
    return tuple((t * n_in + i, i * hidden + j) for i in range(n_in) for j in range(hidden))


def rnn(
    n_in: int = 1,
    hidden: int = 8,
    n_out: int = 1,
    steps: int = 3,
    activation: str = "tanh",
    loss: Literal["l2"] = "l2",
    *,
    protocol: Literal["backprop", "none"] = "backprop",
    lr: float = 0.1,
    name: str | None = None,
) -> GraphSpec:
    """An Elman RNN unrolled over ``steps`` time steps (module docstring)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if min(n_in, hidden, n_out, steps) < 1:
        raise ValueError(f"n_in, hidden, n_out and steps must be at least 1, got {(n_in, hidden, n_out, steps)}")
    if loss != "l2":
        raise ValueError(f"loss must be 'l2', got {loss!r}")
    if protocol not in ("backprop", "none"):
        raise ValueError(f"protocol must be 'backprop' or 'none', got {protocol!r}")
    if protocol == "backprop" and activation == "step":
        raise NotDifferentiableError(
            "activation 'step' has no gradient, so backpropagation through time cannot pass through it; "
            "use protocol='none' (and a learned protocol) or a differentiable activation"
        )
    T, H = steps, hidden
    bp = protocol == "backprop"
    w = FieldSpec(init={"kind": "normal", "std": W_INIT_STD})
    per_t = lambda prefix, ts, **kw: {f"{prefix}{t}": FieldSpec(batched=True, **kw) for t in ts}  # noqa: E731
    rec = range(1, T)
    groups = {
        "x": GroupSpec(kind="input", shape=(T, n_in), state={"value": _B}),
        "Wx": GroupSpec(kind="weight", shape=(n_in, H), state={"w": w, **per_t("x", range(T)), **(per_t("g", range(T), constant_along=(0,)) if bp else {})}),
        "Wh": GroupSpec(kind="weight", shape=(H, H), state={"w": w, **per_t("x", rec, constant_along=(1,)), **(per_t("g", rec, constant_along=(0,)) if bp else {})}),
        "b": GroupSpec(kind="bias", shape=(H,), state={"b": FieldSpec(), **per_t("z", range(T)), **(per_t("g", range(T)) if bp else {})}),
        "h": GroupSpec(kind="activation", shape=(H,), state={**per_t("pre", range(T)), **(per_t("g", range(T)) if bp else {})}),
        "Wo": GroupSpec(kind="weight", shape=(H, n_out), state={"w": w, "x": FieldSpec(batched=True, constant_along=(1,)), **({"g": FieldSpec(batched=True, constant_along=(0,))} if bp else {})}),
        "bo": GroupSpec(kind="bias", shape=(n_out,), state={"b": FieldSpec(), "z": _B, **({"g": _B} if bp else {})}),
        "loss": GroupSpec(kind="loss", shape=(n_out,), state={"pred": _B, "target": _B, "loss": _B}),
    }
    fw: list[ArrowSpec] = []
    for t in range(T):
        fw.append(_arrow(f"x->Wx@{t}", "x", "Wx", "identity", ["value"], edges=row_edges(t, n_in, H), aggregate="sum", into=f"x{t}"))
        fw.append(_arrow(f"Wx->b@{t}", "Wx", "b", "mul", ["w", f"x{t}"], map="i j -> j", aggregate="sum", into=f"z{t}"))
        if t > 0:  # h_{t-1} reaches the recurrent synapses, which add into the same inbox z{t}
            fw.append(_arrow(f"h->Wh@{t}", "h", "Wh", activation, [f"pre{t - 1}"], map="i -> i j", into=f"x{t}"))
            fw.append(_arrow(f"Wh->b@{t}", "Wh", "b", "mul", ["w", f"x{t}"], map="i j -> j", aggregate="sum", into=f"z{t}"))
        fw.append(_arrow(f"b->h@{t}", "b", "h", "add", [f"z{t}", "b"], into=f"pre{t}"))
    fw += [
        _arrow("h->Wo", "h", "Wo", activation, [f"pre{T - 1}"], map="i -> i j", into="x"),
        _arrow("Wo->bo", "Wo", "bo", "mul", ["w", "x"], map="i j -> j", aggregate="sum", into="z"),
        _arrow("bo->loss", "bo", "loss", "add", ["z", "b"], into="pred"),
        _arrow("loss.value", "loss", "loss", loss, ["pred", "target"], into="loss"),
    ]
    bw: list[ArrowSpec] = []
    if bp:
        bk = dict(phase="backward")
        bw += [
            _arrow("loss->bo", "loss", "bo", "l2_grad", ["pred", "target"], into="g", **bk),
            _arrow("bo.sgd", "bo", "bo", "sgd", ["b", "g"], updates={"b": "message"}, lr=lr, **bk),
            _arrow("bo->Wo", "bo", "Wo", "identity", ["g"], map="j -> i j", into="g", **bk),
            _arrow("Wo.sgd", "Wo", "Wo", "sgd_mul", ["w", "x", "g"], updates={"w": "message"}, lr=lr, **bk),
            _arrow("Wo->h", "Wo", "h", "mul", ["w", "g"], map="i j -> i", aggregate="sum", into=f"g{T - 1}", **bk),
        ]
        grad = f"{activation}_grad"
        for t in reversed(range(T)):  # through time, last step first
            bw.append(_arrow(f"h->b@{t}", "h", "b", grad, [f"pre{t}", f"g{t}"], into=f"g{t}", **bk))
            bw.append(_arrow(f"b->Wx@{t}", "b", "Wx", "identity", [f"g{t}"], map="j -> i j", into=f"g{t}", **bk))
            if t > 0:
                bw.append(_arrow(f"b->Wh@{t}", "b", "Wh", "identity", [f"g{t}"], map="j -> i j", into=f"g{t}", **bk))
                bw.append(_arrow(f"Wh->h@{t}", "Wh", "h", "mul", ["w", f"g{t}"], map="i j -> i", aggregate="sum", into=f"g{t - 1}", **bk))
        # one update per parameter with the sum of its per-step gradients (after every message used it)
        bw.append(_arrow("b.sgd", "b", "b", "sgd_sum", ["b", *(f"g{t}" for t in range(T))], updates={"b": "message"}, lr=lr, **bk))
        pairs = lambda ts: [f for t in ts for f in (f"x{t}", f"g{t}")]  # noqa: E731
        bw.append(_arrow("Wx.sgd", "Wx", "Wx", "sgd_mul_sum", ["w", *pairs(range(T))], updates={"w": "message"}, lr=lr, **bk))
        if T > 1:
            bw.append(_arrow("Wh.sgd", "Wh", "Wh", "sgd_mul_sum", ["w", *pairs(rec)], updates={"w": "message"}, lr=lr, **bk))
    return GraphSpec(
        name=name or f"rnn_{n_in}-{H}-{n_out}_T{T}_{activation}_{loss}",
        description=f"Elman RNN (input {n_in}, hidden {H}, output {n_out}) unrolled over {T} steps, {activation}, {loss} loss "
        f"on the last step's readout, protocol {protocol}",
        groups=groups,
        arrows=tuple(fw + bw),
        inputs={"x": "x.value", "y": "loss.target"},
        outputs={"pred": "loss.pred", "loss": "loss.loss"},
    )
