"""MPLP template: a dense net whose backward pass is a learned message passing protocol.

The forward graph is :func:`feedforward` with ``protocol="none"``. Backward arrows run a learner
(``mplp_gru`` stateful, ``mplp_mlp`` stateless) at every agent, in the reference's routing
(the authors' ``tf_layers.py``, ``MPNetwork._backward`` and ``MPDense._backward``):
loss -> (softmax) -> bias -> weights -> activation -> bias -> ...;
**weights receive their bias node's message** (``j -> i j``), weight messages are averaged over
the fan-out (``i j -> i``, mean: paper eq. 5), and the first layer's outgoing message is dropped.

Learner inputs, in the reference's concatenation order (``core.py``
``ConcatenateInputsAndStates``: the message, then the states each layer of ``tf_layers.py`` lists):

=========  ===================================================
weight     m_j (from the bias), w_ij, x_i (stored input)
bias       m_j, b_j, z_j = (xW)_j (pre-bias sum)
activation m_i, pre-activation input
softmax    m_i, z_i, z_i - max z, exp(z_i - max z), sum exp
L2 loss    loss_i (the first, one-dimensional message; eq. 2), pred_i, t_i, t_i - pred_i
CE loss    loss_i, clip(p_i), t_i, log clip(p_i)
=========  ===================================================

Sharing (paper sections 3.1 and 4.2, "Parameter sharing"): ``none`` (one learner per tensor),
``layers`` (one W learner and one b learner across all dense layers, standardizers per layer, as
the MNIST experiment) or ``layers+norm`` (standardizers shared too).

``hybrid=True`` (the paper's section 5 suggestion, "backpropagate the gradient of the loss
alongside a learned message"): the chain-rule arrows of the backprop protocol also run, without
their SGD updates (renamed ``<arrow>:grad``), and every weight, bias, activation and softmax
learner gets the exact gradient ``g`` at its agent as one more input channel, after its own
(weight ``[m, w, x, g]``, bias ``[m, b, z, g]``, activation ``[m, pre, g]``). The gradient is
standardized like every other channel; the learner decides what to do with it.
"""

from __future__ import annotations

from typing import Literal, Sequence

from mplp_graph.errors import NotDifferentiableError
from mplp_graph.ir.spec import ArrowSpec, FieldSpec, GraphSpec, GroupSpec, OpRef
from mplp_graph.templates.feedforward import feedforward

SHARING = ("none", "layers", "layers+norm")


def _add_fields(group: GroupSpec, **fields: FieldSpec) -> GroupSpec:
    return group.model_copy(update={"state": {**group.state, **fields}})


def learner_arrow(
    name: str, src: str, dst: str, inputs, *, learner: str, msg: int, hidden: int, standardize: str,
    out_scale_init: float, param: str | None = None, map: str | None = None, into: str | None = "m",
    share=None, updates=None, matmul: str = "float32", first_layer: str = "split", chunk_rows: int = 0,
) -> ArrowSpec:
    """A backward arrow running a learner on ``[carry?] + inputs`` (the carry first for the
    stateful learner); ``param`` names the input it updates (written back through ``updates``)."""
    stateful = learner == "gru"
    args: dict = {"msg": msg, "standardize": standardize}
    if matmul != "float32":  # the default is left out, so existing graphs keep their hash
        args["matmul"] = matmul
    if first_layer != "split":  # likewise
        args["first_layer"] = first_layer
    if chunk_rows:  # likewise
        args["chunk_rows"] = chunk_rows
    ins = list(inputs)
    if stateful:
        ins = ["carry"] + ins
        args.update(hidden=hidden, carry=0)
    ups = dict(updates or {})
    if stateful:
        ups["carry"] = "carry"
    if param is not None:
        args["param"] = ins.index(param)
        args["out_scale_init"] = out_scale_init
        ups[param] = "param"
    return ArrowSpec(
        name=name, src=src, dst=dst, phase="backward", op=OpRef(name=f"mplp_{learner}", args=args),
        inputs=tuple(ins), map=map, aggregate="mean", into=into, updates=ups, share=share,
    )


def learner_share(sharing: str, learner: str, kind: str, layer_arrow: str):
    """The share key of a parameter learner (``kind``: ``W`` or ``b``) under a sharing mode."""
    if sharing == "none":
        return None
    if sharing == "layers":
        stateful = learner == "gru"
        return {"net" if stateful else "f": f"{kind}_net", **({} if stateful else {"g": f"{kind}_net"}), "norm": layer_arrow}
    return f"{kind}_shared"


def gradient_arrows(base: GraphSpec) -> list[ArrowSpec]:
    """The backprop protocol's message arrows (not its SGD updates), renamed ``<name>:grad``."""
    return [
        a.model_copy(update={"name": f"{a.name}:grad"})
        for a in base.arrows
        if a.phase == "backward" and a.op.name not in ("sgd", "sgd_mul")
    ]


def mplp_feedforward(
    sizes: Sequence[int],
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
    matmul: Literal["float32", "bfloat16"] = "float32",
    first_layer: Literal["split", "rows"] = "split",
    chunk_rows: int = 0,
    name: str | None = None,
) -> GraphSpec:
    """A dense net trained by a learned protocol. ``msg``: message size; ``hidden``: GRU hidden
    channels (stateful only); the carry of a parameter agent is ``1 + hidden + msg`` wide.
    ``hybrid``: the learners also see the exact loss gradient at their agent (module docstring).
    ``matmul``: the learners' matmul operand type; ``bfloat16`` rounds operands to bfloat16 and
    accumulates in float32, states stay float32 (faster on GPUs; slower on CPUs without AMX).
    ``first_layer``: ``rows`` (default) or ``split``, how a learner's first layer meets its input
    channels (:mod:`mplp_graph.learners.nets`; same numbers up to rounding).
    ``chunk_rows``: run each learner over pieces of about this many agent-examples, each
    rematerialized (0: whole tensors; same math; slower than whole tensors on this CPU since the
    learners run on ``(rows, features)`` matrices, docs/mplp.md)."""
    if sharing not in SHARING:
        raise ValueError(f"sharing must be one of {SHARING}, got {sharing!r}")
    if learner not in ("gru", "mlp"):
        raise ValueError(f"learner must be 'gru' or 'mlp', got {learner!r}")
    if hybrid and activation == "step":
        raise NotDifferentiableError(
            "hybrid=True passes the gradient of the loss to every learner, but activation 'step' has no derivative; "
            "use hybrid=False (a pure learned protocol needs no gradient) or a differentiable activation"
        )
    grads: list[ArrowSpec] = []
    if hybrid:  # the backprop protocol's gradient messages run alongside the learners
        full = feedforward(sizes, activation, loss, protocol="backprop")
        grads = gradient_arrows(full)
        base = full.model_copy(update={"arrows": tuple(a for a in full.arrows if a.phase != "backward")})
    elif activation != "step":
        base = feedforward(sizes, activation, loss, protocol="none")
    else:  # the forward pass may be non-differentiable: MPLP needs no gradient
        base = feedforward(sizes, "relu", loss, protocol="none")
        base = base.model_copy(
            update={"arrows": tuple(a.model_copy(update={"op": OpRef(name="step")}) if a.op.name == "relu" else a for a in base.arrows)}
        )
    stateful = learner == "gru"
    n_layers = len(sizes) - 1
    c_param, c_node = 1 + hidden + msg, hidden + msg
    groups = dict(base.groups)
    arrows = list(base.arrows)
    g = ["g"] if hybrid else []  # the gradient channel, last

    def carry(width: int, **kw) -> dict[str, FieldSpec]:
        return {"carry": FieldSpec(shape=(width,), batched=True, **kw)} if stateful else {}

    def learn(name, src, dst, inputs, **kw) -> ArrowSpec:
        return learner_arrow(
            name, src, dst, inputs, learner=learner, msg=msg, hidden=hidden, standardize=standardize,
            out_scale_init=out_scale_init, matmul=matmul, first_layer=first_layer, chunk_rows=chunk_rows, **kw,
        )

    def share_for(kind: str, layer_arrow: str):
        return learner_share(sharing, learner, kind, layer_arrow)

    m = FieldSpec(shape=(msg,), batched=True)
    # loss node: its first message is the elementwise loss value (paper eq. 2)
    last_b = f"b{n_layers - 1}"
    if loss == "l2":
        groups["loss"] = _add_fields(groups["loss"], diff=FieldSpec(batched=True), **carry(c_node))
        arrows.append(ArrowSpec(name="loss.diff", src="loss", dst="loss", op=OpRef(name="sub"), inputs=("target", "pred"), into="diff"))
        loss_inputs = ["loss", "pred", "target", "diff"]
    else:
        groups["loss"] = _add_fields(groups["loss"], pclip=FieldSpec(batched=True), logp=FieldSpec(batched=True), **carry(c_node))
        arrows.append(ArrowSpec(name="loss.clip", src="loss", dst="loss", op=OpRef(name="clip_prob"), inputs=("pred",), into="pclip"))
        arrows.append(ArrowSpec(name="loss.log", src="loss", dst="loss", op=OpRef(name="log"), inputs=("pclip",), into="logp"))
        loss_inputs = ["loss", "pclip", "target", "logp"]
    if "softmax" in groups:
        groups["softmax"] = _add_fields(groups["softmax"], zs=FieldSpec(batched=True), m=m, **carry(c_node))
        arrows.append(ArrowSpec(name="softmax.shift", src="softmax", dst="softmax", op=OpRef(name="sub"), inputs=("z", "zmax"), into="zs"))
        bw = [learn("loss->softmax", "loss", "softmax", loss_inputs),
              learn(f"softmax->{last_b}", "softmax", last_b, ["m", "z", "zs", "e", "den"] + g)]
    else:
        bw = [learn(f"loss->{last_b}", "loss", last_b, loss_inputs)]
    for l in reversed(range(n_layers)):
        W, b = f"W{l}", f"b{l}"
        groups[W] = _add_fields(groups[W], m=FieldSpec(shape=(msg,), batched=True, constant_along=(0,)), **carry(c_param))
        groups[b] = _add_fields(groups[b], m=m, **carry(c_param))
        bw.append(learn(f"{b}->{W}", b, W, ["m", "b", "z"] + g, param="b", map="j -> i j", share=share_for("b", f"{b}->{W}")))
        if l > 0:
            a = f"a{l - 1}"
            groups[a] = _add_fields(groups[a], m=m, **carry(c_node))
            bw.append(learn(f"{W}->{a}", W, a, ["m", "w", "x"] + g, param="w", map="i j -> i", share=share_for("W", f"{W}->{a}")))
            bw.append(learn(f"{a}->b{l - 1}", a, f"b{l - 1}", ["m", "pre"] + g))
        else:  # the first layer's outgoing message is computed and discarded (as MPNetwork._backward does)
            bw.append(learn(f"{W}.learn", W, W, ["m", "w", "x"] + g, param="w", into=None, share=share_for("W", f"{W}.learn")))
    dims = "-".join(str(s) for s in sizes)
    return base.model_copy(
        update={
            "name": name or f"mplp_{dims}_{activation}_{loss}_{learner}{'_hybrid' if hybrid else ''}",
            "description": f"dense net ({', '.join(map(str, sizes))}), {activation}, {loss} loss, trained by a learned "
            f"{'stateful (GRU)' if stateful else 'stateless (MLP)'} protocol, message {msg}, sharing {sharing}"
            + (", with the loss gradient as an extra learner input (hybrid)" if hybrid else ""),
            "groups": groups,
            "arrows": tuple(arrows + grads + bw),
        }
    )
