"""Lowering, at trace time: each kernel (the arrows of one stage that share parameters, made by
:mod:`mplp_graph.compile.group`) becomes one op call over all their agents, followed by the
routing of each arrow's messages.

State layout (see :mod:`mplp_graph.ir.spec`): a field is stored as
``[B?, *agent_shape (1 along constant axes), *field_shape]``. :func:`read` and :func:`write`
convert between that and the kernel layout ``[b, *agent, *feature]``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mplp_graph.compile.group import Kernel, can_fuse_bilinear
from mplp_graph.ir.resolve import ArrowPlan
from mplp_graph.ir.spec import FieldSpec
from mplp_graph.runtime.route import Partial, route_bilinear, route_edges, route_map, route_stencil, sum_axes

State = dict[str, dict[str, Any]]


def read(f: FieldSpec, value: Any) -> Any:
    """Stored field -> kernel layout (add the batch axis of size 1, the scalar feature axis)."""
    if not f.batched:
        value = value[None]
    if not f.shape:
        value = value[..., None]
    return value


def write(f: FieldSpec, value: Any, stored_shape: tuple[int, ...]) -> Any:
    """Kernel layout -> stored field. Per-example values written into a field without a batch
    axis are averaged over the batch (paper eq. 4)."""
    if not f.shape:
        value = value[..., 0]
    # A fused kernel computes full agent axes; along axes the field stores once the values are
    # equal (resolve checked that the op's output is constant there), so keep one copy.
    n_agent = len(stored_shape) - len(f.shape) - (1 if f.batched else 0)
    start = 1 if f.batched else 0
    for ax in range(n_agent):
        if stored_shape[start + ax] == 1 and value.shape[1 + ax] > 1:
            value = jax.lax.slice_in_dim(value, 0, 1, axis=1 + ax)
    if f.batched:
        return jnp.broadcast_to(value, stored_shape).astype(f.dtype)
    value = sum_axes(value, [0], 1.0 / value.shape[0]) if value.shape[0] > 1 else value[0]
    return jnp.broadcast_to(value, stored_shape).astype(f.dtype)


def _apply_fused(kernel: Kernel, params: Any, inputs_per_arrow: list[list[Any]]) -> list[dict[str, Any]]:
    """Run the op once over the agents of all the kernel's arrows (flattened and concatenated)."""
    arrows = kernel.arrows
    if len(arrows) == 1:
        a = arrows[0]
        return [a.op.apply(params, tuple(inputs_per_arrow[0]), a.args)]
    b = max(x.shape[0] for xs in inputs_per_arrow for x in xs)
    flat_inputs = []
    for j in range(len(inputs_per_arrow[0])):
        parts = []
        for a, xs in zip(arrows, inputs_per_arrow):
            feat = xs[j].shape[1 + len(a.src_shape) :]
            full = jnp.broadcast_to(xs[j], (b, *a.src_shape, *feat))
            parts.append(full.reshape((b, -1, *feat)))  # (b, n_agents, *feat)
        flat_inputs.append(jnp.concatenate(parts, axis=1))  # (b, sum n_agents, *feat)
    out = arrows[0].op.apply(params, tuple(flat_inputs), arrows[0].args)
    results: list[dict[str, Any]] = [{} for _ in arrows]
    start = 0
    for k, a in enumerate(arrows):
        n = int(np.prod(a.src_shape))
        for name, v in out.items():
            if name.startswith("side_"):
                results[k][name] = v  # side outputs of a fused call describe the whole call
                continue
            piece = v[:, start : start + n]
            results[k][name] = piece.reshape((v.shape[0], *a.src_shape, *v.shape[2:]))
        start += n
    return results


def _can_mean_apply(kernel: Kernel, fields: dict[str, dict[str, FieldSpec]]) -> bool:
    """One arrow whose outputs all land in fields without a batch axis, and an op that can
    compute the batch mean directly."""
    if len(kernel.arrows) != 1 or kernel.op.mean_apply is None:
        return False
    a = kernel.arrows[0]
    return a.spec.into is None and all(not fields[a.spec.src][f].batched for f in a.spec.updates)


def run_kernel(
    kernel: Kernel, params: Any, state: State, fields: dict[str, dict[str, FieldSpec]]
) -> tuple[list[tuple[str, str, Any]], list[tuple[ArrowPlan, Partial]], dict[str, dict[str, Any]]]:
    """Returns ``(updates, partials, side)``: source-field writes and routed messages, not yet
    applied, and the side outputs (``side_*``) of each arrow."""
    inputs = [[read(fields[a.spec.src][n], state[a.spec.src][n]) for n in a.spec.inputs] for a in kernel.arrows]
    updates: list[tuple[str, str, Any]] = []
    partials: list[tuple[ArrowPlan, Partial]] = []
    side: dict[str, dict[str, Any]] = {}
    if len(kernel.arrows) == 1 and can_fuse_bilinear(kernel.arrows[0]):
        a = kernel.arrows[0]
        x, y = inputs[0]
        partials.append((a, route_bilinear(a, x, y, a.spec.aggregate)))
        return updates, partials, side
    if _can_mean_apply(kernel, fields):
        a = kernel.arrows[0]
        outs = [a.op.mean_apply(params, tuple(inputs[0]), a.args)]
    else:
        outs = _apply_fused(kernel, params, inputs)
    for a, out in zip(kernel.arrows, outs):
        extra = {k: v for k, v in out.items() if k.startswith("side_")}
        if extra:
            side[a.name] = extra
        for fname, oname in a.spec.updates.items():
            updates.append((a.spec.src, fname, out[oname]))
        if a.spec.into is None:
            continue
        msg = out["message"]
        if a.conn.is_edges:
            partials.append((a, route_edges(a, msg, a.spec.aggregate)))
        elif a.conn.is_stencil:
            partials.append((a, route_stencil(a, msg, a.spec.aggregate)))
        else:
            partials.append((a, route_map(a, msg, a.spec.aggregate)))
    return updates, partials, side
