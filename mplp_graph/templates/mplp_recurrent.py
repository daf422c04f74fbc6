"""MPLP on a recurrent net: the Elman RNN of :func:`~mplp_graph.templates.recurrent.rnn` whose
backward pass through time is a learned message passing protocol.

The forward graph is ``rnn(..., protocol="none")``: ``h_t = act(x_t Wx + h_{t-1} Wh + b)`` for
``t < T``, ``pred = h_{T-1} Wo + bo``, an L2 loss. Each synapse of ``Wx``/``Wh`` and each unit of
``b``/``h`` is ONE agent that takes part in every time step (it stores ``x{t}``, ``z{t}``,
``pre{t}`` per step). Backward, learners (:mod:`mplp_graph.learners.ops`) replace the messages
of backpropagation through time, on the route BPTT's gradients take (``recurrent.py``'s
``protocol="backprop"``), as :func:`~mplp_graph.templates.mplp.mplp_feedforward` does for a
dense net (paper section 3; the authors' ``tf_layers.py`` ``MPDense``):

* the readout, once: ``loss -> bo -> Wo -> h`` (loss learner; bias learner, whose message goes
  to ``Wo`` (``j -> i j``); weight learner, whose messages reach ``h.m{T-1}`` averaged over the
  fan-out, paper eq. 5);
* then back through time, ``t = T-1, ..., 0``:

  - ``h->b@t``: the activation learner of unit ``h_t`` sends to its bias agent (``b.m{t}``);
  - ``b.learn@t``: the bias learner answers once, into its own field ``mo{t}``, and identity
    arrows ``b->Wx@t``, ``b->Wh@t`` deliver it to both synapse groups feeding that bias
    (``j -> i j``), as a bias answering several groups does in :func:`~mplp_graph.templates.skip.mplp_skip`;
  - ``Wh->h@t`` (``t >= 1``): the recurrent synapse ``(i, j)`` answers unit ``h_{t-1, i}``
    (``h.m{t-1}``, mean over ``j``): this is the message that travels one step back in time;
  - ``Wx.learn@t``: the input synapses' outgoing message is computed and dropped (the input
    sequence has no learner), like the first dense layer's.

Learner inputs, in the reference's order (message first, as ``core.py``
``ConcatenateInputsAndStates`` builds them), per time step ``t``:

==========  ==================================  =============================================
``loss``    ``[carry, loss, pred, t, t - pred]`` (L2, the loss value first: paper eq. 2)
``bo``      ``[carry, m, b, z]``                readout bias
``Wo``      ``[carry, m, w, x]``                ``x = act(pre{T-1})``
``h``       ``[carry, m{t}, pre{t}]``           activation of ``h_t``
``b``       ``[carry, m{t}, b, z{t}]``          ``z{t} = x_t Wx + h_{t-1} Wh`` (pre-bias sum)
``Wx``      ``[carry, m{t}, w, x{t}]``          ``x{t} = x_t`` (the input at step ``t``)
``Wh``      ``[carry, m{t}, w, x{t}]``          ``x{t} = h_{t-1}``, ``t >= 1``
==========  ==================================  =============================================

**Through time.** One agent = one learner state: the ``T`` (``T - 1`` for ``Wh``) per-step
arrows of a tensor share one learner (share keys ``h``, ``b``, ``Wx``, ``Wh``: the same GRU and
the same standardizer at every step; sharing through time is what makes it a protocol rather
than T separate learners), and with the stateful learner (``gru``) an agent's single ``carry``
threads its messages in reverse time order, ``T-1`` first. A parameter is updated **once per
inner step**, by the arrow of its last message (``b`` and ``Wx`` at ``t = 0``, ``Wh`` at
``t = 1``), from the update channel of the carry it then holds (paper eq. 4, averaged over the
batch); its earlier arrows compute the same channel and discard it, and every arrow reads the
weights of the forward pass. So a weight's update can depend on all its ``T`` messages (the
GRU accumulates them), as BPTT's sums its ``T`` gradients. The carry persists across inner
steps like a dense net's. With the stateless learner (``mlp``) each per-step update channel
but the last is simply unused: the update sees the last message only (the MLP has no memory);
``Wx``'s message MLP ``g`` is never used (its message is dropped) and gets no meta-gradient.

The per-step arrows of a tensor all read and update one ``carry`` field, so the derived order
would be cyclic (each must run before the others overwrite it): the backward phase has an
explicit schedule, the readout's three stages, then per step
``[h->b@t] [b.learn@t] [b->Wx@t, b->Wh@t] [Wx.learn@t, Wh->h@t]``.

No gradient is needed anywhere, so ``activation="step"`` works as in the dense template. With
``steps=1`` the recurrent synapses ``Wh`` are never used and have no learner.
"""

from __future__ import annotations

from typing import Literal

from mplp_graph.ir.spec import ArrowSpec, FieldSpec, GraphSpec, OpRef, ScheduleSpec
from mplp_graph.templates.mplp import _add_fields, learner_arrow
from mplp_graph.templates.recurrent import rnn


def _copy(name: str, src: str, dst: str, field: str, into: str, map: str) -> ArrowSpec:
    return ArrowSpec(name=name, src=src, dst=dst, phase="backward", op=OpRef(name="identity"), inputs=(field,), map=map, into=into)


def mplp_rnn(
    n_in: int = 1,
    hidden: int = 8,
    n_out: int = 1,
    steps: int = 5,
    activation: str = "tanh",
    *,
    learner: Literal["gru", "mlp"] = "gru",
    msg: int = 8,
    learner_hidden: int = 15,
    out_scale_init: float = 0.01,
    name: str | None = None,
) -> GraphSpec:
    """An Elman RNN (``n_in`` inputs, ``hidden`` units, ``n_out`` outputs, unrolled over
    ``steps``) trained by a learned protocol through time (module docstring). ``learner``: ``gru``
    (stateful, default) or ``mlp``; ``msg``: message size; ``learner_hidden``: the GRU's hidden
    channels (a parameter agent's carry is ``1 + learner_hidden + msg`` wide)."""
    if learner not in ("gru", "mlp"):
        raise ValueError(f"learner must be 'gru' or 'mlp', got {learner!r}")
    base = rnn(n_in, hidden, n_out, steps, activation, protocol="none")
    T = steps
    stateful = learner == "gru"
    c_param, c_node = 1 + learner_hidden + msg, learner_hidden + msg

    def carry(width: int) -> dict[str, FieldSpec]:
        return {"carry": FieldSpec(shape=(width,), batched=True)} if stateful else {}

    def learn(nm, src, dst, inputs, *, writes: bool = True, **kw) -> ArrowSpec:
        a = learner_arrow(nm, src, dst, inputs, learner=learner, msg=msg, hidden=learner_hidden,
                          standardize="frozen", out_scale_init=out_scale_init, **kw)
        if "param" in kw and not writes:  # an earlier message through time: the update channel is not applied
            a = a.model_copy(update={"updates": {f: o for f, o in a.updates.items() if o != "param"}})
        return a

    m = FieldSpec(shape=(msg,), batched=True)
    m_w = FieldSpec(shape=(msg,), batched=True, constant_along=(0,))  # one message per column j
    per_t = lambda prefix, ts, spec: {f"{prefix}{t}": spec for t in ts}  # noqa: E731
    g = dict(base.groups)
    g["loss"] = _add_fields(g["loss"], diff=FieldSpec(batched=True), **carry(c_node))
    g["bo"] = _add_fields(g["bo"], m=m, **carry(c_param))
    g["Wo"] = _add_fields(g["Wo"], m=m_w, **carry(c_param))
    g["h"] = _add_fields(g["h"], **per_t("m", range(T), m), **carry(c_node))
    g["b"] = _add_fields(g["b"], **per_t("m", range(T), m), **per_t("mo", range(T), m), **carry(c_param))
    g["Wx"] = _add_fields(g["Wx"], **per_t("m", range(T), m_w), **carry(c_param))
    if T > 1:
        g["Wh"] = _add_fields(g["Wh"], **per_t("m", range(1, T), m_w), **carry(c_param))

    fw = list(base.arrows)
    fw.append(ArrowSpec(name="loss.diff", src="loss", dst="loss", op=OpRef(name="sub"), inputs=("target", "pred"), into="diff"))
    stages: list[list[ArrowSpec]] = [
        [learn("loss->bo", "loss", "bo", ["loss", "pred", "target", "diff"])],
        [learn("bo->Wo", "bo", "Wo", ["m", "b", "z"], param="b", map="j -> i j")],
        [learn("Wo->h", "Wo", "h", ["m", "w", "x"], param="w", map="i j -> i", into=f"m{T - 1}")],
    ]
    for t in reversed(range(T)):
        stages.append([learn(f"h->b@{t}", "h", "b", [f"m{t}", f"pre{t}"], into=f"m{t}", share="h")])
        stages.append([learn(f"b.learn@{t}", "b", "b", [f"m{t}", "b", f"z{t}"], param="b", into=f"mo{t}", share="b", writes=t == 0)])
        copies = [_copy(f"b->Wx@{t}", "b", "Wx", f"mo{t}", f"m{t}", "j -> i j")]
        answers = [learn(f"Wx.learn@{t}", "Wx", "Wx", [f"m{t}", "w", f"x{t}"], param="w", into=None, share="Wx", writes=t == 0)]
        if t > 0:
            copies.append(_copy(f"b->Wh@{t}", "b", "Wh", f"mo{t}", f"m{t}", "j -> i j"))
            answers.append(learn(f"Wh->h@{t}", "Wh", "h", [f"m{t}", "w", f"x{t}"], param="w", map="i j -> i",
                                 into=f"m{t - 1}", share="Wh", writes=t == 1))
        stages += [copies, answers]
    bw = [a for stage in stages for a in stage]
    return base.model_copy(
        update={
            "name": name or f"mplp_rnn_{n_in}-{hidden}-{n_out}_T{T}_{activation}_l2_{learner}",
            "description": f"Elman RNN (input {n_in}, hidden {hidden}, output {n_out}) unrolled over {T} steps, {activation}, "
            f"l2 loss on the last step's readout, trained by a learned {'stateful (GRU)' if stateful else 'stateless (MLP)'} "
            f"protocol through time, message {msg}, one learner per tensor shared by its time steps",
            "groups": g,
            "arrows": tuple(fw + bw),
            "schedule": ScheduleSpec(phases={"backward": [[a.name for a in stage] for stage in stages]}),
        }
    )
