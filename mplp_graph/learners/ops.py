"""The MPLP learners as ops: ``mplp_gru`` (stateful) and ``mplp_mlp`` (stateless).

An arrow running a learner lists its inputs as ``[carry?, message, *states]`` where the message
and states are standardized channels in the reference's concatenation order (message first;
the authors' code, ``core.py`` ``ConcatenateInputsAndStates``), e.g. a weight agent:
``[carry, m, w, x]`` (``param: 2`` names ``w`` as the parameter it updates, ``carry: 0`` the
recurrent carry).

Outputs: ``message`` (last ``msg`` carry channels, or g(x)), ``carry`` (the new carry), and for
parameter learners ``param`` = ``p + (delta - out_mean) * out_scale`` per example; the engine
averages it over the batch when writing the parameter (paper eq. 4). The residual update and
the output standardization follow the authors' code (``core.py`` ``StatefulLearner``,
``OutStandardizer``).

``matmul: bfloat16`` rounds the operands of the learner's matmuls to bfloat16 and accumulates
in float32 (default ``float32``); carries, parameters and messages stay float32.
``first_layer: rows`` forms the first layer on the broadcast, concatenated input channels (default
``split``: per channel, no replicated input; :mod:`mplp_graph.learners.nets`, same numbers up to rounding).
``chunk_rows: N`` runs the learner over pieces of about N agent-examples (same numbers; default 0,
whole tensors; :func:`mplp_graph.learners.nets.chunked`).

``standardize: online`` (used only by the statistics rollout) measures the statistics on the
current tensors, uses them at once and returns them as side outputs (the ``initialize=True``
path of the authors' ``core.py`` ``StandardizeInputsAndStates``, which ``tf_layers.py``
``MPNetwork.minibatch_init`` runs).
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp

from pydantic import Field

from mplp_graph.learners.nets import FIRST_LAYERS, MATMUL_DTYPES, MLP_HIDDEN, chunked, gru_apply, gru_init, mlp_apply, mlp_init
from mplp_graph.learners.standardize import OUT_SCALE_INIT, channel_stats, norm_init, standardize
from mplp_graph.ops.registry import Op, OpArgs, OpShapeError, register_op
from mplp_graph.scalars import Int, Real

# ---------------------------------------------------------------------------------------------
# arguments (docs/yaml.md's op table is generated from these models)

_MSG = Field(ge=1, description="message width: the channels sent along the arrow")
_PARAM = Field(None, ge=0, description="index of the input holding the parameter this learner updates; none: messages only")
_STANDARDIZE = Field("frozen", description="input statistics: `frozen` (from the statistics rollout) or `online` (measured now; used by the rollout)")
_OUT_SCALE = Field(OUT_SCALE_INIT, gt=0, description="initial scale of the parameter update")
_MATMUL = Field("float32", description="matmul operand type; `bfloat16` rounds operands, accumulates in float32")
_FIRST = Field("split", description="first layer: one small matmul per channel (`split`) or one on the concatenated channels (`rows`)")
_CHUNK = Field(0, ge=0, description="run over pieces of about this many agent-examples (0: whole tensors; same numbers)")


class GruArgs(OpArgs):
    msg: Int = _MSG
    hidden: Int = Field(ge=0, description="GRU hidden channels besides the update and message channels")
    carry: Int = Field(ge=0, description="index of the carry input ([update | hidden | message] channels)")
    param: Int | None = _PARAM
    standardize: Literal["frozen", "online"] = _STANDARDIZE
    out_scale_init: Real = _OUT_SCALE
    matmul: Literal["float32", "bfloat16"] = _MATMUL
    first_layer: Literal["split", "rows"] = _FIRST
    chunk_rows: Int = _CHUNK


class MlpArgs(OpArgs):
    msg: Int = _MSG
    param: Int | None = _PARAM
    carry: Int | None = Field(None, description="not used: the stateless learner has no carry (given, it is refused with a hint)")
    standardize: Literal["frozen", "online"] = _STANDARDIZE
    out_scale_init: Real = _OUT_SCALE
    matmul: Literal["float32", "bfloat16"] = _MATMUL
    first_layer: Literal["split", "rows"] = _FIRST
    chunk_rows: Int = _CHUNK


assert set(GruArgs.model_fields["matmul"].annotation.__args__) == set(MATMUL_DTYPES)
assert set(GruArgs.model_fields["first_layer"].annotation.__args__) == set(FIRST_LAYERS)


def _matmul_dtype(args):
    """The learner's matmul operand type: ``float32`` or ``bfloat16`` (operands rounded to
    bfloat16, products accumulated in float32; states stay float32)."""
    return MATMUL_DTYPES[args["matmul"]]


def _layout(n_inputs: int, args) -> tuple[int | None, int | None]:
    carry = args["carry"]
    param = args["param"]
    for name, v in (("carry", carry), ("param", param)):
        if v is not None and not 0 <= v < n_inputs:
            raise OpShapeError(f"argument {name!r} must index one of the {n_inputs} inputs, got {v!r}")
    if carry is not None and carry == param:
        raise OpShapeError("arguments 'carry' and 'param' must name different inputs")
    return carry, param


def _channels(inputs, carry_idx):
    return [x for k, x in enumerate(inputs) if k != carry_idx]


def _channel_widths(shapes, carry_idx) -> list[int]:
    widths = []
    for k, s in enumerate(shapes):
        if k == carry_idx:
            continue
        if len(s) != 1:
            raise OpShapeError(f"learner inputs must be scalars or vectors, input {k} has feature shape {list(s)}")
        widths.append(s[0])
    return widths


def _standardize(norm, channels, args, side):
    if args["standardize"] == "online":
        mean, nrm = channel_stats(channels)
        side["side_in_mean"], side["side_in_norm"] = mean, nrm
        mean, nrm = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(nrm)
    else:  # frozen statistics: no gradient flows into them (a smaller backward pass to compile)
        mean, nrm = jax.lax.stop_gradient(norm["in_mean"]), jax.lax.stop_gradient(norm["in_norm"])
    return standardize(channels, mean, nrm)


def _param_update(norm, p, delta, args, side):
    """``p + (delta - out_mean) * out_scale`` per example (batch-averaged by the engine)."""
    if args["standardize"] == "online":
        out_mean = jax.lax.stop_gradient(jnp.mean(delta))  # batch mean, then mean over the tensor
        side["side_out_mean"] = out_mean
    else:
        out_mean = jax.lax.stop_gradient(norm["out_mean"])
    return p + (delta - out_mean) * norm["out_scale"]


# ---------------------------------------------------------------------------------------------
# stateful: GRU


def _gru_infer(shapes, args):
    msg, hidden = args["msg"], args["hidden"]
    carry, param = _layout(len(shapes), args)
    _channel_widths(shapes, carry)
    width = (1 if param is not None else 0) + hidden + msg  # [param update | hidden | message]
    if tuple(shapes[carry]) != (width,):
        raise OpShapeError(
            f"the carry input must have shape [{width}] (= {'1 + ' if param is not None else ''}hidden {hidden} + msg {msg}), "
            f"got {list(shapes[carry])}"
        )
    out = {"message": (msg,), "carry": (width,)}
    if param is not None:
        out["param"] = shapes[param]
    return out


def _gru_init(key, shapes, args):
    carry, param = _layout(len(shapes), args)
    widths = _channel_widths(shapes, carry)
    return {
        "net": gru_init(key, sum(widths), shapes[carry][0]),
        "norm": norm_init(len(widths), param is not None, args["out_scale_init"]),
    }


def _gru_apply(params, inputs, args):
    carry_idx, param_idx = _layout(len(inputs), args)
    side: dict[str, Any] = {}
    xs = _standardize(params["norm"], _channels(inputs, carry_idx), args, side)
    dtype, first = _matmul_dtype(args), args["first_layer"]
    # (b, *agents, C), in pieces of about chunk_rows agent-examples if asked
    c = chunked(lambda ts: gru_apply(params["net"], ts[:-1], ts[-1], dtype, first), [*xs, inputs[carry_idx]], args["chunk_rows"])
    msg = args["msg"]
    out = {"carry": c, "message": c[..., -msg:], **side}
    if param_idx is not None:
        out["param"] = _param_update(params["norm"], inputs[param_idx], c[..., :1], args, side)
        out.update(side)
    return out


register_op(
    Op(
        name="mplp_gru",
        arity=None,
        infer=_gru_infer,
        apply=_gru_apply,
        init=_gru_init,
        args=GruArgs,
        param_parts=("net", "norm"),
        doc="stateful MPLP learner: GRU over standardized inputs; carry [param update | hidden | message]",
    )
)


# ---------------------------------------------------------------------------------------------
# stateless: f (update) and g (message) MLPs


def _mlp_infer(shapes, args):
    msg = args["msg"]
    carry, param = _layout(len(shapes), args)
    if carry is not None:
        raise OpShapeError("the stateless learner has no carry; remove argument 'carry'")
    _channel_widths(shapes, None)
    out = {"message": (msg,)}
    if param is not None:
        out["param"] = shapes[param]
    return out


def _mlp_init(key, shapes, args):
    _, param = _layout(len(shapes), args)
    d = sum(_channel_widths(shapes, None))
    kf, kg = jax.random.split(key)
    return {
        "f": mlp_init(kf, (d, *MLP_HIDDEN, 1)) if param is not None else {},
        "g": mlp_init(kg, (d, *MLP_HIDDEN, args["msg"])),
        "norm": norm_init(len(shapes), param is not None, args["out_scale_init"]),
    }


def _mlp_apply(params, inputs, args):
    _, param_idx = _layout(len(inputs), args)
    side: dict[str, Any] = {}
    xs = _standardize(params["norm"], list(inputs), args, side)
    # f and g see the same standardized input, built before the update (core.py ParamUpdate, MessageGenerator)
    dtype, first = _matmul_dtype(args), args["first_layer"]
    has_f = param_idx is not None

    def nets(ts):
        g = mlp_apply(params["g"], ts, jax.nn.relu, jnp.tanh, dtype, first)
        return (g, mlp_apply(params["f"], ts, jax.nn.relu, jnp.tanh, dtype, first) if has_f else None)

    message, delta = chunked(nets, xs, args["chunk_rows"])  # delta: (..., 1)
    out = {"message": message}
    if has_f:
        out["param"] = _param_update(params["norm"], inputs[param_idx], delta, args, side)
    out.update(side)
    return out


register_op(
    Op(
        name="mplp_mlp",
        arity=None,
        infer=_mlp_infer,
        apply=_mlp_apply,
        init=_mlp_init,
        args=MlpArgs,
        param_parts=("f", "g", "norm"),
        doc="stateless MPLP learner: f (ReLU 80, ReLU 40, tanh 1) for updates, g (... tanh msg) for messages",
    )
)
