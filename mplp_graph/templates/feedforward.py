"""Feedforward template: a dense net as a graph of agents (paper section 3.1; the authors'
``tf_layers.py`` ``MPDense``).

Groups per dense layer ``l`` (``n_in -> n_out``):

* ``W{l}`` (kind ``weight``, shape ``[n_in, n_out]``): ``w`` the weight, ``x`` the stored
  forward input ``x_i`` (constant along ``j``), ``g`` the incoming message (constant along ``i``).
* ``b{l}`` (kind ``bias``, shape ``[n_out]``): ``b``, ``z`` the pre-bias sum ``(xW)_j``, ``g``.
* ``a{l}`` (kind ``activation``) for hidden layers: ``pre`` the pre-activation input, ``g``.

then an optional ``softmax`` group and the ``loss`` group (``pred``, ``target``, ``loss``, ``g``).
The forward arrows are ``x -> W0 (i -> i j)``, ``W -> b (i j -> j, sum of w*x)``,
``b -> a (identity, z + b)``, ``a -> W_next (i -> i j)``... exactly the paper's local view
``y_ij = w_ij x_i``, ``y_j = sum_i y_ij``.

``protocol="backprop"`` adds backward arrows that pass exact chain-rule gradients with ``sum``
aggregation and update ``p -= lr * grad`` (averaged over the batch): gradient descent as a
special case of message passing. ``protocol="none"`` builds the forward graph only.
"""

from __future__ import annotations

from typing import Literal, Sequence

from mplp_graph.errors import NotDifferentiableError
from mplp_graph.ir.spec import ArrowSpec, FieldSpec, GraphSpec, GroupSpec, OpRef, ScheduleSpec

ACTIVATIONS = ("sigmoid", "relu", "tanh", "step", "identity")
LOSSES = ("l2", "ce")
W_INIT_STD = 0.05  # W ~ N(0, 0.05), b = 0, as the authors' tf_layers.py MPDense initialises them

_B = FieldSpec(batched=True)


def _arrow(name, src, dst, op, inputs, *, phase="forward", map=None, aggregate="mean", into=None, updates=None, **args):
    return ArrowSpec(
        name=name,
        src=src,
        dst=dst,
        phase=phase,
        op=OpRef(name=op, args=args),
        inputs=tuple(inputs),
        map=map,
        aggregate=aggregate,
        into=into,
        updates=updates or {},
    )


def feedforward(
    sizes: Sequence[int],
    activation: str = "relu",
    loss: Literal["l2", "ce"] = "l2",
    *,
    softmax: bool | None = None,
    protocol: Literal["backprop", "none"] = "backprop",
    lr: float = 0.1,
    name: str | None = None,
) -> GraphSpec:
    """A dense net ``sizes[0] -> ... -> sizes[-1]`` as a graph spec.

    Args:
      sizes: layer widths, input first (e.g. ``(1, 20, 20, 1)``).
      activation: hidden activation, one of ``ACTIVATIONS``.
      loss: ``l2`` (regression) or ``ce`` (classification).
      softmax: put a softmax before the loss (default: True for ``ce``).
      protocol: ``backprop`` adds exact-gradient backward arrows and SGD updates with ``lr``.
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or any(s < 1 for s in sizes):
        raise ValueError(f"sizes must list at least two positive widths, got {sizes}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if protocol not in ("backprop", "none"):
        raise ValueError(f"protocol must be 'backprop' or 'none', got {protocol!r}")
    if protocol == "backprop" and activation in ("step",):
        raise NotDifferentiableError(
            f"activation {activation!r} has no gradient, so the backprop protocol cannot pass through it; "
            "use protocol='none' (and a learned protocol) or a differentiable activation"
        )
    softmax = (loss == "ce") if softmax is None else softmax
    n_layers = len(sizes) - 1
    n_out = sizes[-1]
    groups: dict[str, GroupSpec] = {"x": GroupSpec(kind="input", shape=(sizes[0],), state={"value": _B})}
    fw: list[ArrowSpec] = []
    bw: list[ArrowSpec] = []
    prev, prev_field = "x", "value"  # the group/field feeding the next dense layer
    prev_op = "identity"
    for l in range(n_layers):
        W, b = f"W{l}", f"b{l}"
        groups[W] = GroupSpec(
            kind="weight",
            shape=(sizes[l], sizes[l + 1]),
            state={
                "w": FieldSpec(init={"kind": "normal", "std": W_INIT_STD}),
                "x": FieldSpec(batched=True, constant_along=(1,)),
                "g": FieldSpec(batched=True, constant_along=(0,)),
            },
        )
        groups[b] = GroupSpec(kind="bias", shape=(sizes[l + 1],), state={"b": FieldSpec(), "z": _B, "g": _B})
        pre_field = "pre" if prev != "x" else "value"
        fw.append(_arrow(f"{prev}->{W}", prev, W, prev_op, [pre_field if prev != "x" else prev_field], map="i -> i j", into="x"))
        fw.append(_arrow(f"{W}->{b}", W, b, "mul", ["w", "x"], map="i j -> j", aggregate="sum", into="z"))
        last = l == n_layers - 1
        if not last:
            a = f"a{l}"
            groups[a] = GroupSpec(kind="activation", shape=(sizes[l + 1],), state={"pre": _B, "g": _B})
            fw.append(_arrow(f"{b}->{a}", b, a, "add", ["z", "b"], into="pre"))
            prev, prev_op = a, activation
        # backward: bias gets g, updates b, passes g on to its weights; weights update and pass sum_j w_ij g_j
        bw.append(_arrow(f"{b}.sgd", b, b, "sgd", ["b", "g"], phase="backward", updates={"b": "message"}, lr=lr))
        bw.append(_arrow(f"{b}->{W}", b, W, "identity", ["g"], phase="backward", map="j -> i j", into="g"))
        bw.append(_arrow(f"{W}.sgd", W, W, "sgd_mul", ["w", "x", "g"], phase="backward", updates={"w": "message"}, lr=lr))
        if l > 0:
            a_prev = f"a{l - 1}"
            bw.append(_arrow(f"{W}->{a_prev}", W, a_prev, "mul", ["w", "g"], phase="backward", map="i j -> i", aggregate="sum", into="g"))
            bw.append(_arrow(f"{a_prev}->b{l - 1}", a_prev, f"b{l - 1}", f"{activation}_grad", ["pre", "g"], phase="backward", into="g"))
    last_b = f"b{n_layers - 1}"
    loss_state = {"pred": _B, "target": _B, "loss": _B, "g": _B}
    groups["loss"] = GroupSpec(kind="loss", shape=(n_out,), state=loss_state)
    if softmax:
        groups["softmax"] = GroupSpec(
            kind="softmax",
            shape=(n_out,),
            state={k: _B for k in ("z", "zmax", "e", "den", "p", "g", "pg")},
        )
        fw += [
            _arrow(f"{last_b}->softmax", last_b, "softmax", "add", ["z", "b"], into="z"),
            # every agent receives the max (then the sum) over all agents: the all-to-all map i -> j
            _arrow("softmax.max", "softmax", "softmax", "identity", ["z"], map="i -> j", aggregate="max", into="zmax"),
            _arrow("softmax.exp", "softmax", "softmax", "exp_shift", ["z", "zmax"], into="e"),
            _arrow("softmax.sum", "softmax", "softmax", "identity", ["e"], map="i -> j", aggregate="sum", into="den"),
            _arrow("softmax.div", "softmax", "softmax", "div", ["e", "den"], into="p"),
            _arrow("softmax->loss", "softmax", "loss", "identity", ["p"], into="pred"),
        ]
        bw += [
            _arrow("loss->softmax", "loss", "softmax", f"{loss}_grad", ["pred", "target"], phase="backward", into="g"),
            _arrow("softmax.pg", "softmax", "softmax", "mul", ["p", "g"], phase="backward", map="i -> j", aggregate="sum", into="pg"),
            _arrow(f"softmax->{last_b}", "softmax", last_b, "softmax_grad", ["p", "g", "pg"], phase="backward", into="g"),
        ]
    else:
        fw.append(_arrow(f"{last_b}->loss", last_b, "loss", "add", ["z", "b"], into="pred"))
        bw.append(_arrow(f"loss->{last_b}", "loss", last_b, f"{loss}_grad", ["pred", "target"], phase="backward", into="g"))
    fw.append(_arrow("loss.value", "loss", "loss", loss, ["pred", "target"], into="loss"))
    arrows = fw + (bw if protocol == "backprop" else [])
    # drop gradient fields that no arrow uses (protocol "none"; the loss node before a softmax)
    used = {(a.src, f) for a in arrows for f in a.inputs} | {(a.dst, a.into) for a in arrows if a.into}
    groups = {
        g: grp.model_copy(update={"state": {f: v for f, v in grp.state.items() if f not in ("g", "pg") or (g, f) in used}})
        for g, grp in groups.items()
    }
    dims = "-".join(str(s) for s in sizes)
    return GraphSpec(
        name=name or f"feedforward_{dims}_{activation}_{loss}",
        description=f"dense net ({', '.join(map(str, sizes))}), {activation} hidden, {'softmax + ' if softmax else ''}{loss} loss, protocol {protocol}",
        groups=groups,
        arrows=tuple(arrows),
        schedule=ScheduleSpec(),
        inputs={"x": "x.value", "y": "loss.target"},
        outputs={"pred": "loss.pred", "loss": "loss.loss"},
    )
