"""Small networks written for one agent's input, batched over leading axes.

Inputs come as a list of *channels* (each ``[..., width]``, leading axes broadcastable: the
forward input x_i is the same at every synapse w_ij, a parameter is shared by every example).
The networks flatten the agents and examples into rows and run on ``(rows, features)`` matrices
(on XLA's CPU backend, elementwise ops over rank-4 tensors with broadcast operands ran up to 10x
slower than the same ops on plain rows). The first layer, ``concat(channels) @ kernel``, is
formed one of two ways (``first_layer``):

* ``"split"`` (default): each channel is multiplied by its rows of the kernel at its own,
  unreplicated shape and the products are broadcast-added into the ``(rows, out)`` matrix: no
  replicated input is built (the authors' code repeats every channel to the full agent shape
  with ``tf.repeat`` before concatenating) and the first layer costs almost no FLOPs.
* ``"rows"``: the channels are broadcast and concatenated into one ``(rows, width)`` matrix
  (width 6 for an MNIST weight learner: 4 message + w + x), then one matmul.

Both give the same numbers up to float rounding (tests/test_perf_options.py). Side by side on
the 2-core CPU (the former ``benchmarks/kernel_bench.py --eval``): ``rows`` takes 1.045x the time of
``split`` per MNIST meta-step and 1.018x per 100-run MNIST evaluation; two reruns of the
meta-step gave 0.97x and 1.015x: equal within this machine's noise.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name


def glorot_uniform(key: Any, shape: tuple[int, int]) -> Any:
    limit = math.sqrt(6.0 / (shape[0] + shape[1]))
    return jax.random.uniform(key, shape, jnp.float32, -limit, limit)


MATMUL_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}
FIRST_LAYERS = ("rows", "split")
# the name of the learners' hidden layers that follow a hidden-to-hidden matmul (the GRU's
# 80 -> 40 layers, an MLP learner's layers after the first), for remat policies
# (mplp_graph.meta.objectives.remat_policy: "hidden")
HIDDEN_NAME = "mplp_hidden"


def dot(x: Any, kernel: Any, dtype: Any = None) -> Any:
    """``x @ kernel``; with ``dtype`` (e.g. bfloat16) both operands are rounded to it and the
    product is accumulated and returned in float32 (state and everything else stay float32)."""
    if dtype is None:
        return x @ kernel
    return jnp.matmul(x.astype(dtype), kernel.astype(dtype), preferred_element_type=jnp.float32)


def split_matmul(channels: Sequence[Any], kernel: Any, dtype: Any = None) -> Any:
    """``concat(channels, -1) @ kernel`` without building the concatenation. (..., out)"""
    out = None
    start = 0
    for x in channels:  # loop over input kinds (at most ~5), never over agents
        width = x.shape[-1]
        term = dot(x, kernel[start : start + width], dtype)
        out = term if out is None else out + term
        start += width
    assert start == kernel.shape[0], f"channels give width {start}, kernel expects {kernel.shape[0]}"
    return out


def row_projector(channels: Sequence[Any], lead: tuple[int, ...], dtype: Any = None, first_layer: str = "split") -> Callable[[Any], Any]:
    """A function ``kernel -> concat(channels) @ kernel`` as a ``(rows, out)`` matrix, rows being
    the ``lead`` axes (the channels' broadcast leading shape) flattened; see the module doc."""
    if first_layer == "rows":
        x = jnp.concatenate([jnp.broadcast_to(c, (*lead, c.shape[-1])) for c in channels], axis=-1)
        x = x.reshape(-1, x.shape[-1])
        return lambda kernel: dot(x, kernel, dtype)
    if first_layer == "split":

        def project(kernel):
            y = split_matmul(channels, kernel, dtype)
            return jnp.broadcast_to(y, (*lead, y.shape[-1])).reshape(-1, y.shape[-1])

        return project
    raise ValueError(f"first_layer must be one of {FIRST_LAYERS}, got {first_layer!r}")


def lead_shape(*tensors: Any) -> tuple[int, ...]:
    """The broadcast shape of the tensors' leading (non-feature) axes."""
    return tuple(int(n) for n in jnp.broadcast_shapes(*(t.shape[:-1] for t in tensors)))


def mlp_init(key: Any, sizes: Sequence[int], *, last_bias: bool = True) -> dict[str, Any]:
    """Dense layers ``sizes[0] -> ... -> sizes[-1]``: glorot-uniform kernels, zero biases."""
    keys = jax.random.split(key, len(sizes) - 1)
    params: dict[str, Any] = {}
    for n, (k, d_in, d_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
        params[f"k{n + 1}"] = glorot_uniform(k, (d_in, d_out))
        if n < len(sizes) - 2 or last_bias:
            params[f"b{n + 1}"] = jnp.zeros((d_out,), jnp.float32)
    return params


def mlp_apply(
    params: dict[str, Any], channels: Sequence[Any], hidden_act, out_act=None, dtype: Any = None, first_layer: str = "split"
) -> Any:
    """Apply an MLP made by :func:`mlp_init` to input channels. (..., sizes[-1])
    ``dtype``: the matmul operand type (:func:`dot`); ``first_layer``: see the module doc."""
    lead = lead_shape(*channels)
    n_layers = sum(1 for k in params if k.startswith("k"))
    h = row_projector(channels, lead, dtype, first_layer)(params["k1"])
    for n in range(1, n_layers + 1):
        if n > 1:
            h = dot(h, params[f"k{n}"], dtype)
        if f"b{n}" in params:
            h = h + params[f"b{n}"]
        if n < n_layers:
            h = hidden_act(h)
            if n > 1:
                h = checkpoint_name(h, HIDDEN_NAME)
    h = out_act(h) if out_act is not None else h
    return h.reshape(*lead, h.shape[-1])


# ---------------------------------------------------------------------------------------------
# the reference's GRU block (the authors' code, ``core.py`` ``GRUBlock``; paper eqs. 6-8)

MLP_HIDDEN = (80, 40)


def gru_init(key: Any, x_dim: int, carry: int) -> dict[str, Any]:
    """GRU with deep candidate MLPs. Gate biases start at -1 (sigmoid(-1) = 0.27), as in the
    reference: the update gate initially favours new information, the reset gate favours reset."""
    k = jax.random.split(key, 6)
    return {
        "W_update_x": glorot_uniform(k[0], (x_dim, carry)),
        "W_update_c": glorot_uniform(k[1], (carry, carry)),
        "b_update": jnp.full((carry,), -1.0, jnp.float32),
        "W_reset_x": glorot_uniform(k[2], (x_dim, carry)),
        "W_reset_c": glorot_uniform(k[3], (carry, carry)),
        "b_reset": jnp.full((carry,), -1.0, jnp.float32),
        "b_next": jnp.zeros((carry,), jnp.float32),
        # The paper says ReLU (section 3.1); the authors' core.py GRUBlock uses tanh hidden layers
        # and no last bias.
        "next_x_net": mlp_init(k[4], (x_dim, *MLP_HIDDEN, carry), last_bias=False),
        "next_c_net": mlp_init(k[5], (carry, *MLP_HIDDEN, carry), last_bias=False),
    }


def gru_apply(p: dict[str, Any], channels: Sequence[Any], c: Any, dtype: Any = None, first_layer: str = "split") -> Any:
    """One GRU step for one agent: ``c' = u c + (1 - u) tanh(MLPx(x) + MLPc(r c) + b)``. (..., C)
    ``dtype``: the matmul operand type (:func:`dot`); the carry and the gates stay float32.
    ``first_layer``: how ``x`` meets its kernels (module doc). Computed on ``(rows, features)``
    matrices: the gates of ``x`` and ``c`` as one 24-wide matmul each, ``MLPx``'s first layer as
    its own matmul (so its tanh reads a contiguous matrix)."""
    lead = lead_shape(c, *channels)
    C = c.shape[-1]
    project = row_projector(channels, lead, dtype, first_layer)
    c = jnp.broadcast_to(c, (*lead, C)).reshape(-1, C)
    gates_x = project(jnp.concatenate([p["W_update_x"], p["W_reset_x"]], axis=1))
    gates_c = dot(c, jnp.concatenate([p["W_update_c"], p["W_reset_c"]], axis=1), dtype)
    gates = jax.nn.sigmoid(gates_x + gates_c + jnp.concatenate([p["b_update"], p["b_reset"]]))
    u, r = gates[:, :C], gates[:, C:]
    nx_, nc_ = p["next_x_net"], p["next_c_net"]
    hx = jnp.tanh(project(nx_["k1"]) + nx_["b1"])
    hx = checkpoint_name(jnp.tanh(dot(hx, nx_["k2"], dtype) + nx_["b2"]), HIDDEN_NAME)
    hc = jnp.tanh(dot(r * c, nc_["k1"], dtype) + nc_["b1"])
    hc = checkpoint_name(jnp.tanh(dot(hc, nc_["k2"], dtype) + nc_["b2"]), HIDDEN_NAME)
    n = jnp.tanh(dot(hx, nx_["k3"], dtype) + dot(hc, nc_["k3"], dtype) + p["b_next"])
    return (u * c + (1.0 - u) * n).reshape(*lead, C)


def param_count(tree: Any) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))


# ---------------------------------------------------------------------------------------------
# chunked application: the same math, in cache-sized pieces


def chunk_plan(shape: Sequence[int], rows: int) -> tuple[int, int] | None:
    """How to cut a learner's agent tensor ``shape`` (leading axes, no feature axis) into pieces of
    about ``rows`` agent-examples: ``(axis, pieces)``, or None when it is small enough whole (under
    ``4 * rows``: a loop of a few pieces does not pay). The largest axis is cut; the number of
    pieces is the divisor of its size whose piece size is closest to ``rows`` in ratio (a prime
    axis is cut into single slices)."""
    total = math.prod(shape)
    if rows <= 0 or total < 4 * rows:  # then some axis has size >= 2
        return None
    axis = max(range(len(shape)), key=lambda a: shape[a])
    size = shape[axis]
    want = total / rows  # pieces wanted
    pieces = min((d for d in range(2, size + 1) if size % d == 0), key=lambda d: abs(math.log(d / want)))
    return axis, pieces


def chunked(fn, tensors: Sequence[Any], rows: int) -> Any:
    """``fn(tensors)``, an agent-wise map, computed piece by piece along one agent axis
    (:func:`chunk_plan`), each piece rematerialized. ``tensors``: ``[..., features]`` arrays
    of one rank whose leading axes broadcast together; ``fn`` returns a pytree of arrays whose
    leading axes are that broadcast shape.

    The learners' activations for a 144 x 50 layer at batch 8 are 57,600 rows x 80 floats per
    hidden layer: on a CPU they stream through memory between every op. In pieces of ~2,000 rows
    they stay in cache, in the backward pass too (each piece is recomputed, then differentiated).
    Tensors of size 1 along the cut axis (broadcast inputs) are given whole to every piece; the
    math is unchanged (only the order of the parameter-gradient sums). ``rows`` 0: never cut.

    Measured (benchmark case ``mnist_chunk``, MNIST meta-step, 2-core CPU): with the learners' older
    rank-4 kernels, pieces of ~2,400 rows took 0.94x the whole-tensor time with the inner-step
    remat off; with the current ``(rows, features)`` kernels (module doc) pieces are slower:
    1.13x (remat off) and 1.19x (remat on); docs/mplp.md. On a GPU one big kernel is better."""
    if rows <= 0 or len({t.ndim for t in tensors}) != 1:
        return fn(tensors)
    lead = lead_shape(*tensors)
    plan = chunk_plan(lead, rows)
    if plan is None:
        return fn(tensors)
    axis, pieces = plan
    size = lead[axis]

    def cut(t):  # (..., size, ...) -> (pieces, ..., size / pieces, ...)
        t = t.reshape(*t.shape[:axis], pieces, size // pieces, *t.shape[axis + 1 :])
        return jnp.moveaxis(t, axis, 0)

    def glue(t):  # (pieces, ..., size / pieces, ...) -> (..., size, ...)
        t = jnp.moveaxis(t, 0, axis)
        return t.reshape(*t.shape[:axis], size, *t.shape[axis + 2 :])

    whole = [k for k, t in enumerate(tensors) if t.shape[axis] == size]

    def piece(parts):
        ts = list(tensors)
        for k, t in zip(whole, parts, strict=True):
            ts[k] = t
        return fn(ts)

    out = jax.lax.map(jax.checkpoint(piece), [cut(tensors[k]) for k in whole])
    return jax.tree_util.tree_map(glue, out)
