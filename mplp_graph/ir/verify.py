"""verify(spec): one small function per rule.

Each rule yields ``(yaml_path, message)`` pairs. :func:`verify` runs them all and raises one
:class:`GraphSpecError` listing every problem (the loader then adds file, line and column).
Rules that need earlier facts (e.g. shapes need existing groups) skip what an earlier rule
already reported, so one mistake gives one message.
"""

from __future__ import annotations

import difflib
import math
import weakref
from typing import Callable, Iterator

from mplp_graph.ir.resolve import ResolveError, resolve_arrow
from mplp_graph.ir.schedule import ScheduleError, build_schedule, phase_names
from mplp_graph.errors import GraphSpecError, Location
from mplp_graph.ir.spec import GraphSpec
from pydantic import ValidationError

from mplp_graph.ops.registry import Op, describe_args, get_op, op_names

Issue = tuple[str, str]

# Sanity limits: refuse graphs whose state would not fit in memory before allocating anything.
MAX_ELEMENTS_PER_FIELD = 2**31 - 1  # XLA indexes an array with 32-bit integers
MAX_STATE_BYTES = 16 * 2**30  # one example's state; the largest paper graph (MNIST 784) needs ~0.1 GiB
_DTYPE_BYTES = {"float32": 4, "float64": 8, "int32": 4, "bool": 1}


def suggest(name: str, choices) -> str:
    """`` Did you mean 'x'?`` or a list of the valid names."""
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=1)
    if close:
        return f" Did you mean {close[0]!r}?"
    if choices and len(choices) <= 12:
        return f" Valid names: {', '.join(repr(c) for c in choices)}."
    return ""


def _arg_issues(op: Op, args: dict) -> list[tuple[str, str]]:
    """``(argument, message)`` for every argument that does not fit the op's argument model."""
    try:
        op.args.model_validate(dict(args))
        return []
    except ValidationError as e:
        errors = e.errors()
    rows = {r["name"]: r for r in describe_args(op)}
    out = []
    for err in errors:
        name = str(err["loc"][0]) if err["loc"] else ""
        if err["type"] == "missing":
            row = rows[name]
            out.append(("", f"op {op.name!r} needs argument {name!r} ({row['type']}: {row['description'] or 'no description'}); add it under op.args"))
        elif err["type"] == "extra_forbidden":
            valid = ", ".join(op.arg_names) or "none"
            close = difflib.get_close_matches(name, op.arg_names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            out.append((name, f"op {op.name!r} takes no argument {name!r} (its arguments: {valid}).{hint}"))
        else:
            row = rows.get(name, {"type": "?", "description": ""})
            value = args.get(name)
            what = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(type(value), type(value).__name__)
            reason = err["msg"].removeprefix("Input should be ").removeprefix("Value error, ")
            hint = ""
            if err["type"] == "literal_error":
                choices = [c.strip().strip("'") for c in str((err.get("ctx") or {}).get("expected", "")).replace(" or ", ", ").split(",")]
                close = difflib.get_close_matches(str(value), choices, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
            elif err["type"] == "finite_number":
                hint = " NaN and infinity are not valid here; write a finite number."
            elif isinstance(value, bool):
                hint = " YAML reads unquoted true/false/yes/no/on/off as booleans."
            desc = f" ({row['description']})" if row["description"] else ""
            out.append((name, f"op {op.name!r}: argument {name!r} takes {row['type']}{desc}; got {value!r} ({what}), which is not {reason}.{hint}"))
    return out


def _arrow_ok(g: GraphSpec, k: int) -> bool:
    """Does arrow k reference existing groups, fields and op with valid arguments (checked by
    earlier rules)?"""
    a = g.arrows[k]
    if a.src not in g.groups or a.dst not in g.groups:
        return False
    try:
        if _arg_issues(get_op(a.op.name), a.op.args):
            return False
    except KeyError:
        return False
    src = g.groups[a.src].state
    if any(f not in src for f in a.inputs) or any(f not in src for f in a.updates):
        return False
    for grp in (g.groups[a.src], g.groups[a.dst]):  # constant axes out of range: rule_field_sizes reports them
        if any(ax >= len(grp.shape) for f in grp.state.values() for ax in f.constant_along):
            return False
    return a.into is None or a.into in g.groups[a.dst].state


def rule_not_empty(g: GraphSpec) -> Iterator[Issue]:
    if not g.groups:
        yield "groups", "the graph has no groups; declare at least one group of agents"


def rule_unique_arrow_names(g: GraphSpec) -> Iterator[Issue]:
    seen: dict[str, int] = {}
    for k, a in enumerate(g.arrows):
        if a.name in seen:
            yield f"arrows[{k}].name", f"arrow name {a.name!r} is already used by arrows[{seen[a.name]}]; arrow names must be unique"
        seen.setdefault(a.name, k)


def _count(n: int) -> str:
    """``1,234``; an absurd size (a shape [10**400]) as ``about 10^400``."""
    return f"{n:,}" if n < 10**24 else f"about 10^{len(str(n)) - 1}"


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:,.1f} GiB" if n_bytes < 10**24 else f"{_count(n_bytes)} bytes"


def rule_field_sizes(g: GraphSpec) -> Iterator[Issue]:
    total, sizes = 0, []
    for gname, grp in g.groups.items():
        n_agents = math.prod(grp.shape)
        for fname, f in grp.state.items():
            for ax in f.constant_along:
                if ax >= len(grp.shape):
                    yield (
                        f"groups.{gname}.state.{fname}.constant_along",
                        f"axis {ax} does not exist: group {gname!r} has shape {list(grp.shape)} ({len(grp.shape)} axes)",
                    )
            size = n_agents * math.prod(f.shape)
            if size > MAX_ELEMENTS_PER_FIELD:
                yield (
                    f"groups.{gname}.state.{fname}",
                    f"field {gname}.{fname} holds {_count(size)} elements per example ({_count(n_agents)} agents of group shape "
                    f"{list(grp.shape)} x {_count(math.prod(f.shape))} per agent), more than the limit of "
                    f"{MAX_ELEMENTS_PER_FIELD:,} elements per field; shrink the group or field shape",
                )
            n_bytes = size * _DTYPE_BYTES[f.dtype]
            total += n_bytes
            sizes.append((n_bytes, f"{gname}.{fname}"))
    if total > MAX_STATE_BYTES:
        largest = ", ".join(f"{name} {_gib(n)}" for n, name in sorted(sizes, reverse=True)[:3])
        yield (
            "groups",
            f"the graph's state needs {_gib(total)} ({_count(total)} bytes) per example, more than the limit of "
            f"{_gib(MAX_STATE_BYTES)}, before anything is allocated; the largest fields: {largest}. Shrink those groups or fields",
        )


def rule_arrow_groups_exist(g: GraphSpec) -> Iterator[Issue]:
    for k, a in enumerate(g.arrows):
        for key, name in (("from", a.src), ("to", a.dst)):
            if name not in g.groups:
                yield f"arrows[{k}].{key}", f"arrow {a.name!r} refers to unknown group {name!r}.{suggest(name, g.groups)}"


def rule_arrow_fields_exist(g: GraphSpec) -> Iterator[Issue]:
    for k, a in enumerate(g.arrows):
        if a.src in g.groups:
            src = g.groups[a.src].state
            for j, f in enumerate(a.inputs):
                if f not in src:
                    yield f"arrows[{k}].inputs[{j}]", f"group {a.src!r} has no state field {f!r}.{suggest(f, src)}"
            for f in a.updates:
                if f not in src:
                    yield f"arrows[{k}].updates.{f}", f"group {a.src!r} has no state field {f!r} to update.{suggest(f, src)}"
        if a.dst in g.groups and a.into is not None and a.into not in g.groups[a.dst].state:
            dst = g.groups[a.dst].state
            yield f"arrows[{k}].into", f"group {a.dst!r} has no state field {a.into!r} to receive messages.{suggest(a.into, dst)}"


MSG_NO_DERIVATIVE = (
    "unknown op {name!r}: op {base!r} has no derivative (its gradient is zero wherever it exists), so a backprop "
    "protocol cannot pass a gradient through it. Train the graph with a learned protocol, which needs no gradient "
    "(mplp_graph.templates.mplp), or use a differentiable op such as 'sigmoid' in the forward pass"
)


def _unknown_op(name: str) -> str:
    """``unknown op``, with the reason when it is the missing derivative of a non-differentiable op."""
    base = name[: -len("_grad")] if name.endswith("_grad") else None
    if base:
        try:
            if not get_op(base).differentiable:
                return MSG_NO_DERIVATIVE.format(name=name, base=base)
        except KeyError:
            pass
    return f"unknown op {name!r}.{suggest(name, op_names())}"


def rule_ops_exist(g: GraphSpec) -> Iterator[Issue]:
    for k, a in enumerate(g.arrows):
        try:
            op = get_op(a.op.name)
        except KeyError:
            yield f"arrows[{k}].op", _unknown_op(a.op.name)
            continue
        for arg, msg in _arg_issues(op, a.op.args):
            yield f"arrows[{k}].op.args" + (f".{arg}" if arg else ""), msg


def rule_arrow_shapes(g: GraphSpec) -> Iterator[Issue]:
    for k, a in enumerate(g.arrows):
        if not _arrow_ok(g, k):
            continue
        try:
            resolve_arrow(g, k, a)
        except ResolveError as e:
            yield f"arrows[{k}].{e.where}", f"arrow {a.name!r}: {e}"


def _share_keys(share) -> list[str]:
    if share is None:
        return []
    return [share] if isinstance(share, str) else list(share.values())


def rule_shared_arrows_agree(g: GraphSpec) -> Iterator[Issue]:
    first: dict[str, int] = {}
    for k, a in enumerate(g.arrows):
        if not _arrow_ok(g, k):
            continue
        for key in _share_keys(a.share):
            if key not in first:
                first[key] = k
                continue
            b = g.arrows[first[key]]
            if (a.op.name, a.op.args) != (b.op.name, b.op.args):
                yield f"arrows[{k}].share", f"arrow {a.name!r} shares {key!r} with {b.name!r} but runs op {a.op.name} {dict(a.op.args)} instead of {b.op.name} {dict(b.op.args)}"
                break
            fa = [g.groups[a.src].state[f].shape for f in a.inputs]
            fb = [g.groups[b.src].state[f].shape for f in b.inputs]
            if fa != fb:
                yield f"arrows[{k}].share", f"arrow {a.name!r} shares {key!r} with {b.name!r} but its inputs have shapes {fa}, not {fb}; shared parameters need equal input widths"
                break


def rule_inbox_aggregates_agree(g: GraphSpec) -> Iterator[Issue]:
    seen: dict[tuple[str, str, str], int] = {}
    for k, a in enumerate(g.arrows):
        if a.into is None:
            continue
        key = (a.phase, a.dst, a.into)
        if key in seen and g.arrows[seen[key]].aggregate != a.aggregate:
            b = g.arrows[seen[key]]
            yield f"arrows[{k}].aggregate", f"arrows {b.name!r} and {a.name!r} both send into {a.dst}.{a.into} in phase {a.phase!r} but aggregate with {b.aggregate!r} and {a.aggregate!r}; use one aggregation"
        seen.setdefault(key, k)


def rule_io_refs(g: GraphSpec) -> Iterator[Issue]:
    for section in ("inputs", "outputs"):
        for key, ref in getattr(g, section).items():
            group, _, fname = ref.partition(".")
            if not fname:
                yield f"{section}.{key}", f"expected 'group.field', got {ref!r}"
            elif group not in g.groups:
                yield f"{section}.{key}", f"unknown group {group!r}.{suggest(group, g.groups)}"
            elif fname not in g.groups[group].state:
                yield f"{section}.{key}", f"group {group!r} has no state field {fname!r}.{suggest(fname, g.groups[group].state)}"


def rule_schedule_names(g: GraphSpec) -> Iterator[Issue]:
    phases = phase_names(g)
    for j, p in enumerate(g.schedule.step):
        if p not in phases:
            yield f"schedule.step[{j}]", f"unknown phase {p!r}.{suggest(p, phases)}"
    if _duplicate_names(g):  # which arrow a name means is unclear; rule_unique_arrow_names says why
        return
    names = {a.name: a for a in g.arrows}
    for p, stages in g.schedule.phases.items():
        listed: dict[str, str] = {}
        for s, stage in enumerate(stages):
            for j, name in enumerate(stage):
                path = f"schedule.phases.{p}[{s}][{j}]"
                if name not in names:
                    yield path, f"unknown arrow {name!r}.{suggest(name, names)}"
                elif names[name].phase != p:
                    yield path, f"arrow {name!r} belongs to phase {names[name].phase!r}, not {p!r}"
                elif name in listed:
                    yield path, f"arrow {name!r} is listed twice in phase {p!r} (first at {listed[name]})"
                listed.setdefault(name, path)
        missing = [a.name for a in g.arrows if a.phase == p and a.name not in listed]
        if missing:
            yield f"schedule.phases.{p}", f"arrows {missing} of phase {p!r} are missing from its stages; add them to a stage"


def rule_schedule_random(g: GraphSpec) -> Iterator[Issue]:
    """``schedule.random`` names existing phases, and random draws have a counter to draw from."""
    phases = phase_names(g)
    for p, r in g.schedule.random.items():
        if p not in phases:
            yield f"schedule.random.{p}", f"unknown phase {p!r}.{suggest(p, phases)}"
        elif g.schedule.rng is None and (r.order == "shuffle" or r.fire < 1.0):
            yield (
                f"schedule.random.{p}",
                f"phase {p!r} makes random draws each time it runs, which need a step counter; add "
                "'rng: group.field' under schedule, naming an int32 scalar field of a single-agent group (shape [])",
            )


def rule_schedule_rng(g: GraphSpec) -> Iterator[Issue]:
    """The counter is an int32 scalar of a single agent, written by no arrow; shared by the batch,
    or one per example (``batched: true``: each example its own draws), which a shuffled phase
    (one stage order for the whole batch) and a phase with ``fire`` that writes a field shared by
    the batch cannot use."""
    ref = g.schedule.rng
    if ref is None:
        return
    group, _, fname = ref.partition(".")
    if not fname:
        yield "schedule.rng", f"expected 'group.field', got {ref!r}"
        return
    if group not in g.groups:
        yield "schedule.rng", f"unknown group {group!r}.{suggest(group, g.groups)}"
        return
    grp = g.groups[group]
    if fname not in grp.state:
        yield "schedule.rng", f"group {group!r} has no state field {fname!r}.{suggest(fname, grp.state)}"
        return
    f = grp.state[fname]
    found = f"{f.dtype}{list(f.shape)}{' batched' if f.batched else ''} in a group of shape {list(grp.shape)}"
    if f.dtype != "int32" or f.shape or grp.shape:
        yield (
            "schedule.rng",
            f"the step counter {ref} must be an int32 scalar (shape [], batched or not) of a group of shape [], got "
            f"{found}; declare e.g. 'clock: {{kind: clock, state: {{t: {{dtype: int32}}}}}}' and 'rng: clock.t'",
        )
    elif f.batched:
        phases = phase_names(g)
        for p, r in g.schedule.random.items():
            if p not in phases:
                continue
            if r.order == "shuffle":
                yield (f"schedule.random.{p}.order", f"phase {p!r} shuffles its stages, one order for the whole batch, but the counter "
                       f"{ref} is batched (one per example); use 'order: fixed' or a counter shared by the batch")
            if r.fire < 1.0:
                shared = sorted({f"{a.dst}.{a.into}" for a in g.arrows if a.phase == p and a.into and not g.groups[a.dst].state[a.into].batched}
                                | {f"{a.src}.{u}" for a in g.arrows if a.phase == p for u in a.updates if not g.groups[a.src].state[u].batched})
                if shared:
                    yield (f"schedule.random.{p}.fire", f"phase {p!r} draws which agents fire per example (the counter {ref} is batched), "
                           f"but writes fields shared by the batch: {shared}; make them batched or the counter shared")
    for k, a in enumerate(g.arrows):
        if a.dst == group and a.into == fname:
            yield f"arrows[{k}].into", f"arrow {a.name!r} writes {ref}, the step counter of schedule.rng; only the step advances it"
        if a.src == group and fname in a.updates:
            yield f"arrows[{k}].updates.{fname}", f"arrow {a.name!r} writes {ref}, the step counter of schedule.rng; only the step advances it"


def _one_edit(a: str, b: str) -> bool:
    """Are ``a`` and ``b`` one edit apart (insert, delete, replace, or swap two neighbours)?"""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [k for k in range(len(a)) if a[k] != b[k]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long = sorted((a, b), key=len)
    return any(long[:k] + long[k + 1 :] == short for k in range(len(long)))


def _step_typos(g: GraphSpec) -> dict[str, str]:
    """Unknown phases of ``schedule.step`` -> the phase each was probably meant to be
    (``rule_schedule_names`` reports them with "did you mean")."""
    phases = phase_names(g)
    typos = {}
    for p in g.schedule.step:
        if p not in phases:
            close = difflib.get_close_matches(p, phases, n=1)
            if close:
                typos[p] = close[0]
    return typos


def rule_phases_run(g: GraphSpec) -> Iterator[Issue]:
    """Every phase that has arrows is run by an explicit ``schedule.step``: one message per phase,
    none for a phase that a misspelt step entry was meant to name (reported there)."""
    if not g.schedule.step:
        return
    meant = set(_step_typos(g).values())
    reported: set[str] = set()
    for k, a in enumerate(g.arrows):
        if a.phase in g.schedule.step or a.phase in meant or a.phase in reported:
            continue
        reported.add(a.phase)
        members = [b.name for b in g.arrows if b.phase == a.phase]
        who = f"arrow {a.name!r} is" if len(members) == 1 else f"arrows {members} are"
        yield (
            f"arrows[{k}].phase",
            f"{who} in phase {a.phase!r}, which schedule.step {list(g.schedule.step)} never runs; add the phase to the "
            f"step or fix the arrow's phase.{suggest(a.phase, g.schedule.step) if difflib.get_close_matches(a.phase, g.schedule.step, n=1) else ''}",
        )


def rule_phase_typos(g: GraphSpec) -> Iterator[Issue]:
    """A phase named by one arrow only, one edit away from another phase, and not named in the
    schedule is most likely a misspelling (it would run as a phase of its own, after the others)."""
    if g.schedule.step:  # an explicit step: rule_phases_run reports phases it does not run
        return
    named = set(g.schedule.phases) | set(g.schedule.random)
    uses: dict[str, list[int]] = {}
    for k, a in enumerate(g.arrows):
        uses.setdefault(a.phase, []).append(k)
    for p, ks in uses.items():
        if len(ks) != 1 or p in named:
            continue
        others = [q for q in uses if q != p and _one_edit(p, q) and (len(uses[q]) > 1 or q in ("forward", "backward"))]
        if others:
            yield (
                f"arrows[{ks[0]}].phase",
                f"phase {p!r} is used by this arrow only and is one letter away from phase {others[0]!r}. Did you mean "
                f"{others[0]!r}? If {p!r} is a phase of its own, name it in schedule.step",
            )


def _duplicate_names(g: GraphSpec) -> bool:
    return len({a.name for a in g.arrows}) < len(g.arrows)


def _field_writes(a) -> list[tuple[tuple[str, str], str]]:
    """``((group, field), how)`` for each field arrow ``a`` writes (``update`` or ``inbox``)."""
    writes = [((a.src, f), "update") for f in a.updates]
    if a.into is not None:
        writes.append(((a.dst, a.into), "inbox"))
    return writes


def rule_one_writer_per_field(g: GraphSpec) -> Iterator[Issue]:
    """In a phase whose order is derived, a field has one writer: one arrow's ``updates``, or
    one inbox (arrows sending ``into`` it). Two writers have no order to derive (each reads what
    the other overwrites); reported as such, not as the dependency cycle they make."""
    if _duplicate_names(g):
        return
    first: dict[tuple[str, tuple[str, str]], tuple[int, str]] = {}
    for k, a in enumerate(g.arrows):
        if a.phase in g.schedule.phases or not _arrow_ok(g, k):
            continue
        for target, how in _field_writes(a):
            key = (a.phase, target)
            if key not in first:
                first[key] = (k, how)
                continue
            j, prev_how = first[key]
            if prev_how == how == "inbox":
                continue
            b = g.arrows[j]
            yield (
                f"arrows[{k}]",
                f"arrows {b.name!r} and {a.name!r} both write {target[0]}.{target[1]} in phase {a.phase!r}; a field has one "
                "writer per phase (messages sent 'into' one field are aggregated, so several senders are one writer). "
                f"Write one of them into another field, move it to another phase, or order them with explicit stages "
                f"under schedule.phases.{a.phase}",
            )


def _schedulable(g: GraphSpec) -> bool:
    """Arrows, arrow names, field writers and explicit schedule entries are valid (earlier rules
    report what is not)."""
    if _duplicate_names(g) or not all(_arrow_ok(g, k) for k in range(len(g.arrows))):
        return False
    return not any(True for _ in rule_schedule_names(g)) and not any(True for _ in rule_one_writer_per_field(g))


def rule_schedule_derivable(g: GraphSpec) -> Iterator[Issue]:
    if not _schedulable(g):
        return
    try:
        build_schedule(g)
    except ScheduleError as e:
        yield e.where, str(e)


def rule_no_conflicting_writes(g: GraphSpec) -> Iterator[Issue]:
    """Within one stage, a field may be written by one arrow's updates, or be one inbox."""
    if not _schedulable(g):
        return
    try:
        sched = build_schedule(g)
    except ScheduleError:
        return
    index = {a.name: k for k, a in enumerate(g.arrows)}
    for p, stages in sched.phases.items():
        for stage in stages:
            writers: dict[tuple[str, str], tuple[str, str]] = {}
            for name in stage:
                a = g.arrows[index[name]]
                for target, how in _field_writes(a):
                    prev = writers.get(target)
                    if prev is not None and not (prev[1] == how == "inbox"):
                        yield (
                            f"arrows[{index[name]}]",
                            f"arrows {prev[0]!r} and {name!r} both write {target[0]}.{target[1]} in the same stage of phase {p!r}; "
                            "only messages sent 'into' one field may share a stage",
                        )
                    writers.setdefault(target, (name, how))


RULES: tuple[Callable[[GraphSpec], Iterator[Issue]], ...] = (
    rule_not_empty,
    rule_unique_arrow_names,
    rule_field_sizes,
    rule_arrow_groups_exist,
    rule_arrow_fields_exist,
    rule_ops_exist,
    rule_arrow_shapes,
    rule_shared_arrows_agree,
    rule_inbox_aggregates_agree,
    rule_io_refs,
    rule_schedule_names,
    rule_schedule_random,
    rule_schedule_rng,
    rule_phases_run,
    rule_phase_typos,
    rule_one_writer_per_field,
    rule_schedule_derivable,
    rule_no_conflicting_writes,
)


def collect_issues(g: GraphSpec) -> list[Issue]:
    issues: list[Issue] = []
    for rule in RULES:
        issues.extend(rule(g))
    return issues


# Specs that passed verify, by identity. A GraphSpec is frozen but not hashable (its fields are
# dicts), so it is keyed by id(); weak values drop an entry when its spec is collected, so a
# reused id never finds a stale entry.
_VERIFIED: weakref.WeakValueDictionary[int, GraphSpec] = weakref.WeakValueDictionary()


def verify(g: GraphSpec, locate: Callable[[str], Location] | None = None) -> GraphSpec:
    """Check every rule; raise one :class:`GraphSpecError` with all problems. Returns ``g``."""
    issues = collect_issues(g)
    if issues:
        locate = locate or (lambda path: Location(path=path))
        raise GraphSpecError([(locate(path), msg) for path, msg in issues])
    _VERIFIED[id(g)] = g
    return g


def ensure_verified(g: GraphSpec) -> GraphSpec:
    """:func:`verify` ``g`` unless this very object passed it before (``load_graph`` verifies
    with located messages; compiling its spec does not check every rule a second time). A spec
    built in Python, or a copy made with ``model_copy``, is a new object and is verified. What
    passed stays valid because the spec is frozen (unless its dicts are edited in place or an
    op it uses is re-registered with ``replace=True`` in between)."""
    return g if _VERIFIED.get(id(g)) is g else verify(g)
