"""Built-in ops: the paper's node kinds (forward and chain-rule backward) and a small dense op.

Every op is written for one agent (see :mod:`mplp_graph.ops.registry`). The chain-rule ops
(``*_grad``) are the pieces of the backprop protocol: with ``sum`` aggregation they make the
engine compute exact gradients, which is how the backprop oracle test checks the wiring.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from typing import Literal

from pydantic import Field

from mplp_graph.ops.registry import NoArgs, Op, OpArgs, OpShapeError, register_op
from mplp_graph.scalars import Int, Real

# CE clipping, as in the reference's CrossEntropyLoss (the authors' core.py).
CE_CLIP = 1e-7


def _broadcast_infer(shapes, args):
    try:
        return {"message": tuple(np.broadcast_shapes(*shapes))}
    except ValueError:
        raise OpShapeError(
            f"inputs of feature shapes {', '.join(str(list(s)) for s in shapes)} do not broadcast"
        ) from None


# argument models (docs/yaml.md's op table is generated from them)


class ScaleArgs(OpArgs):
    c: Real = Field(description="the factor")


class LrArgs(OpArgs):
    lr: Real = Field(ge=0, description="the learning rate")


class AffineArgs(OpArgs):
    a: Real = Field(description="the slope")
    b: Real = Field(description="the offset")


class MixArgs(OpArgs):
    rate: Real = Field(description="how far x moves towards y (0: not at all, 1: all the way)")


class DenseArgs(OpArgs):
    features: Int = Field(ge=1, description="the message width")
    activation: Literal["linear", "tanh"] = Field("linear", description="applied to the output")


def _elementwise(name, fn, arity, doc, *, bilinear=False, differentiable=True, args=NoArgs):
    names = tuple(args.model_fields)

    def apply(params, inputs, a):
        return {"message": fn(*inputs, **{k: a[k] for k in names})}

    return register_op(
        Op(
            name=name,
            arity=arity,
            infer=_broadcast_infer,
            apply=apply,
            bilinear=bilinear,
            differentiable=differentiable,
            args=args,
            doc=doc,
        )
    )


def _step(x):
    # max(0, sign(x)): the step activation of the authors' mplp_MNIST.ipynb (paper section 4.2).
    return jnp.maximum(0.0, jnp.sign(x))


def _ce(p, t):
    return -t * jnp.log(jnp.clip(p, CE_CLIP, 1.0 - CE_CLIP))


def _ce_grad(p, t):
    pc = jnp.clip(p, CE_CLIP, 1.0 - CE_CLIP)
    inside = (p > CE_CLIP) & (p < 1.0 - CE_CLIP)
    return jnp.where(inside, -t / pc, 0.0)


_elementwise("identity", lambda x: x, 1, "message = x")
_elementwise("neg", lambda x: -x, 1, "message = -x")
_elementwise("add", lambda a, b: a + b, 2, "message = a + b")
_elementwise("sub", lambda a, b: a - b, 2, "message = a - b")
_elementwise("mul", lambda a, b: a * b, 2, "message = a * b (lowered to einsum under sum/mean)", bilinear=True)
_elementwise("div", lambda a, b: a / b, 2, "message = a / b")
_elementwise("exp", jnp.exp, 1, "message = exp(x)")
_elementwise("exp_shift", lambda z, zmax: jnp.exp(z - zmax), 2, "message = exp(z - zmax) (stable softmax)")
_elementwise("scale", lambda x, c: x * c, 1, "message = c * x", args=ScaleArgs)
_elementwise("sigmoid", jax.nn.sigmoid, 1, "message = sigmoid(x)")
_elementwise("relu", jax.nn.relu, 1, "message = max(x, 0)")
_elementwise("tanh", jnp.tanh, 1, "message = tanh(x)")
_elementwise("step", _step, 1, "message = max(0, sign(x)); no gradient", differentiable=False)
_elementwise("sign", jnp.sign, 1, "message = sign(x); no gradient", differentiable=False)
_elementwise("l2", lambda p, t: 0.5 * (t - p) ** 2, 2, "message = (t - p)^2 / 2 (elementwise L2 loss)")
_elementwise("clip_prob", lambda p: jnp.clip(p, CE_CLIP, 1.0 - CE_CLIP), 1, "message = clip(p, 1e-7, 1 - 1e-7)")
_elementwise("log", jnp.log, 1, "message = log(x)")
_elementwise("ce", _ce, 2, "message = -t log clip(p) (elementwise cross-entropy)")
# Chain-rule pieces: d(loss)/d(input) given the stored forward input and the incoming gradient.
_elementwise("l2_grad", lambda p, t: p - t, 2, "message = d l2 / d p = p - t")
_elementwise("ce_grad", _ce_grad, 2, "message = d ce / d p = -t / clip(p)")
_elementwise(
    "sigmoid_grad",
    lambda x, g: g * jax.nn.sigmoid(x) * (1.0 - jax.nn.sigmoid(x)),
    2,
    "message = g * sigmoid'(x)",
)
_elementwise("relu_grad", lambda x, g: g * (x > 0), 2, "message = g * relu'(x)")
_elementwise("identity_grad", lambda x, g: g, 2, "message = g (identity activation)")
_elementwise(
    "softmax_grad",
    lambda p, g, pg: p * (g - pg),
    3,
    "message = p * (g - sum_k p_k g_k): the softmax Jacobian applied to g (pg = sum_k p_k g_k)",
)
_elementwise("tanh_grad", lambda x, g: g * (1.0 - jnp.tanh(x) ** 2), 2, "message = g * tanh'(x)")
_elementwise(
    "sgd",
    lambda p, g, lr: p - lr * g,
    2,
    "message = p - lr * g (write it back to p through 'updates' or 'into')",
    args=LrArgs,
)
_elementwise("affine", lambda x, a, b: a * x + b, 1, "message = a * x + b", args=AffineArgs)
_elementwise("mix", lambda x, y, rate: x + rate * (y - x), 2, "message = x + rate * (y - x) (relax x towards y)", args=MixArgs)
# Non-differentiable agents: MPLP trains through them; the backprop protocol cannot.
_elementwise("is_max", lambda z, zmax: (z >= zmax).astype(z.dtype), 2, "message = 1 where z = max (argmax as a one-hot, with the max from an 'i -> j' max arrow); no gradient", differentiable=False)


def _life(alive, n):
    # Conway's rule: a cell is alive next if 3 neighbours are alive, or 2 and it is alive now
    born = jnp.abs(n - 3.0) < 0.5
    stays = (alive > 0.5) & (jnp.abs(n - 2.0) < 0.5)
    return (born | stays).astype(alive.dtype)


_elementwise("life", _life, 2, "message = Conway's rule: 1 if n = 3, or n = 2 and alive, else 0 (n: live neighbours); no gradient", differentiable=False)


def _sum_infer(shapes, args):
    if len(shapes) < 2:
        raise OpShapeError(f"takes a parameter and at least one more input, got {len(shapes)} input(s)")
    return _broadcast_infer(shapes, args)


def _mul_sum_infer(shapes, args):
    if len(shapes) < 3 or len(shapes) % 2 == 0:
        raise OpShapeError(f"takes a parameter and pairs of inputs (p, a1, b1, a2, b2, ...), got {len(shapes)} input(s)")
    return _broadcast_infer(shapes, args)


def _pairs(ins):
    return zip(ins[1::2], ins[2::2])


# Parameters used several times in one pass (a recurrent weight at every time step) take the sum
# of their gradients: p - lr * sum_t g_t, or p - lr * sum_t a_t b_t (backprop through time).
register_op(
    Op(
        name="sgd_sum",
        arity=None,
        infer=_sum_infer,
        apply=lambda params, ins, args: {"message": ins[0] - args["lr"] * sum(ins[1:])},
        args=LrArgs,
        doc="message = p - lr * (g1 + g2 + ...) (a bias used at several time steps)",
    )
)


def mean_product(a, b):
    """``mean over axis 0 of a * b`` (broadcasting, keeping axis 0 with size 1) as one einsum:
    the batch-averaged outer product ``mean_b x_i g_j`` becomes a matrix product."""
    ndim = max(a.ndim, b.ndim)
    a = a.reshape((1,) * (ndim - a.ndim) + a.shape)
    b = b.reshape((1,) * (ndim - b.ndim) + b.shape)
    letters = [chr(ord("a") + k) for k in range(ndim)]

    def operand(v):
        keep = [k for k in range(ndim) if v.shape[k] > 1]
        return jnp.reshape(v, [v.shape[k] for k in keep]), "".join(letters[k] for k in keep)

    (va, sa), (vb, sb) = operand(a), operand(b)
    out_axes = [k for k in range(1, ndim) if a.shape[k] > 1 or b.shape[k] > 1]
    out = jnp.einsum(f"{sa},{sb}->{''.join(letters[k] for k in out_axes)}", va, vb)
    batch = max(a.shape[0], b.shape[0])  # the einsum summed over the batch axis if either has one
    shape = [1] + [max(a.shape[k], b.shape[k]) for k in range(1, ndim)]
    return (out / batch).reshape(shape)


register_op(
    Op(
        name="sgd_mul",
        arity=3,
        infer=_broadcast_infer,
        apply=lambda params, ins, args: {"message": ins[0] - args["lr"] * ins[1] * ins[2]},
        mean_apply=lambda params, ins, args: {"message": ins[0] - args["lr"] * mean_product(ins[1], ins[2])},
        args=LrArgs,
        doc="message = p - lr * a * b (a weight's SGD step: a = stored input, b = incoming gradient)",
    )
)


# ---------------------------------------------------------------------------------------------
# dense: a parametrised message function, message = concat(inputs) @ kernel + bias


def _dense_infer(shapes, args):
    for s in shapes:
        if len(s) != 1:
            raise OpShapeError(f"op 'dense' takes vector inputs, got feature shape {list(s)}")
    return {"message": (args["features"],)}


def _dense_init(key, shapes, args):
    d_in = sum(s[0] for s in shapes)
    d_out = args["features"]
    limit = math.sqrt(6.0 / (d_in + d_out))  # glorot uniform
    kernel = jax.random.uniform(key, (d_in, d_out), jnp.float32, -limit, limit)
    return {"kernel": kernel, "bias": jnp.zeros((d_out,), jnp.float32)}


def _dense_apply(params, inputs, args):
    # Split the kernel by input instead of concatenating the inputs: each input keeps its own
    # (possibly broadcast) agent shape, so replicated inputs are never materialized.
    out = params["bias"]
    start = 0
    for x in inputs:  # loop over the op's inputs, not over agents
        width = x.shape[-1]
        out = out + x @ params["kernel"][start : start + width]  # (..., features)
        start += width
    return {"message": jnp.tanh(out) if args["activation"] == "tanh" else out}


register_op(
    Op(
        name="dense",
        arity=None,
        infer=_dense_infer,
        apply=_dense_apply,
        init=_dense_init,
        args=DenseArgs,
        doc="message = concat(inputs) @ kernel + bias (a learnable message function)",
    )
)


register_op(
    Op(
        name="sgd_mul_sum",
        arity=None,
        infer=_mul_sum_infer,
        apply=lambda params, ins, args: {"message": ins[0] - args["lr"] * sum(a * b for a, b in _pairs(ins))},
        mean_apply=lambda params, ins, args: {"message": ins[0] - args["lr"] * sum(mean_product(a, b) for a, b in _pairs(ins))},
        args=LrArgs,
        doc="message = p - lr * (a1 b1 + a2 b2 + ...) (a weight used at several time steps: stored inputs a_t, gradients b_t)",
    )
)
