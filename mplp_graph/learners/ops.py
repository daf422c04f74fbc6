"""The MPLP learners as ops: ``mplp_gru`` (stateful) and ``mplp_mlp`` (stateless).

An arrow running a learner lists its inputs as ``[carry?, message, *states]`` where the message
and states are standardized channels in the reference's concatenation order (message first;
reference-notes 1.3 and 2.4), e.g. a weight agent: ``[carry, m, w, x]`` (``param: 2`` names
``w`` as the parameter it updates, ``carry: 0`` the recurrent carry).

Outputs: ``message`` (last ``msg`` carry channels, or g(x)), ``carry`` (the new carry), and for
parameter learners ``param`` = ``p + (delta - out_mean) * out_scale`` per example; the engine
averages it over the batch when writing the parameter (paper eq. 4). The residual update and
the output standardization follow reference-notes 2.2 and 3.2.

``matmul: bfloat16`` rounds the operands of the learner's matmuls to bfloat16 and accumulates
in float32 (default ``float32``); carries, parameters and messages stay float32.
``first_layer: rows`` forms the first layer on the broadcast, concatenated input channels (default
``split``: per channel, no replicated input; :mod:`mplp_graph.learners.nets`, same numbers up to rounding).
``chunk_rows: N`` runs the learner over pieces of about N agent-examples (same numbers; default 0,
whole tensors; :func:`mplp_graph.learners.nets.chunked`).

``standardize: online`` (used only by the statistics rollout) measures the statistics on the
current tensors, uses them at once and returns them as side outputs (reference-notes 3.3).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mplp_graph.learners.nets import FIRST_LAYERS, MATMUL_DTYPES, MLP_HIDDEN, chunked, gru_apply, gru_init, mlp_apply, mlp_init
from mplp_graph.learners.standardize import OUT_SCALE_INIT, channel_stats, norm_init, standardize
from mplp_graph.ops.registry import Op, OpShapeError, register_op


def _int_arg(args, name, default=None, low=0):
    v = args.get(name, default)
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise OpShapeError(f"argument {name!r} must be an integer >= {low}, got {v!r}")
    return v


def _matmul_dtype(args):
    """The learner's matmul operand type: ``matmul: float32`` (default) or ``bfloat16`` (operands
    rounded to bfloat16, products accumulated in float32; states stay float32)."""
    name = args.get("matmul", "float32")
    if name not in MATMUL_DTYPES:
        raise OpShapeError(f"argument 'matmul' must be one of {sorted(MATMUL_DTYPES)}, got {name!r}")
    return MATMUL_DTYPES[name]


def _first_layer(args):
    """How the learner's first layer meets its input channels: ``split`` (default; one small matmul
    per channel, broadcast-added) or ``rows`` (broadcast and concatenated, one matmul)."""
    name = args.get("first_layer", "split")
    if name not in FIRST_LAYERS:
        raise OpShapeError(f"argument 'first_layer' must be one of {list(FIRST_LAYERS)}, got {name!r}")
    return name


def _layout(n_inputs: int, args) -> tuple[int | None, int | None]:
    carry = args.get("carry")
    param = args.get("param")
    for name, v in (("carry", carry), ("param", param)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < n_inputs):
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
    if args.get("standardize", "frozen") == "online":
        mean, nrm = channel_stats(channels)
        side["side_in_mean"], side["side_in_norm"] = mean, nrm
        mean, nrm = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(nrm)
    else:  # frozen statistics: no gradient flows into them (a smaller backward pass to compile)
        mean, nrm = jax.lax.stop_gradient(norm["in_mean"]), jax.lax.stop_gradient(norm["in_norm"])
    return standardize(channels, mean, nrm)


def _param_update(norm, p, delta, args, side):
    """``p + (delta - out_mean) * out_scale`` per example (batch-averaged by the engine)."""
    if args.get("standardize", "frozen") == "online":
        out_mean = jax.lax.stop_gradient(jnp.mean(delta))  # batch mean, then mean over the tensor
        side["side_out_mean"] = out_mean
    else:
        out_mean = jax.lax.stop_gradient(norm["out_mean"])
    return p + (delta - out_mean) * norm["out_scale"]


# ---------------------------------------------------------------------------------------------
# stateful: GRU


def _gru_infer(shapes, args):
    _matmul_dtype(args)
    _first_layer(args)
    _int_arg(args, "chunk_rows", 0)
    msg = _int_arg(args, "msg", low=1)
    hidden = _int_arg(args, "hidden", low=0)
    carry, param = _layout(len(shapes), args)
    if carry is None:
        raise OpShapeError("the stateful learner needs argument 'carry' (index of the carry input)")
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
        "norm": norm_init(len(widths), param is not None, args.get("out_scale_init", OUT_SCALE_INIT)),
    }


def _gru_apply(params, inputs, args):
    carry_idx, param_idx = _layout(len(inputs), args)
    side: dict[str, Any] = {}
    xs = _standardize(params["norm"], _channels(inputs, carry_idx), args, side)
    dtype, first = _matmul_dtype(args), _first_layer(args)
    # (b, *agents, C), in pieces of about chunk_rows agent-examples if asked
    c = chunked(lambda ts: gru_apply(params["net"], ts[:-1], ts[-1], dtype, first), [*xs, inputs[carry_idx]], _int_arg(args, "chunk_rows", 0))
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
        arg_names=("msg", "hidden", "carry", "param", "standardize", "out_scale_init", "matmul", "first_layer", "chunk_rows"),
        required_args=("msg", "hidden", "carry"),
        param_parts=("net", "norm"),
        doc="stateful MPLP learner: GRU over standardized inputs; carry [param update | hidden | message]",
    )
)


# ---------------------------------------------------------------------------------------------
# stateless: f (update) and g (message) MLPs


def _mlp_infer(shapes, args):
    _matmul_dtype(args)
    _first_layer(args)
    _int_arg(args, "chunk_rows", 0)
    msg = _int_arg(args, "msg", low=1)
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
        "norm": norm_init(len(shapes), param is not None, args.get("out_scale_init", OUT_SCALE_INIT)),
    }


def _mlp_apply(params, inputs, args):
    _, param_idx = _layout(len(inputs), args)
    side: dict[str, Any] = {}
    xs = _standardize(params["norm"], list(inputs), args, side)
    # f and g see the same standardized input, built before the update (reference-notes 2.3)
    dtype, first = _matmul_dtype(args), _first_layer(args)
    has_f = param_idx is not None

    def nets(ts):
        g = mlp_apply(params["g"], ts, jax.nn.relu, jnp.tanh, dtype, first)
        return (g, mlp_apply(params["f"], ts, jax.nn.relu, jnp.tanh, dtype, first) if has_f else None)

    message, delta = chunked(nets, xs, _int_arg(args, "chunk_rows", 0))  # delta: (..., 1)
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
        arg_names=("msg", "param", "carry", "standardize", "out_scale_init", "matmul", "first_layer", "chunk_rows"),
        required_args=("msg",),
        param_parts=("f", "g", "norm"),
        doc="stateless MPLP learner: f (ReLU 80, ReLU 40, tanh 1) for updates, g (... tanh msg) for messages",
    )
)
