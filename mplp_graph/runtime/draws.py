"""The random draws of custom schedules (``schedule.random``), one function per draw.

A step's draws are a pure function of the ``schedule.rng`` counter (an int32 field that the step
increments), of which phase runs (its index in first-use order) and of how many times that phase
already ran in the step. The compiled step and the reference interpreter both call these
functions, so they see the same orders and masks.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mplp_graph.ir.spec import GraphSpec


def rng_ref(spec: GraphSpec) -> tuple[str, str] | None:
    """``(group, field)`` of the counter, or None."""
    if spec.schedule.rng is None:
        return None
    g, f = spec.schedule.rng.split(".", 1)
    return g, f


def is_random(spec: GraphSpec, phase: str) -> bool:
    r = spec.schedule.random.get(phase)
    return r is not None and (r.order == "shuffle" or r.fire < 1.0)


def phase_key(counter: Any, phase_index: int, occurrence: int) -> Any:
    """The key of one run of a phase: step ``counter``, phase ``phase_index``, its ``occurrence``-th
    run in the step (0 for the first). A batched counter ``int32[B]`` gives one key per example
    (``[B, 2]``), each the key its counter alone would give."""
    counter = jnp.asarray(counter, jnp.int32)
    if counter.ndim == 1:
        return jax.vmap(lambda c: phase_key(c, phase_index, occurrence))(counter)
    key = jax.random.fold_in(jax.random.PRNGKey(0), counter.reshape(()))
    return jax.random.fold_in(jax.random.fold_in(key, phase_index), occurrence)


def stage_order(key: Any, n_stages: int) -> Any:
    """A uniformly random permutation of the phase's stages. int32[n_stages]"""
    return jax.random.permutation(jax.random.fold_in(key, 0), n_stages)


def fire_mask(key: Any, stage: int, group_index: int, agent_shape: tuple[int, ...], p: float) -> Any:
    """Which agents of a group keep the writes of one stage: Bernoulli(p), one draw per agent,
    shared by every example of the batch (bool[*agent_shape]); with one key per example
    (:func:`phase_key` of a batched counter), one draw per agent and example (bool[B, *agent_shape])."""
    if jnp.ndim(key) == 2:
        return jax.vmap(lambda k: fire_mask(k, stage, group_index, agent_shape, p))(key)
    k = jax.random.fold_in(jax.random.fold_in(key, 1 + stage), group_index)
    return jax.random.bernoulli(k, p, agent_shape)


def field_mask(mask: Any, constant_along: tuple[int, ...], batched: bool, field_ndim: int, per_example: bool = False) -> Any:
    """A group's mask in a field's stored layout ``[B?, *agent (1 along constant axes), *field]``
    (size-1 axes broadcast). Along an axis where the field is stored once, the agent at index 0
    decides for all of them. ``per_example``: the mask has a leading example axis (a batched
    counter; the field is batched, as verification checks)."""
    lead = 1 if per_example else 0
    for ax in constant_along:
        mask = jax.lax.slice_in_dim(mask, 0, 1, axis=lead + ax)
    shape = ((1,) if batched and not per_example else ()) + tuple(mask.shape) + (1,) * field_ndim
    return mask.reshape(shape)
