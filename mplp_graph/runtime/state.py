"""Agent state: initialisation. State is a pytree ``{group: {field: array}}``; each field has the
shape :func:`mplp_graph.ir.layout.stored_shape` gives."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mplp_graph.ir.layout import stored_shape
from mplp_graph.ir.spec import FieldSpec, GraphSpec


def init_field(key: Any, f: FieldSpec, shape: tuple[int, ...]) -> Any:
    init = f.init
    if init.kind == "zeros":
        return jnp.zeros(shape, f.dtype)
    if init.kind == "constant":
        return jnp.full(shape, init.value, f.dtype)
    if init.kind == "normal":
        return (init.mean + init.std * jax.random.normal(key, shape)).astype(f.dtype)
    if init.kind == "uniform":
        return jax.random.uniform(key, shape, minval=init.low, maxval=init.high).astype(f.dtype)
    raise ValueError(f"unknown init kind {init.kind!r}")  # unreachable: the schema admits only these


def init_state(spec: GraphSpec, key: Any, batch_size: int = 1) -> dict[str, dict[str, Any]]:
    """Fresh agent state. Every random field gets its own key (folded in by position)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    state: dict[str, dict[str, Any]] = {}
    k = 0
    for gname, group in spec.groups.items():
        state[gname] = {}
        for fname, f in group.state.items():
            state[gname][fname] = init_field(jax.random.fold_in(key, k), f, stored_shape(group, f, batch_size))
            k += 1
    return state


def zeros_state(spec: GraphSpec, batch_size: int) -> dict[str, dict[str, Any]]:
    """A state of zeros (no randomness): the skeleton into which priors are placed."""
    return {
        gname: {fname: jnp.zeros(stored_shape(group, f, batch_size), f.dtype) for fname, f in group.state.items()}
        for gname, group in spec.groups.items()
    }


def agent_params(spec: GraphSpec, state: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The fields without a batch axis (weights, biases...): what a prior or a trained net is."""
    return {
        g: {f: state[g][f] for f, fs in grp.state.items() if not fs.batched and f in state.get(g, {})}
        for g, grp in spec.groups.items()
    }


def with_agent_params(state: dict[str, dict[str, Any]], prior: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``state`` with its per-agent (unbatched) fields replaced by ``prior``'s."""
    return {g: {**fs, **prior.get(g, {})} for g, fs in state.items()}
