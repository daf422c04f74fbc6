"""The backprop oracle as a library function: ``jax.grad`` through a graph's forward phase, then
SGD, to check a hand-written backprop protocol against (docs/experiments.md, "Quick checks: the
demo and the backprop oracle").

``jax.grad`` through an op without a derivative (``step``, ``sign``, ``is_max``, ``life``)
returns zeros without complaint, so before differentiating, :func:`check_differentiable` looks
for such ops on the data path from the parameters to the loss and refuses with the arrows it
found, located in the graph (and in its YAML file when ``file`` is given).
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import networkx as nx

from mplp_graph.errors import Location, NotDifferentiableError
from mplp_graph.ir.spec import GraphSpec
from mplp_graph.ops.registry import get_op

Wrt = Mapping[str, Iterable[str]]  # {group: [field, ...]}: the parameters to differentiate

MSG_NOT_DIFFERENTIABLE = (
    "{where}: arrow {arrow!r} runs op {op!r}, which has no derivative, between the parameters ({params}) and the "
    "loss {loss}: jax.grad through phase {phase!r} would silently return zero gradients there, and a backprop "
    "protocol cannot pass a gradient through it. Train the graph with a learned protocol (MPLP needs no gradient) "
    "or use a differentiable op such as 'sigmoid'"
)


def default_wrt(spec: GraphSpec, phase: str = "forward") -> dict[str, list[str]]:
    """The float fields without a batch axis that the phase's arrows read: weights and biases."""
    wrt: dict[str, list[str]] = {}
    for a in spec.arrows:
        if a.phase != phase:
            continue
        for f in a.inputs:
            fs = spec.groups[a.src].state[f]
            if not fs.batched and fs.dtype.startswith("float") and f not in wrt.get(a.src, []):
                wrt.setdefault(a.src, []).append(f)
    return wrt


def output_field(spec: GraphSpec, output: str) -> tuple[str, str]:
    if output not in spec.outputs:
        raise KeyError(f"graph {spec.name!r} has no output {output!r}; its outputs are {sorted(spec.outputs)}")
    g, f = spec.outputs[output].split(".", 1)
    return g, f


def blocking_arrows(spec: GraphSpec, wrt: Wrt, loss: tuple[str, str], phase: str = "forward") -> list[int]:
    """Indices of the phase's arrows with a non-differentiable op on a path from a ``wrt`` field
    to the ``loss`` field (dataflow through inputs -> ``into`` / ``updates``)."""
    flow = nx.DiGraph()
    for k, a in enumerate(spec.arrows):
        if a.phase != phase:
            continue
        node = ("arrow", k)
        for f in a.inputs:
            flow.add_edge(("field", a.src, f), node)
        if a.into is not None:
            flow.add_edge(node, ("field", a.dst, a.into))
        for f in a.updates:
            flow.add_edge(node, ("field", a.src, f))
    sources = [("field", g, f) for g, fs in wrt.items() for f in fs if ("field", g, f) in flow]
    target = ("field", *loss)
    if target not in flow:
        return []
    downstream = set(sources)
    for s in sources:
        downstream |= nx.descendants(flow, s)
    upstream = nx.ancestors(flow, target) | {target}
    found = []
    for node in downstream & upstream:
        if node[0] == "arrow" and not get_op(spec.arrows[node[1]].op.name).differentiable:
            found.append(node[1])
    return sorted(found)


def _locator(file: str | os.PathLike | None):
    """``path -> Location`` in ``file`` (the graph's YAML), or plain YAML paths."""
    if file is None:
        return lambda path: Location(path=path)
    from mplp_graph.config.issues import locator
    from mplp_graph.config.yaml_nodes import NodeBuilder, compose_nodes, decode_text

    filename = os.fspath(file)
    with open(filename, "rb") as fh:
        text = decode_text(fh.read(), filename)
    node, anchors = compose_nodes(text, filename)
    builder = NodeBuilder(filename, anchors)
    builder.build(node, "")
    return locator(filename, builder.positions)


def check_differentiable(
    spec: GraphSpec, wrt: Wrt | None = None, output: str = "loss", phase: str = "forward", *, file: str | os.PathLike | None = None
) -> None:
    """Raise :class:`NotDifferentiableError` if the gradient of ``output`` with respect to ``wrt``
    (default: :func:`default_wrt`) has to pass through an op without a derivative."""
    wrt = default_wrt(spec, phase) if wrt is None else wrt
    loss = output_field(spec, output)
    found = blocking_arrows(spec, wrt, loss, phase)
    if not found:
        return
    locate = _locator(file)
    params = ", ".join(f"{g}.{f}" for g, fs in wrt.items() for f in fs)
    lines = [
        MSG_NOT_DIFFERENTIABLE.format(
            where=locate(f"arrows[{k}].op"), arrow=spec.arrows[k].name, op=spec.arrows[k].op.name,
            params=params, loss=".".join(loss), phase=phase,
        )
        for k in found
    ]
    raise NotDifferentiableError("\n".join(lines))


def batch_loss(prog: Any, state: Any, batch: dict[str, Any], output: str = "loss") -> Any:
    """Mean over the batch of the output summed over agents (and features)."""
    _, out = prog.forward({}, state, batch)
    value = out[output]
    return jnp.mean(jnp.sum(value.reshape(value.shape[0], -1), axis=1))


def forward_grad(prog: Any, state: Any, batch: dict[str, Any], wrt: Wrt | None = None, output: str = "loss") -> dict[str, dict[str, Any]]:
    """``jax.grad`` of :func:`batch_loss` with respect to the ``wrt`` fields (checked first)."""
    wrt = default_wrt(prog.spec) if wrt is None else wrt
    check_differentiable(prog.spec, wrt, output)
    p = {g: {f: state[g][f] for f in fs} for g, fs in wrt.items()}

    def loss_fn(p):
        s = {g: {**fs, **p.get(g, {})} for g, fs in state.items()}
        return batch_loss(prog, s, batch, output)

    return jax.grad(loss_fn)(p)


def sgd_reference(prog: Any, state: Any, batches: list[dict[str, Any]], lr: float, wrt: Wrt | None = None, output: str = "loss") -> dict[str, dict[str, Any]]:
    """The ``wrt`` fields after one SGD step (``p -= lr * grad``) per batch: what a backprop
    protocol must reproduce. Other fields of ``state`` are left as they are."""
    wrt = default_wrt(prog.spec) if wrt is None else wrt
    check_differentiable(prog.spec, wrt, output)
    p = {g: {f: state[g][f] for f in fs} for g, fs in wrt.items()}

    def loss_fn(p, batch):
        s = {g: {**fs, **p.get(g, {})} for g, fs in state.items()}
        return batch_loss(prog, s, batch, output)

    grad = jax.jit(jax.grad(loss_fn))
    for batch in batches:
        p = jax.tree_util.tree_map(lambda v, gr: v - lr * gr, p, grad(p, batch))
    return p
