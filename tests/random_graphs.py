"""Random small valid graphs for differential tests (compiled engine vs reference interpreter).

``random_graph(seed)`` draws groups (rank 0-2, sizes 1-4), batched / unbatched scalar and
vector fields (some ``constant_along``), and arrows with random ops, index maps (reductions,
broadcasts, transposes, identity), explicit edge lists (multi-edges, agents that receive
nothing), all aggregates, inboxes, reflexive arrows, ``updates``, shared parameters (fused when
they land in one stage), several phases and some explicit stages. Every arrow is checked alone
with ``verify`` while drawing; the whole graph is re-drawn until ``verify`` accepts it.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

import mplp_graph as mg
from mplp_graph.ir.spec import ArrowSpec, FieldSpec, GraphSpec, GroupSpec, OpRef, ScheduleSpec

ARITY = {"identity": 1, "tanh": 1, "sigmoid": 1, "relu": 1, "add": 2, "mul": 2, "sub": 2, "sgd_mul": 3, "dense": None}
OPS = tuple(ARITY)
AGGREGATES = ("sum", "mean", "max")
LETTERS = "ijklmn"


def feat(f: FieldSpec) -> tuple[int, ...]:
    return f.shape if f.shape else (1,)


def _group(rng, sizes: list[int], width: int) -> GroupSpec:
    rank = int(rng.integers(0, 3))
    shape = tuple(int(rng.choice(sizes)) for _ in range(rank))
    fields = {}
    for k in range(int(rng.integers(2, 5))):
        const = ()
        if rank and rng.random() < 0.3:
            const = tuple(sorted(set(int(x) for x in rng.integers(0, rank, size=int(rng.integers(1, rank + 1))))))
        fields[f"f{k}"] = FieldSpec(
            shape=(width,) if rng.random() < 0.4 else (),
            batched=bool(rng.random() < 0.6),
            constant_along=const,
        )
    return GroupSpec(kind="agent", shape=shape, state=fields)


def _index_map(rng, src_shape, dst_shape) -> str | None:
    if src_shape == dst_shape and rng.random() < 0.3:
        return None if rng.random() < 0.5 else "identity"
    src = list(LETTERS[: len(src_shape)])
    fresh = iter(LETTERS[len(src_shape) :])
    dst: list[str] = []
    for n in dst_shape:
        same = [x for x, m in zip(src, src_shape) if m == n and x not in dst]
        dst.append(str(rng.choice(same)) if same and rng.random() < 0.75 else next(fresh))
    if rng.random() < 0.3:  # compact form, e.g. 'ij->ji'
        return "".join(src) + "->" + "".join(dst)
    return " ".join(src) + " -> " + " ".join(dst)


def _edges(rng, n_src: int, n_dst: int) -> tuple[tuple[int, int], ...]:
    targets = rng.permutation(n_dst)[: max(1, int(rng.integers(1, n_dst + 1)))]  # often leaves agents out
    pairs = [(int(rng.integers(n_src)), int(rng.choice(targets))) for _ in range(int(rng.integers(1, n_src + n_dst + 2)))]
    if rng.random() < 0.7:
        pairs.append(pairs[int(rng.integers(len(pairs)))])  # a multi-edge
    return tuple(pairs)


def _arrow(
    rng, name: str, groups: dict[str, GroupSpec], phase: str, width: int, shares: list[ArrowSpec], share_plain_ops: bool
) -> ArrowSpec | None:
    """One random arrow, or None when the draw does not fit (the caller draws again)."""
    names = list(groups)
    template = shares[int(rng.integers(len(shares)))] if shares and rng.random() < 0.5 else None
    src = template.src if template is not None and rng.random() < 0.5 else str(rng.choice(names))
    dst = src if rng.random() < 0.25 else str(rng.choice(names))
    sfields = groups[src].state
    share = None
    if template is not None:  # share parameters with an earlier arrow: same op, args, input shapes
        op, args, share = template.op.name, dict(template.op.args), template.share
        want = [feat(groups[template.src].state[n]) for n in template.inputs]
        inputs = []
        for shape in want:
            fits = [n for n, f in sfields.items() if feat(f) == shape]
            if not fits:
                return None
            inputs.append(str(rng.choice(fits)))
    else:
        op = "dense" if rng.random() < 0.3 else str(rng.choice(OPS))
        args: dict[str, Any] = {}
        if op == "dense":
            vec = [n for n, f in sfields.items() if f.shape]
            if not vec:
                return None
            inputs = [str(rng.choice(vec)) for _ in range(int(rng.integers(1, 3)))]
            args["features"] = int(rng.choice([1, width]))
            if rng.random() < 0.5:
                args["activation"] = "tanh"
        else:
            inputs = [str(rng.choice(list(sfields))) for _ in range(ARITY[op])]
        if op == "sgd_mul":
            args["lr"] = 0.1
        if (op == "dense" or share_plain_ops) and rng.random() < 0.5:
            share = f"s_{name}"
    shapes = [feat(sfields[n]) for n in inputs]
    try:
        msg = (args["features"],) if op == "dense" else tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        return None
    into = None
    targets = [n for n, f in groups[dst].state.items() if feat(f) == msg]
    if targets and rng.random() < 0.85:
        into = str(rng.choice(targets))
    updates = {}
    own = [n for n, f in sfields.items() if feat(f) == msg]
    if own and (into is None or rng.random() < 0.2):
        updates = {str(rng.choice(own)): "message"}
    if into is None and not updates:
        return None
    src_shape, dst_shape = groups[src].shape, groups[dst].shape
    conn: dict[str, Any] = {}
    if into is not None and rng.random() < 0.3:
        conn["edges"] = _edges(rng, int(np.prod(src_shape)), int(np.prod(dst_shape)))
    elif into is not None or src_shape != dst_shape:
        conn["map"] = _index_map(rng, src_shape, dst_shape)
    return ArrowSpec(
        name=name,
        src=src,
        dst=dst,
        phase=phase,
        op=OpRef(name=op, args=args),
        inputs=tuple(inputs),
        aggregate=str(rng.choice(AGGREGATES)),
        into=into,
        updates=updates,
        share=share,
        **conn,
    )


def _alone_ok(groups, arrow: ArrowSpec) -> bool:
    try:
        mg.verify(GraphSpec(name="one", groups=groups, arrows=(arrow,)))
        return True
    except mg.GraphSpecError:
        return False


def _stages(rng, arrows: list[ArrowSpec]) -> tuple[tuple[str, ...], ...]:
    """Random explicit stages; arrows sharing a key mostly land in one stage (one fused kernel)."""
    order = [a.name for a in arrows]
    rng.shuffle(order)
    stages: list[list[str]] = []
    for name in order:
        if stages and rng.random() < 0.5:
            stages[int(rng.integers(len(stages)))].append(name)
        else:
            stages.append([name])
    by_name = {a.name: a for a in arrows}
    for a in arrows:  # pull arrows with a share key into the stage of the first one
        if a.share is None or rng.random() < 0.2:
            continue
        home = next(s for s in stages if any(by_name[n].share == a.share for n in s))
        if a.name not in home:
            next(s for s in stages if a.name in s).remove(a.name)
            home.append(a.name)
    return tuple(tuple(s) for s in stages if s)


def _draw(rng, seed: int, share_plain_ops: bool) -> GraphSpec:
    width = int(rng.choice([2, 3]))
    sizes = [int(x) for x in rng.choice([1, 2, 3, 4], size=2, replace=False)]
    groups = {f"g{k}": _group(rng, sizes, width) for k in range(int(rng.integers(2, 6)))}
    phases = ["forward"] + (["backward"] if rng.random() < 0.6 else []) + (["extra"] if rng.random() < 0.3 else [])
    arrows: list[ArrowSpec] = []
    inbox_aggregate: dict[tuple[str, str, str], str] = {}
    for k in range(int(rng.integers(3, 9))):
        phase = str(rng.choice(phases)) if k >= len(phases) else phases[k]
        for _ in range(30):
            shares = [a for a in arrows if a.share is not None]
            a = _arrow(rng, f"a{k}", groups, phase, width, shares, share_plain_ops)
            if a is None:
                continue
            if a.into is not None:  # one aggregation per inbox
                agg = inbox_aggregate.setdefault((phase, a.dst, a.into), a.aggregate)
                a = a.model_copy(update={"aggregate": agg})
            if _alone_ok(groups, a):
                arrows.append(a)
                break
    explicit = {}
    for p in phases:
        mine = [a for a in arrows if a.phase == p]
        if mine and rng.random() < 0.5:
            explicit[p] = _stages(rng, mine)
    used = [p for p in phases if any(a.phase == p for a in arrows)]
    step: tuple[str, ...] = ()
    if len(used) > 1 and rng.random() < 0.4:
        step = tuple(rng.permutation(used))
    elif used and rng.random() < 0.2:
        step = tuple(used) + (used[0],)  # a phase run twice in one step
    fields = [(g, n) for g, grp in groups.items() for n in grp.state]
    picks = rng.permutation(len(fields))
    inputs = {f"in{j}": "{}.{}".format(*fields[i]) for j, i in enumerate(picks[: int(rng.integers(0, 3))])}
    outputs = {f"out{j}": "{}.{}".format(*fields[i]) for j, i in enumerate(rng.permutation(len(fields))[: int(rng.integers(1, 4))])}
    return GraphSpec(
        name=f"random_{seed}",
        groups=groups,
        arrows=tuple(arrows),
        schedule=ScheduleSpec(phases=explicit, step=step),
        inputs=inputs,
        outputs=outputs,
    )


def random_graph(seed: int, *, share_plain_ops: bool = False) -> GraphSpec:
    """A random small graph that ``mg.verify`` accepts (deterministic in ``seed``).

    Share keys go on ``dense`` arrows (ops with parameters); ``share_plain_ops`` also puts them
    on parameterless ops (which then fuse into one kernel without parameters)."""
    rng = np.random.default_rng(seed)
    for _ in range(500):
        spec = _draw(rng, seed, share_plain_ops)
        if not spec.arrows:
            continue
        try:
            return mg.verify(spec)
        except mg.GraphSpecError:
            continue
    raise RuntimeError(f"no valid random graph for seed {seed}")


def random_values(prog: mg.Program, seed: int, batch_size: int = 2):
    """``(params, state, batch)`` with every value random (so zeros cannot hide a bug)."""
    rng = np.random.default_rng(seed)
    state = prog.init(jax.random.PRNGKey(seed), batch_size)
    state = {g: {f: rng.uniform(-1, 1, v.shape).astype(v.dtype) for f, v in fs.items()} for g, fs in state.items()}
    params = jax.tree_util.tree_map(
        lambda v: rng.uniform(-1, 1, v.shape).astype(v.dtype), prog.init_params(jax.random.PRNGKey(seed + 1))
    )
    batch = {}
    for key, ref in prog.spec.inputs.items():
        g, f = ref.split(".", 1)
        batch[key] = rng.uniform(-1, 1, state[g][f].shape).astype(np.float32)
    return params, state, batch


def describe(spec: GraphSpec) -> str:
    """A compact text of a graph, for assertion messages."""
    lines = [f"{g}{list(grp.shape)}: " + ", ".join(f"{n}{list(f.shape)}{'B' if f.batched else ''}{'c' + str(list(f.constant_along)) if f.constant_along else ''}" for n, f in grp.state.items()) for g, grp in spec.groups.items()]
    for a in spec.arrows:
        conn = f"edges={list(a.edges)}" if a.edges is not None else f"map={a.map!r}"
        lines.append(f"{a.name}[{a.phase}] {a.src}->{a.dst} {a.op.name}{dict(a.op.args)}{list(a.inputs)} {conn} {a.aggregate} into={a.into} updates={dict(a.updates)} share={a.share}")
    lines.append(f"schedule={dict(spec.schedule.phases)} step={spec.schedule.step} inputs={dict(spec.inputs)}")
    return "\n".join(lines)
