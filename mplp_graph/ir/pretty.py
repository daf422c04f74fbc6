"""format_graph(spec) -> str: the IR's printer (the verifier's counterpart, as ``pp_jaxpr`` is
to ``typecheck_jaxpr`` in autodidax).

The text is deterministic (it follows the spec's own order and the schedule) and compact::

    graph feedforward_2-3-1_relu_l2
      dense net (2, 3, 1), relu hidden, l2 loss, protocol backprop

    groups:
      W0  weight  [2, 3]
        w  f32[]  normal(0.05)
        x  f32[]  per-example const(1)
    ...
    phase forward:
      [1] x->W0: x --(i -> i j, mean)--> W0.x   identity(value)
      [2] W0->b0: W0 --(i j -> j, sum)--> b0.z   mul(w, x)
    phase backward:
      [2] b0.sgd: b0 --(identity)--> b0   sgd(b, g; lr=0.1)   updates{b<-message}

Stage numbers in brackets count from 1 within their phase (stage ``[k]`` is
``build_schedule(spec).phases[phase][k - 1]``). A field's init is omitted when it is zeros, and
``const(1)`` means ``constant_along=(1,)``: the value is stored once along agent axis 1.
"""

from __future__ import annotations

from mplp_graph.ir.schedule import Schedule, ScheduleError, build_schedule, default_step, phase_names
from mplp_graph.ir.spec import ArrowSpec, FieldSpec, GraphSpec, GroupSpec
from mplp_graph.ops.registry import get_op

DTYPE_SHORT = {"float32": "f32", "float64": "f64", "int32": "i32", "bool": "bool"}
GAP = "   "  # between the parts of an arrow line


def _num(v: float | int | bool | str) -> str:
    if isinstance(v, bool) or isinstance(v, str):
        return str(v)
    return format(v, "g")


def format_shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(n) for n in shape) + "]"


def format_init(f: FieldSpec) -> str:
    """``normal(0.05)``, ``normal(0.05, mean=1)``, ``uniform(-1, 1)``, ``fill(0.5)``; '' for zeros."""
    init = f.init
    if init.kind == "normal":
        return f"normal({_num(init.std)}" + (f", mean={_num(init.mean)})" if init.mean else ")")
    if init.kind == "uniform":
        return f"uniform({_num(init.low)}, {_num(init.high)})"
    if init.kind == "constant":
        return f"fill({_num(init.value)})"
    return ""


def format_field(f: FieldSpec) -> str:
    """``f32[]``, ``f32[3] per-example const(1) normal(0.05)``: type, then flags, then init."""
    parts = [DTYPE_SHORT.get(f.dtype, f.dtype) + "[" + ",".join(str(n) for n in f.shape) + "]"]
    if f.batched:
        parts.append("per-example")
    if f.constant_along:
        parts.append("const(" + ",".join(str(ax) for ax in f.constant_along) + ")")
    init = format_init(f)
    if init:
        parts.append(init)
    return " ".join(parts)


def stencil_text(a: ArrowSpec) -> str:
    """``stencil moore/wrap``, or ``stencil 3 offsets/zero`` for a list of offsets."""
    st = a.stencil
    offsets = st.offsets if isinstance(st.offsets, str) else f"{len(st.offsets)} offset{'s' if len(st.offsets) != 1 else ''}"
    return f"stencil {offsets}{' weighted' if st.weights else ''}/{st.boundary}"


def map_text(a: ArrowSpec) -> str:
    """The arrow's connectivity as written: its map, ``identity`` by default, ``edges(E)``, or
    the stencil (:func:`stencil_text`)."""
    if a.edges is not None:
        return f"edges({len(a.edges)})"
    if a.stencil is not None:
        return stencil_text(a)
    return a.map if a.map is not None else "identity"


def effective_share(a: ArrowSpec) -> str | dict[str, str] | None:
    """The share key the compiler will use (mirrors ``resolve_share`` in
    :mod:`mplp_graph.ir.resolve`): explicit, or the arrow's name for a parametrised op; for
    an op with parameter parts, ``{part: key}`` with every part filled in."""
    try:
        op = get_op(a.op.name)
    except KeyError:
        return a.share
    parts = getattr(op, "param_parts", None)
    if parts is None or op.init is None:
        if a.share is not None:
            return a.share
        return a.name if op.init is not None else None
    keys = a.share if isinstance(a.share, dict) else {}
    default = a.share if isinstance(a.share, str) else a.name
    return {part: keys.get(part, default) for part in parts}


def format_share(share: str | dict[str, str] | None) -> str:
    if isinstance(share, dict):
        return "{" + ", ".join(f"{part}: {key}" for part, key in share.items()) + "}"
    return "-" if share is None else str(share)


def format_call(a: ArrowSpec) -> str:
    """``mul(w, x)``, ``sgd(b, g; lr=0.1)``."""
    args = ", ".join(f"{k}={_num(v)}" for k, v in sorted(a.op.args.items()))
    return f"{a.op.name}({', '.join(a.inputs)}{'; ' + args if args else ''})"


def format_arrow(a: ArrowSpec) -> str:
    """One line (without the stage number), e.g.
    ``W0->b0: W0 --(i j -> j, sum)--> b0.z   mul(w, x)``."""
    if a.into is not None:
        route = f"{a.src} --({map_text(a)}, {a.aggregate})--> {a.dst}.{a.into}"
    else:
        route = f"{a.src} --({map_text(a)})--> {a.dst}"  # no message is sent: only updates
    parts = [f"{a.name}: {route}", format_call(a)]
    share = effective_share(a)
    if share is not None:
        parts.append(f"share={format_share(share)}")
    if a.updates:
        parts.append("updates{" + ", ".join(f"{k}<-{v}" for k, v in a.updates.items()) + "}")
    return GAP.join(parts)


def _group_lines(name: str, g: GroupSpec, name_width: int, kind_width: int) -> list[str]:
    n_agents = 1
    for n in g.shape:
        n_agents *= n
    head = f"  {name:<{name_width}}  {g.kind:<{kind_width}}  {format_shape(g.shape)}"
    if n_agents > 1:
        head += f"  ({n_agents} agents)"
    lines = [head]
    fw = max((len(f) for f in g.state), default=0)
    for fname, f in g.state.items():
        lines.append(f"    {fname:<{fw}}  {format_field(f)}")
    return lines


def safe_schedule(spec: GraphSpec) -> tuple[Schedule, str | None]:
    """The schedule, or (when no order can be derived) one with no stages and the reason, so
    that a graph the verifier would refuse can still be printed."""
    try:
        return build_schedule(spec), None
    except ScheduleError as e:
        return Schedule({p: () for p in phase_names(spec)}, spec.schedule.step or default_step(spec)), str(e)


def format_graph(spec: GraphSpec) -> str:
    """A readable, deterministic text form of ``spec``: header, groups with their fields, arrows
    by phase in schedule order (``[stage]`` from 1), inputs and outputs."""
    lines = [f"graph {spec.name}"]
    if spec.description:
        lines.append(f"  {spec.description}")
    lines += ["", "groups:"]
    nw = max((len(n) for n in spec.groups), default=0)
    kw = max((len(g.kind) for g in spec.groups.values()), default=0)
    for name, g in spec.groups.items():
        lines += _group_lines(name, g, nw, kw)

    schedule, problem = safe_schedule(spec)
    phases = list(dict.fromkeys(schedule.step)) + [p for p in schedule.phases if p not in schedule.step]
    by_name = {a.name: a for a in spec.arrows}
    placed: set[str] = set()
    for phase in phases:
        stages = schedule.phases.get(phase, ())
        runs = phase in schedule.step
        notes = [] if runs else ["not in step"]
        r = spec.schedule.random.get(phase)
        if r is not None and r.order == "shuffle":
            notes.append("stages in random order")
        if r is not None and r.fire < 1.0:
            notes.append(f"agents fire with p={_num(r.fire)}")
        lines += ["", f"phase {phase} ({'; '.join(notes)}):" if notes else f"phase {phase}:"]
        for k, stage in enumerate(stages):
            for name in stage:
                lines.append(f"  [{k + 1}] {format_arrow(by_name[name])}")
                placed.add(name)
    unplaced = [a for a in spec.arrows if a.name not in placed]
    if unplaced:
        lines += ["", f"not scheduled ({problem}):" if problem else "not scheduled:"]
        lines += [f"  [-] {format_arrow(a)}  (phase {a.phase})" for a in unplaced]

    lines += ["", "inputs:"]
    lines += [f"  {key} -> {ref}" for key, ref in spec.inputs.items()] or ["  (none)"]
    lines += ["outputs:"]
    lines += [f"  {key} <- {ref}" for key, ref in spec.outputs.items()] or ["  (none)"]
    if schedule.step:
        lines += [f"step: {' -> '.join(schedule.step)}"]
    if spec.schedule.rng is not None:
        lines += [f"rng: {spec.schedule.rng} (step counter of the random draws)"]
    return "\n".join(lines) + "\n"
