"""A slow, plainly correct reference interpreter of a graph's step (for tests, never for speed).

It follows the semantics in :mod:`mplp_graph.ir.spec` and :mod:`mplp_graph.ir.schedule`
with explicit Python loops over stages, arrows, source agents and edges, in NumPy (float64):

* a stage reads the state as it was when the stage began; its writes land together at the end,
  source-field ``updates`` first, then the inboxes;
* an arrow runs its op once per source agent on arrays ``[b, *feature]`` (``b`` = batch size,
  or 1 for fields without batch axis; scalar fields get a feature axis of size 1);
* every message travelling along an edge (index map or edge list) is delivered to its
  destination agent; the messages of all arrows of the stage sending into one field are
  aggregated together (``sum``, ``mean`` = sum / number of messages, ``max``); an agent that
  receives nothing gets 0;
* a per-example value written into a field without batch axis is averaged over the batch;
* custom schedules: a shuffled phase runs its stages in the drawn order; with ``fire < 1`` an
  agent that does not fire keeps the old values of the fields the stage writes in its group;
  the ``schedule.rng`` counter goes up by one after the step.

Only the schedule (which arrows run in which stage) is taken from the compiler, and the random
draws from :mod:`mplp_graph.runtime.draws`.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from mplp_graph.ir.indexmap import bind_sizes, parse_index_map
from mplp_graph.ir.spec import ArrowSpec, FieldSpec, GraphSpec
from mplp_graph.ir.stencil import neighbours, resolve_stencil
from mplp_graph.ops.registry import get_op
from mplp_graph.runtime import draws
from mplp_graph.runtime.program import compile_graph

State = dict[str, dict[str, np.ndarray]]


def _agent_index(f: FieldSpec, idx: tuple[int, ...]) -> tuple[int, ...]:
    """Where agent ``idx`` finds field ``f`` in storage (index 0 along constant axes)."""
    return tuple(0 if ax in f.constant_along else i for ax, i in enumerate(idx))


def _read(f: FieldSpec, stored: np.ndarray, idx: tuple[int, ...]) -> np.ndarray:
    """The value of field ``f`` at agent ``idx`` as ``[b, *feature]``."""
    agent = _agent_index(f, idx)
    v = stored[(slice(None),) + agent] if f.batched else stored[agent][None]
    return v if f.shape else v[..., None]


def _store(f: FieldSpec, stored: np.ndarray, idx: tuple[int, ...], value: np.ndarray) -> None:
    """Write ``value`` (``[b, *feature]``) into field ``f`` at agent ``idx``."""
    if not f.shape:
        value = value[..., 0]
    agent = _agent_index(f, idx)
    if f.batched:
        stored[(slice(None),) + agent] = value  # broadcasts b = 1 to the batch
    else:
        stored[agent] = value.mean(axis=0)  # per-example values: batch mean (paper eq. 4)


def _edges(spec: GraphSpec, a: ArrowSpec) -> list[tuple[tuple[int, ...] | None, tuple[int, ...], float]]:
    """Every edge ``(source agent, destination agent, weight)`` of an arrow, as index tuples; a
    stencil's ``zero`` boundary gives ``None`` sources (a zero message that counts)."""
    src_shape, dst_shape = spec.groups[a.src].shape, spec.groups[a.dst].shape
    if a.stencil is not None:
        return list(neighbours(resolve_stencil(a.stencil, src_shape, dst_shape, a.aggregate), src_shape, zeros=True))
    if a.edges is not None:
        src_agents, dst_agents = list(np.ndindex(*src_shape)), list(np.ndindex(*dst_shape))
        return [(src_agents[s], dst_agents[d], 1.0) for s, d in a.edges]
    m = parse_index_map(a.map if a.map is not None else "identity", len(src_shape))
    sizes = bind_sizes(m, src_shape, dst_shape)
    edges = []
    for s in np.ndindex(*src_shape):
        for b in np.ndindex(*[sizes[x] for x in m.broadcast]):
            letters = dict(zip(m.src, s)) | dict(zip(m.broadcast, b))
            edges.append((s, tuple(letters[x] for x in m.dst), 1.0))
    return edges


def _params_of(a: ArrowSpec, params: Any) -> Any:
    """The parameters arrow ``a`` sees: ``params[share key]`` (the key defaults to the arrow's
    name); for an op with parameter parts, ``{part: params[key of part][part]}``."""
    op = get_op(a.op.name)
    if op.init is None:
        return None
    parts = getattr(op, "param_parts", None)
    if parts is None:
        return params[a.share if a.share is not None else a.name]
    keys = a.share if isinstance(a.share, dict) else {}
    default = a.share if isinstance(a.share, str) else a.name
    return {part: params[keys.get(part, default)][part] for part in parts}


def _aggregate(messages: list[np.ndarray], how: str, shape: tuple[int, ...]) -> np.ndarray:
    if not messages:
        return np.zeros(shape)
    stacked = np.stack(np.broadcast_arrays(*messages))
    if how == "max":
        return stacked.max(axis=0)
    total = stacked.sum(axis=0)
    return total / len(messages) if how == "mean" else total


def _copy(state: Any) -> State:
    return {g: {f: np.array(v, dtype=np.float64) for f, v in fs.items()} for g, fs in state.items()}


def interpret_stage(spec: GraphSpec, stage: tuple[str, ...], params: Any, state: State, fired: Any = None) -> State:
    """Every arrow of the stage reads ``state``; updates land first, then the inboxes.
    ``fired(group) -> bool[*agent_shape]``: which agents keep the stage's writes (default all)."""
    old = state
    new = _copy(state)
    updates = []  # (group, field, agent, value)
    inboxes: dict[tuple[str, str], dict] = {}  # (group, field) -> {"how", "messages": {agent: [msg]}}
    for name in stage:
        a = spec.arrow(name)
        op = get_op(a.op.name)
        src = spec.groups[a.src]
        p = _params_of(a, params)
        args = op.check_args(a.op.args)
        out = {}
        for idx in np.ndindex(*src.shape):
            inputs = tuple(jnp.asarray(_read(src.state[n], old[a.src][n], idx)) for n in a.inputs)
            out[idx] = {k: np.asarray(v, dtype=np.float64) for k, v in op.apply(p, inputs, args).items()}
            for fname, oname in a.updates.items():
                updates.append((a.src, fname, idx, out[idx][oname]))
        if a.into is None:
            continue
        box = inboxes.setdefault((a.dst, a.into), {"how": a.aggregate, "messages": {}})
        for s, d, w in _edges(spec, a):
            msg = out[s]["message"] * w if s is not None else np.zeros_like(next(iter(out.values()))["message"])
            box["messages"].setdefault(d, []).append(msg)
    for g, fname, idx, value in updates:
        _store(spec.groups[g].state[fname], new[g][fname], idx, value)
    for (g, fname), box in inboxes.items():
        f = spec.groups[g].state[fname]
        feat = f.shape if f.shape else (1,)
        for idx in np.ndindex(*spec.groups[g].shape):
            value = _aggregate(box["messages"].get(idx, []), box["how"], (1, *feat))
            _store(f, new[g][fname], idx, value)
    if fired is not None:
        written = {(g, f) for g, f, _, _ in updates} | set(inboxes)
        for g, fname in written:
            mask = np.asarray(fired(g))
            per_example = mask.ndim == len(spec.groups[g].shape) + 1  # a batched counter: [B, *agent]
            f = spec.groups[g].state[fname]
            for idx in np.ndindex(*spec.groups[g].shape):
                if not all(i == 0 for ax, i in enumerate(idx) if ax in f.constant_along):
                    continue
                agent = _agent_index(f, idx)
                if per_example:
                    for b in np.flatnonzero(~mask[(slice(None), *idx)]):
                        new[g][fname][(b, *agent)] = old[g][fname][(b, *agent)]
                elif not mask[idx]:
                    where = (slice(None),) + agent if f.batched else agent
                    new[g][fname][where] = old[g][fname][where]
    return new


def interpret_phase(spec: GraphSpec, phase: str, params: Any, state: Any, schedule=None, occurrence: int = 0) -> State:
    """Run the stages of one phase (the stage order comes from the compiler's schedule, or from
    the draws of a random phase)."""
    schedule = schedule or compile_graph(spec).schedule
    state = _copy(state)
    stages = schedule.phases[phase]
    if not draws.is_random(spec, phase):
        for stage in stages:
            state = interpret_stage(spec, stage, params, state)
        return state
    r = spec.schedule.random[phase]
    g_rng, f_rng = draws.rng_ref(spec)
    key = draws.phase_key(np.asarray(state[g_rng][f_rng]).astype(np.int32), list(schedule.phases).index(phase), occurrence)
    order = np.asarray(draws.stage_order(key, len(stages))) if r.order == "shuffle" and len(stages) > 1 else range(len(stages))
    groups = list(spec.groups)
    for k in order:
        k = int(k)
        fired = None
        if r.fire < 1.0:
            fired = lambda g, k=k: draws.fire_mask(key, k, groups.index(g), spec.groups[g].shape, r.fire)  # noqa: E731
        state = interpret_stage(spec, stages[k], params, state, fired)
    return state


def interpret_step(spec: GraphSpec, params: Any, state: Any, batch: dict[str, Any]) -> tuple[State, dict[str, np.ndarray]]:
    """Feed ``batch``, run every phase of the step; returns ``(state, outputs)`` like ``Program.step``."""
    schedule = compile_graph(spec).schedule
    state = _copy(state)
    for key, ref in spec.inputs.items():
        g, fname = ref.split(".", 1)
        state[g][fname] = np.array(batch[key], dtype=np.float64)
    seen: dict[str, int] = {}
    for phase in schedule.step:
        state = interpret_phase(spec, phase, params, state, schedule, seen.get(phase, 0))
        seen[phase] = seen.get(phase, 0) + 1
    if spec.schedule.rng is not None:
        g, fname = draws.rng_ref(spec)
        state[g][fname] = state[g][fname] + 1
    outputs = {key: state[ref.split(".", 1)[0]][ref.split(".", 1)[1]] for key, ref in spec.outputs.items()}
    return state, outputs
