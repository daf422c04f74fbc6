"""Running a compiled program: pure functions ``(params, state, ...) -> state``.

A stage runs all its kernels on the state as it was when the stage began, then applies their
writes together: source-field ``updates`` first, then the combined messages of each inbox.

Custom schedules (``schedule.random``, drawn by :mod:`mplp_graph.runtime.draws`): a phase with
``order: shuffle`` runs its stages in a random order (``lax.switch`` over the stages inside a
``fori_loop``, so the kernels are compiled once); with ``fire: p`` each stage's writes are kept
at a random subset of the agents of each written group. The step then adds 1 to the
``schedule.rng`` counter.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from mplp_graph.compile.group import Kernel
from mplp_graph.compile.pipeline import CompiledGraph
from mplp_graph.errors import CompileError
from mplp_graph.ir.layout import stored_shape
from mplp_graph.runtime import draws
from mplp_graph.runtime.lower import State, run_kernel, write
from mplp_graph.compile.partition import constrain_state
from mplp_graph.runtime.route import combine


def batch_size_of(prog: CompiledGraph, state: State) -> int:
    for gname, group in prog.spec.groups.items():
        for fname, f in group.state.items():
            if f.batched:
                return int(state[gname][fname].shape[0])
    return 1


def kernel_params(kernel: Kernel, params: Any) -> Any:
    """The parameters one kernel call sees: ``params[key]``, or ``{part: params[key][part]}``."""
    if kernel.share is None or kernel.op.init is None:
        return None
    if isinstance(kernel.share, tuple):
        return {part: params[key][part] for part, key in kernel.share}
    return params[kernel.share]


def run_stage(
    prog: CompiledGraph, kernels: tuple[Kernel, ...], params: Any, state: State, side: dict | None = None, fire: tuple | None = None
) -> State:
    """Run one stage. ``fire = (key, stage index, p)``: keep each written group's new values only
    at the agents of its random mask (the others keep their old values)."""
    fields = {g: grp.state for g, grp in prog.spec.groups.items()}
    b = batch_size_of(prog, state)
    updates = []
    inboxes: dict[tuple[str, str], list] = {}
    for kernel in kernels:
        p = kernel_params(kernel, params)
        ups, parts, extra = run_kernel(kernel, p, state, fields)
        updates += ups
        if side is not None:
            side.update(extra)
        for plan, partial in parts:
            inboxes.setdefault((plan.spec.dst, plan.spec.into), []).append((plan, partial))
    new = {g: dict(fs) for g, fs in state.items()}
    for g, fname, value in updates:
        f = fields[g][fname]
        new[g][fname] = write(f, value, stored_shape(prog.spec.groups[g], f, b))
    for (g, fname), items in inboxes.items():
        f = fields[g][fname]
        value = combine([p for _, p in items], items[0][0].spec.aggregate)
        new[g][fname] = write(f, value, stored_shape(prog.spec.groups[g], f, b))
    if fire is not None:
        new = _keep_fired(prog, state, new, [(g, f) for g, f, _ in updates] + list(inboxes), fire)
    return constrain_state(prog.spec, prog.partition, new)  # split groups stay split (compile.partition)


def _keep_fired(prog: CompiledGraph, old: State, new: State, written: list[tuple[str, str]], fire: tuple) -> State:
    key, stage, p = fire
    groups = list(prog.spec.groups)
    masks: dict[str, Any] = {}
    for g, fname in dict.fromkeys(written):  # each written field once, in order
        grp, f = prog.spec.groups[g], prog.spec.groups[g].state[fname]
        if g not in masks:  # one draw per group and stage: all its written fields agree
            masks[g] = draws.fire_mask(key, stage, groups.index(g), grp.shape, p)
        m = draws.field_mask(masks[g], f.constant_along, f.batched, len(f.shape), per_example=jnp.ndim(key) == 2)
        new[g][fname] = jnp.where(m, new[g][fname], old[g][fname])
    return new


def counter_value(prog: CompiledGraph, state: State) -> Any:
    ref = draws.rng_ref(prog.spec)
    return state[ref[0]][ref[1]] if ref is not None else jnp.zeros((), jnp.int32)


def run_phase(prog: CompiledGraph, phase: str, params: Any, state: State, side: dict | None = None, occurrence: int = 0) -> State:
    """Run one phase's stages. ``occurrence``: how many times the phase already ran in this step
    (a random phase draws anew for each run)."""
    if phase not in prog.phases:
        raise CompileError(f"graph {prog.spec.name!r} has no phase {phase!r}; its phases are {sorted(prog.phases)}")
    stages = prog.phases[phase]
    if not draws.is_random(prog.spec, phase):
        for kernels in stages:
            state = run_stage(prog, kernels, params, state, side)
        return state
    r = prog.spec.schedule.random[phase]
    key = draws.phase_key(counter_value(prog, state), list(prog.phases).index(phase), occurrence)

    def stage(k: int, state: State) -> State:
        fire = (key, k, r.fire) if r.fire < 1.0 else None
        return run_stage(prog, stages[k], params, state, side, fire)

    if r.order == "fixed" or len(stages) < 2:
        for k in range(len(stages)):
            state = stage(k, state)
        return state
    if side is not None:
        raise CompileError(
            f"phase {phase!r} runs its stages in a random order (schedule.random.{phase}.order: shuffle), so side "
            "outputs cannot be collected from it; use a fixed order to gather statistics"
        )
    order = draws.stage_order(key, len(stages))
    branches = [functools.partial(stage, k) for k in range(len(stages))]
    return jax.lax.fori_loop(0, len(stages), lambda t, s: jax.lax.switch(order[t], branches, s), state)


def run_step_phases(prog: CompiledGraph, params: Any, state: State, side: dict | None = None) -> State:
    """Every phase of ``schedule.step`` in order, then the ``schedule.rng`` counter's increment."""
    seen: dict[str, int] = {}
    for phase in prog.step_phases:
        state = run_phase(prog, phase, params, state, side, seen.get(phase, 0))
        seen[phase] = seen.get(phase, 0) + 1
    ref = draws.rng_ref(prog.spec)
    if ref is not None:
        g, f = ref
        state = {**state, g: {**state[g], f: state[g][f] + 1}}
    return state


def feed(prog: CompiledGraph, state: State, batch: dict[str, Any]) -> State:
    """Write the batch arrays into the fields named by the graph's ``inputs``."""
    expected = set(prog.spec.inputs)
    if set(batch) != expected:
        raise CompileError(
            f"graph {prog.spec.name!r} expects batch keys {sorted(expected)}, got {sorted(batch)}; "
            "the keys come from the graph's 'inputs' section"
        )
    b = batch_size_of(prog, state)
    new = {g: dict(fs) for g, fs in state.items()}
    for key, ref in prog.spec.inputs.items():
        g, fname = ref.split(".", 1)
        f = prog.spec.groups[g].state[fname]
        want = stored_shape(prog.spec.groups[g], f, b)
        value = batch[key]
        if tuple(value.shape) != want:
            raise CompileError(
                f"batch[{key!r}] has shape {list(value.shape)} but field {ref} needs {list(want)} "
                f"([batch, *agent_shape, *field_shape] with batch {b} from the state)"
            )
        new[g][fname] = value.astype(f.dtype)
    return new


def outputs(prog: CompiledGraph, state: State) -> dict[str, Any]:
    out = {}
    for key, ref in prog.spec.outputs.items():
        g, fname = ref.split(".", 1)
        out[key] = state[g][fname]
    return out


def step(
    prog: CompiledGraph, params: Any, state: State, batch: dict[str, Any], side: dict | None = None
) -> tuple[State, dict[str, Any]]:
    """Feed the batch, run every phase of ``schedule.step`` in order, return the outputs.
    Side outputs of the ops are collected into ``side`` (``{arrow: {name: value}}``) if given."""
    state = constrain_state(prog.spec, prog.partition, feed(prog, state, batch))
    state = run_step_phases(prog, params, state, side)
    return state, outputs(prog, state)


def step_carry(prog: CompiledGraph, params: Any, carry: State, batch: dict[str, Any]) -> tuple[State, dict[str, Any]]:
    """:func:`step` carrying only the persistent fields; the others start as zeros (never read)."""
    b = batch_size_of_carry(prog, carry, batch)
    full = {}
    for g, grp in prog.spec.groups.items():
        full[g] = {}
        for f, fs in grp.state.items():
            if (g, f) in prog.persistent:
                full[g][f] = carry[g][f]
            else:
                full[g][f] = jnp.zeros(stored_shape(grp, fs, b), fs.dtype)
    state, out = step(prog, params, full, batch)
    return carry_of(prog, state), out


def carry_of(prog: CompiledGraph, state: State) -> State:
    """The persistent fields of a full state; groups without any are left out."""
    carry = {g: {f: v for f, v in fs.items() if (g, f) in prog.persistent} for g, fs in state.items()}
    return {g: fs for g, fs in carry.items() if fs}


def batch_size_of_carry(prog: CompiledGraph, carry: State, batch: dict[str, Any]) -> int:
    for gname, group in prog.spec.groups.items():
        for fname, f in group.state.items():
            if f.batched and (gname, fname) in prog.persistent:
                return int(carry[gname][fname].shape[0])
    for key, ref in prog.spec.inputs.items():
        g, f = ref.split(".", 1)
        if prog.spec.groups[g].state[f].batched:
            return int(batch[key].shape[0])
    return 1
