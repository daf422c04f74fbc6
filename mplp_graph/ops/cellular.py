"""Ops for learned cellular automata: the pieces of a Growing Neural Cellular Automaton
(Mordvintsev, Randazzo, Niklasson, Levin, "Growing Neural Cellular Automata", Distill 2020) as
ops of cell agents, so that graphs/growing_nca.yaml writes the model down with stencils for the
perception and the alive masking (docs/nca.md).

* ``channel``: one channel of a vector field (the alpha channel, whose 3 x 3 max decides which
  cells are alive);
* ``residual_mlp``: the update rule, ``x + W2 relu(W1 [inputs] + b1)``, one parameter set shared
  by every cell that runs it (the article's zero-initialised last layer, no last bias);
* ``alive_mask``: ``x`` where the neighbourhood's alpha maximum before and after the update is
  above a threshold, 0 elsewhere.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from pydantic import Field

from mplp_graph.ops.registry import Op, OpArgs, OpShapeError, register_op
from mplp_graph.scalars import Flag, Index, Int, Real


class ChannelArgs(OpArgs):
    index: Index = Field(description="the channel (a position along the field's last axis)")


def _channel_infer(shapes, args):
    (shape,) = shapes
    if len(shape) != 1:
        raise OpShapeError(f"op 'channel' takes a vector field, got feature shape {list(shape)}")
    if args["index"] >= shape[0]:
        raise OpShapeError(f"channel index {args['index']} is out of range for a field of {shape[0]} channels (0 .. {shape[0] - 1})")
    return {"message": (1,)}


register_op(
    Op(
        name="channel",
        arity=1,
        infer=_channel_infer,
        apply=lambda params, ins, args: {"message": ins[0][..., args["index"] : args["index"] + 1]},
        args=ChannelArgs,
        doc="message = x[index] (one channel of a vector field, kept as a 1-vector)",
    )
)


class ResidualMlpArgs(OpArgs):
    hidden: Int = Field(ge=1, description="hidden units (ReLU)")
    last_bias: Flag = Field(False, description="whether the last layer has a bias (the Growing NCA article's has none)")
    zero_last: Flag = Field(True, description="initialise the last layer to zero (the rule starts as the identity)")


def _residual_mlp_infer(shapes, args):
    for s in shapes:
        if len(s) != 1:
            raise OpShapeError(f"op 'residual_mlp' takes vector inputs, got feature shape {list(s)}")
    return {"message": tuple(shapes[0])}


def _residual_mlp_init(key, shapes, args):
    d_in, d_out, hidden = sum(s[0] for s in shapes), shapes[0][0], args["hidden"]
    k1, k2 = jax.random.split(key)
    limit = math.sqrt(6.0 / (d_in + hidden))  # glorot uniform, as Keras's Conv2D default
    params = {"w1": jax.random.uniform(k1, (d_in, hidden), jnp.float32, -limit, limit), "b1": jnp.zeros((hidden,), jnp.float32)}
    if args["zero_last"]:
        params["w2"] = jnp.zeros((hidden, d_out), jnp.float32)
    else:
        limit = math.sqrt(6.0 / (hidden + d_out))
        params["w2"] = jax.random.uniform(k2, (hidden, d_out), jnp.float32, -limit, limit)
    if args["last_bias"]:
        params["b2"] = jnp.zeros((d_out,), jnp.float32)
    return params


def _residual_mlp_apply(params, inputs, args):
    shape = jnp.broadcast_shapes(*(x.shape[:-1] for x in inputs))
    if all(x.shape[:-1] == shape for x in inputs):  # one matmul on the concatenated channels
        # as a 2-D matmul (rows = every agent and example): the gradient of w1 is then one
        # contraction over the rows instead of one over every leading axis
        cat = jnp.concatenate(inputs, axis=-1)
        h = (cat.reshape(-1, cat.shape[-1]) @ params["w1"]).reshape(*shape, -1)
    else:  # inputs broadcast along some agent axes: one matmul per input, nothing replicated
        h, start = 0.0, 0
        for x in inputs:
            h = h + x @ params["w1"][start : start + x.shape[-1]]
            start += x.shape[-1]
    hidden = jax.nn.relu(h + params["b1"])
    dx = (hidden.reshape(-1, hidden.shape[-1]) @ params["w2"]).reshape(*hidden.shape[:-1], -1)
    if "b2" in params:
        dx = dx + params["b2"]
    return {"message": inputs[0] + dx}


register_op(
    Op(
        name="residual_mlp",
        arity=None,
        infer=_residual_mlp_infer,
        apply=_residual_mlp_apply,
        init=_residual_mlp_init,
        args=ResidualMlpArgs,
        doc="message = x + W2 relu(W1 concat(inputs) + b1) (+ b2): a learned update rule of the first input x (Growing NCA)",
    )
)


class AliveArgs(OpArgs):
    threshold: Real = Field(0.1, description="a cell lives where its neighbourhood's alpha maximum is above this")


def _alive_infer(shapes, args):
    x, *alphas = shapes
    if not alphas:
        raise OpShapeError("op 'alive_mask' takes the field to mask and at least one 1-channel maximum (inputs: [x, pre, post])")
    if len(x) != 1 or any(tuple(a) != (1,) for a in alphas):
        raise OpShapeError(f"op 'alive_mask' takes a vector field and 1-channel maxima (e.g. from op 'channel'), got feature shapes "
                           f"{', '.join(str(list(s)) for s in shapes)}")
    return {"message": tuple(x)}


def _alive_apply(params, inputs, args):
    x, *alphas = inputs
    alive = jnp.ones(x.shape[:-1] + (1,), bool)
    for a in alphas:  # no gradient flows through the comparison
        alive = alive & (a > args["threshold"])
    return {"message": x * alive.astype(x.dtype)}


register_op(
    Op(
        name="alive_mask",
        arity=None,
        infer=_alive_infer,
        apply=_alive_apply,
        args=AliveArgs,
        doc="message = x where every given alpha maximum (inputs 2, 3, ...) > threshold, else 0 (Growing NCA's alive masking)",
    )
)
