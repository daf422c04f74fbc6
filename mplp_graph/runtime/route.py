"""Message routing: index maps lower to broadcasts and axis reductions, edge lists to gather +
segment reductions, stencils to shifted copies added together. No Python loop over agents or
edges (a stencil loops over its few offsets at trace time).

Values use the kernel layout ``[b, *agent_axes, *feature]`` (``b`` is the batch size or 1; an
agent axis has its size or 1 where the value is constant along it). Routing returns a
:class:`Partial`: the per-destination-agent aggregate of one arrow's messages before the final
``mean`` division, so that several arrows sending into one field (an inbox) can be combined.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mplp_graph.ir.resolve import ArrowPlan


@dataclass(frozen=True)
class Partial:
    """``value`` is a sum (for ``mean``/``sum``) or a max; ``count`` the number of incoming edges
    per destination agent (a Python number for index maps, an array for edge lists)."""

    value: Any
    count: Any


def _letter_axes(plan: ArrowPlan):
    m = plan.conn.index_map
    assert m is not None, "route_map needs an index map"
    return m


def finish_map(plan: ArrowPlan, reduced: Any, kept_letters: tuple[str, ...], count: int) -> Partial:
    """Arrange an array whose agent axes are ``kept_letters`` (sizes or 1) into destination order,
    inserting size-1 axes for broadcast letters."""
    m = _letter_axes(plan)
    n_agent = len(kept_letters)
    perm = [0] + [1 + kept_letters.index(x) for x in m.dst if x in kept_letters]
    perm += list(range(1 + n_agent, reduced.ndim))
    out = jnp.transpose(reduced, perm)
    # insert size-1 axes for destination letters that the source does not have (broadcast)
    shape = [out.shape[0]]
    k = 1
    for x in m.dst:
        if x in kept_letters:
            shape.append(out.shape[k])
            k += 1
        else:
            shape.append(1)
    shape += list(out.shape[k:])
    return Partial(out.reshape(shape), count)  # (b, *dst_agent or 1, *feat)


def route_map(plan: ArrowPlan, message: Any, aggregate: str) -> Partial:
    """Route ``message`` (b, *src_agent or 1, *feat) through the arrow's index map."""
    m = _letter_axes(plan)
    sizes = plan.conn.sizes
    value = message
    count = 1
    kept = list(m.src)
    summed = []  # axes to sum over (done together, below)
    # reduce over letters absent from the destination, last axis first so indices stay valid
    for letter in reversed(m.reduced):
        ax = 1 + kept.index(letter)
        n = sizes[letter]
        count *= n
        if value.shape[ax] == 1:
            value = jnp.squeeze(value, ax)
            if aggregate != "max":
                value = value * n  # constant along a reduced axis: n equal messages
        elif aggregate == "max":
            value = jnp.max(value, axis=ax)
        else:
            summed.append(letter)
            continue
        kept.remove(letter)
    if summed:
        value = sum_axes(value, [1 + kept.index(x) for x in summed])
        kept = [x for x in kept if x not in summed]
    return finish_map(plan, value, tuple(kept), count)


def sum_axes(value: Any, axes: list[int], weight: float = 1.0) -> Any:
    """``weight * sum`` over ``axes``. A plain reduction, which XLA fuses with the elementwise
    work around it; an earlier engine wrote it as a contraction with vectors of ones (a dot: a
    kernel of its own). Side by side (the former ``benchmarks/sum_axes_bench.py --meta``;
    now the ``sum_axes_*`` benchmark cases) the contraction took 1.02-1.07x the time of
    this form in 20-step backprop scans and 1.01-1.05x in the sinusoid and MNIST meta-steps."""
    return weight * jnp.sum(value, axis=tuple(axes))


def route_bilinear(plan: ArrowPlan, a: Any, b: Any, aggregate: str) -> Partial:
    """``message = a * b`` followed by a sum over reduced letters, as one einsum.

    Used for ops marked ``bilinear`` with scalar features under ``sum``/``mean``: the forward
    ``y_j = sum_i w_ij x_i`` becomes a matrix product instead of a broadcast product + reduction.
    """
    m = _letter_axes(plan)
    sizes = plan.conn.sizes
    letters = {x: chr(ord("a") + k) for k, x in enumerate(m.src)}
    batch = "Z"

    def operand(v):
        sub = batch if v.shape[0] > 1 else ""
        keep = [0] if sub else []
        for k, x in enumerate(m.src):
            if v.shape[1 + k] > 1:
                sub += letters[x]
                keep.append(1 + k)
        squeezed = jnp.squeeze(v, [ax for ax in range(v.ndim) if ax not in keep])  # drops size-1 and feature axes
        return squeezed, sub

    (va, sa), (vb, sb) = operand(a), operand(b)
    present = set(sa) | set(sb)
    out_letters = [x for x in m.src if x in m.dst and letters[x] in present]
    out_sub = (batch if batch in present else "") + "".join(letters[x] for x in out_letters)
    value = jnp.einsum(f"{sa},{sb}->{out_sub}", va, vb)
    count = 1
    for x in m.reduced:
        count *= sizes[x]
        if letters[x] not in present:
            value = value * sizes[x]  # both operands constant along a reduced axis
    if batch not in present:
        value = value[None]
    # re-insert size-1 axes for source letters kept in the destination but constant here
    shape = [value.shape[0]]
    k = 1
    kept = tuple(x for x in m.src if x in m.dst)
    for x in kept:
        if x in out_letters:
            shape.append(value.shape[k])
            k += 1
        else:
            shape.append(1)
    value = value.reshape(shape + [1])  # (b, *kept agent axes, 1)
    return finish_map(plan, value, kept, count)


def route_edges(plan: ArrowPlan, message: Any, aggregate: str) -> Partial:
    """Gather messages at edge sources, reduce into destinations with segment ops (static sizes)."""
    edges = plan.conn.edges
    assert edges is not None, "route_edges needs an edge list"
    src_shape, dst_shape = plan.src_shape, plan.dst_shape
    n_src, n_dst = int(np.prod(src_shape)), int(np.prod(dst_shape))
    b = message.shape[0]
    feat = message.shape[1 + len(src_shape) :]
    full = jnp.broadcast_to(message, (b, *src_shape, *feat)).reshape((b, n_src, *feat))
    data = jnp.moveaxis(full[:, edges[:, 0]], 1, 0)  # (E, b, *feat)
    seg = jnp.asarray(edges[:, 1])
    if aggregate == "max":
        value = jax.ops.segment_max(data, seg, num_segments=n_dst)
    else:
        value = jax.ops.segment_sum(data, seg, num_segments=n_dst)
    counts = np.bincount(edges[:, 1], minlength=n_dst).astype(np.float32)  # static
    value = jnp.moveaxis(value, 0, 1).reshape((b, *dst_shape, *feat))
    count = counts.reshape((1, *dst_shape) + (1,) * len(feat))
    return Partial(value, count)


def _is_box(offsets: tuple[tuple[int, ...], ...], lo: list[int], hi: list[int]) -> bool:
    """Whether ``offsets`` are every vector from ``-lo`` to ``hi`` (each once)."""
    return len(set(offsets)) == len(offsets) == int(np.prod([a + b + 1 for a, b in zip(lo, hi)]))


def route_stencil(plan: ArrowPlan, message: Any, aggregate: str) -> Partial:
    """Destination ``d`` receives ``w_o * message[d + o]`` for every offset ``o``: the message
    tensor padded once by the boundary rule (``wrap``, ``zero``/``none``: zeros, ``clamp``: edge
    values; ``max`` pads with -inf), then one static slice per offset, summed (or maxed)."""
    st = plan.conn.stencil
    assert st is not None, "route_stencil needs a stencil"
    shape = plan.src_shape
    rank = len(shape)
    b = message.shape[0]
    feat = message.shape[1 + rank :]
    full = jnp.broadcast_to(message, (b, *shape, *feat))
    lo = [max(0, -min(o[ax] for o in st.offsets)) for ax in range(rank)]
    hi = [max(0, max(o[ax] for o in st.offsets)) for ax in range(rank)]
    pads = [(0, 0)] + list(zip(lo, hi)) + [(0, 0)] * len(feat)
    if st.boundary == "wrap":
        padded = jnp.pad(full, pads, mode="wrap")
    elif st.boundary == "clamp":
        padded = jnp.pad(full, pads, mode="edge")
    else:
        fill = -jnp.inf if aggregate == "max" and st.boundary == "none" else 0.0
        padded = jnp.pad(full, pads, constant_values=fill)
    weights = st.weights or (None,) * len(st.offsets)
    # a zero weight contributes nothing (the centre column of a Sobel kernel): no slice for it
    taps = [(o, w) for o, w in zip(st.offsets, weights) if w is None or w != 0.0]
    value = None
    if aggregate == "max" and st.weights is None and _is_box(st.offsets, lo, hi):
        # a full box of offsets (moore9): one window maximum. Its derivative keeps only the
        # padded input for the backward pass, where a chain of pairwise maxima would keep a
        # mask per pair at every step of a differentiated rollout (~1.4x the Growing NCA's
        # training step)
        window = (1, *(lo[ax] + hi[ax] + 1 for ax in range(rank)), *(1,) * len(feat))
        value = jax.lax.reduce_window(padded, -jnp.inf, jax.lax.max, window, (1,) * padded.ndim, "VALID")
        taps = []
    for o, w in taps:
        index = (slice(None),) + tuple(slice(lo[ax] + o[ax], lo[ax] + o[ax] + shape[ax]) for ax in range(rank))
        piece = padded[index]
        if w is not None:
            piece = piece * w
        if value is None:
            value = piece
        else:
            value = jnp.maximum(value, piece) if aggregate == "max" else value + piece
    if value is None:  # every weight zero
        value = jnp.zeros_like(full)
    if st.boundary == "none":
        count = st.counts(shape).reshape((1, *shape) + (1,) * len(feat))
    else:
        count = len(st.offsets)
    return Partial(value, count)


def combine(partials: list[Partial], aggregate: str) -> Any:
    """Merge the partial aggregates of all arrows sending into one field; finish the mean."""
    value = partials[0].value
    count = partials[0].count
    for p in partials[1:]:
        value = jnp.maximum(value, p.value) if aggregate == "max" else value + p.value
        count = count + p.count
    if aggregate == "mean":
        if isinstance(count, np.ndarray):
            value = value / np.maximum(count, 1.0)  # agents with no incoming edge receive 0
        else:
            value = value / count
    if aggregate == "max" and isinstance(count, np.ndarray):
        value = jnp.where(count > 0, value, 0.0)  # segment_max leaves -inf where nothing arrived
    return value
