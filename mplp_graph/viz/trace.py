"""Recording a run step by step into a trace file, and reading it back (docs/view.md).

A trace holds, for every step of one run (index 0: before the first step), the values of chosen
fields of chosen groups and the messages of chosen arrows, plus the loss and the task's metrics
after each step. What "a run" is depends on the source:

* an experiment config (``mplp-graph train``'s): one inner loop of the learned protocol on one
  task of the config's family, from a random prior, exactly run 0 of the evaluation harness
  (:mod:`mplp_graph.meta.evaluate`) with the same seed; metrics on the family's evaluation set;
* a graph file: ``steps`` calls of ``Program.step`` from the graph's initial state (fields may be
  set from an ``.npz`` or drawn at random: a cellular automaton), with batches from an ``.npz``
  when the graph has inputs (a backprop run).

A field record is the field's value at every agent (per-example fields: one example of the
batch; fields stored once along ``constant_along`` axes are broadcast), shape
``(steps + 1, *agent_shape, *field_shape)``. A message record is what the arrow delivered: the
arrow's ``into`` field at its destination after the step (the messages arriving at each agent,
aggregated), shape ``(steps + 1, *dst_agent_shape, *message_shape)``.

The file: a zip archive in the ``.npz`` layout (one ``.npy`` member per array, read with
``allow_pickle=False``) plus a ``manifest.json`` member::

    format, version   "mplp-graph-trace", 1
    graph             {"name", "hash"}: the spec's :func:`mplp_graph.meta.checkpoint.graph_hash`
    steps, batch, example, source
    records           [{"name", "kind" (field | message), "group", "field", "arrow", "shape", "array"}]
    metrics           {metric name: array member}
    arrays            {member: [shape, dtype]}

Written to a temporary file and renamed (nothing half-written); the zip's CRCs and the manifest's
shapes refuse a damaged or truncated file; a size cap is checked before the run starts.
"""

from __future__ import annotations

import difflib
import io
import json
import math
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mplp_graph.errors import MplpGraphError
from mplp_graph.ir.layout import stored_shape
from mplp_graph.ir.spec import GraphSpec

FORMAT = "mplp-graph-trace"
VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_MAX_MB = 50.0
RANDOM_INITS = ("bernoulli", "uniform", "normal")


class TraceError(MplpGraphError):
    """A trace cannot be recorded or read: unknown names, over the size cap, damaged, or recorded
    from another graph."""


@dataclass(frozen=True)
class Record:
    """One recorded quantity: a field of a group, or the message of an arrow (into ``group.field``)."""

    name: str  # "W0.w" for a field, the arrow's name for a message
    kind: str  # "field" | "message"
    group: str
    field: str
    arrow: str | None
    shape: tuple[int, ...]  # per step: (*agent_shape, *field_shape)
    feature_len: int = 0  # how many trailing axes of ``shape`` are the field's own shape


@dataclass
class Trace:
    """A trace in memory: ``values[record.name]`` is ``(steps + 1, *record.shape)`` float32;
    ``metrics[name]`` is ``(steps + 1,)`` (NaN where not measured)."""

    graph_name: str
    graph_hash: str
    steps: int
    records: tuple[Record, ...]
    values: dict[str, np.ndarray]
    metrics: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)  # batch, example, source
    path: str | None = None


# ---------------------------------------------------------------------------------------------
# choosing what to record


def _close(name: str, options: Sequence[str]) -> str:
    near = difflib.get_close_matches(name, list(options), n=3)
    return f" (did you mean {', '.join(near)}?)" if near else ""


def _field_shape(spec: GraphSpec, group: str, fname: str) -> tuple[int, ...]:
    g = spec.groups[group]
    return tuple(g.shape) + tuple(g.state[fname].shape)


def field_record(spec: GraphSpec, ref: str) -> Record:
    """The record of field ``group.field``; a :class:`TraceError` listing what exists otherwise."""
    group, dot, fname = ref.partition(".")
    if not dot or group not in spec.groups:
        raise TraceError(f"--field {ref!r}: no group {group!r} in graph {spec.name!r}; give group.field, groups: "
                         f"{', '.join(spec.groups)}{_close(group, list(spec.groups))}")
    fields = spec.groups[group].state
    if fname not in fields:
        raise TraceError(f"--field {ref!r}: group {group!r} of graph {spec.name!r} has no field {fname!r}; its fields: "
                         f"{', '.join(fields) or '(none)'}{_close(fname, list(fields))}")
    return Record(ref, "field", group, fname, None, _field_shape(spec, group, fname), len(fields[fname].shape))


def message_record(spec: GraphSpec, name: str) -> Record:
    """The record of arrow ``name``'s message (its ``into`` field at the destination)."""
    names = [a.name for a in spec.arrows]
    if name not in names:
        raise TraceError(f"--arrow {name!r}: graph {spec.name!r} has no arrow {name!r}{_close(name, names)}; its arrows: {', '.join(names)}")
    a = spec.arrow(name)
    if a.into is None:
        updated = ", ".join(f"{a.src}.{f}" for f in a.updates) or "none"
        raise TraceError(f"--arrow {name!r} sends no message (it only updates its source group); record the fields it updates "
                         f"with --field ({updated})")
    return Record(name, "message", a.dst, a.into, name, _field_shape(spec, a.dst, a.into), len(spec.groups[a.dst].state[a.into].shape))


def default_records(spec: GraphSpec, persistent: set[tuple[str, str]]) -> tuple[Record, ...]:
    """What to record when nothing is chosen: the fields that persist from step to step
    (``persistent``: weights, biases, learner carries, a cell's state) and the message of every
    arrow that writes into another field (one writing into a recorded field would repeat it)."""
    recs = [field_record(spec, f"{g}.{f}") for g, grp in spec.groups.items() for f in grp.state if (g, f) in persistent]
    fields = {(r.group, r.field) for r in recs}
    recs += [message_record(spec, a.name) for a in spec.arrows if a.into is not None and (a.dst, a.into) not in fields]
    return tuple(recs)


def choose_records(spec: GraphSpec, fields: Sequence[str], arrows: Sequence[str], persistent: set[tuple[str, str]]) -> tuple[Record, ...]:
    if not fields and not arrows:
        return default_records(spec, persistent)
    recs = [field_record(spec, f) for f in dict.fromkeys(fields)] + [message_record(spec, a) for a in dict.fromkeys(arrows)]
    return tuple(recs)


def trace_bytes(records: Sequence[Record], steps: int) -> int:
    """Bytes of the recorded arrays (float32), before compression: what the size cap limits."""
    return 4 * (steps + 1) * sum(math.prod(r.shape) for r in records)


def check_size(records: Sequence[Record], steps: int, max_mb: float) -> None:
    n = trace_bytes(records, steps)
    if n > max_mb * 1e6:
        big = sorted(records, key=lambda r: -math.prod(r.shape))[:3]
        largest = ", ".join(f"{r.name} ({4 * (steps + 1) * math.prod(r.shape) / 1e6:.1f} MB)" for r in big)
        raise TraceError(f"the trace would hold {n / 1e6:.1f} MB, more than the cap of {max_mb:g} MB (largest: {largest}); record fewer "
                         "fields (--field) or arrows (--arrow) or fewer steps (--steps), or raise the cap with --max-mb")


# ---------------------------------------------------------------------------------------------
# recording


def _extract(spec: GraphSpec, records: Sequence[Record], example: int) -> Callable[[Any], dict[str, Any]]:
    """state -> {record name: float32 array of record.shape} (jit-able)."""
    import jax.numpy as jnp

    def run(state):
        out = {}
        for r in records:
            group = spec.groups[r.group]
            f = group.state[r.field]
            v = state[r.group][r.field]
            if f.batched:
                v = v[example]
            out[r.name] = jnp.broadcast_to(v, r.shape).astype(jnp.float32)
        return out

    return run


def batch_loss_of(out: dict[str, Any]) -> Any:
    """The training loss of a step's outputs: the ``loss`` output summed over a point's units,
    averaged over the batch (as :func:`mplp_graph.meta.evaluate.batch_loss`)."""
    import jax.numpy as jnp

    loss = out["loss"]
    return jnp.mean(jnp.sum(loss.reshape(loss.shape[0], -1), axis=-1))


def record_steps(
    prog: Any,
    params: Any,
    state: Any,
    batch_at: Callable[[int], dict[str, Any]],
    steps: int,
    records: Sequence[Record],
    example: int = 0,
    measure: Callable[[Any, int], dict[str, Any]] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Run ``steps`` steps of ``prog`` from ``state`` (``batch_at(i)``: the batch of step ``i``)
    and record ``records`` before the first step and after each one. Returns ``(values,
    metrics)``: ``values[name]`` ``(steps + 1, *shape)``; ``metrics`` holds ``loss`` (the training
    loss of each step's batch, NaN at index 0) when the graph has a ``loss`` output, and whatever
    ``measure(state, i)`` returns (``i``: updates done)."""
    import jax

    spec = prog.spec
    extract = jax.jit(_extract(spec, records, example))
    step = jax.jit(prog.step)
    values = {r.name: np.zeros((steps + 1, *r.shape), np.float32) for r in records}
    metrics: dict[str, np.ndarray] = {}

    def put(i: int, st: Any, extra: dict[str, Any]) -> None:
        for name, v in jax.device_get(extract(st)).items():
            values[name][i] = v
        for name, v in extra.items():
            metrics.setdefault(name, np.full(steps + 1, np.nan, np.float32))[i] = float(v)

    put(0, state, measure(state, 0) if measure else {})
    for i in range(steps):
        state, out = step(params, state, batch_at(i))
        extra = dict(measure(state, i + 1)) if measure else {}
        if "loss" in out:
            extra["train_loss"] = batch_loss_of(out)
        put(i + 1, state, extra)
    bad = [r.name for r in records if not np.all(np.isfinite(values[r.name]))]
    if bad:
        print(f"warning: non-finite values recorded in {', '.join(bad)}")
    return values, metrics


def _persistent(prog: Any, state: Any) -> set[tuple[str, str]]:
    return {(g, f) for g, fs in prog.carry_of(state).items() for f in fs}


def _check_example(example: int, batch: int) -> None:
    if not 0 <= example < batch:
        raise TraceError(f"--example {example}: the batch has {batch} example(s); give 0 to {batch - 1}")


def record_config(
    config_path: str | Path,
    *,
    learner: str | Path | None = None,
    run_dir: str | Path | None = None,
    steps: int | None = None,
    fields: Sequence[str] = (),
    arrows: Sequence[str] = (),
    example: int = 0,
    seed: int | None = None,
    split: str | None = None,
    max_mb: float = DEFAULT_MAX_MB,
) -> Trace:
    """One inner loop of an experiment config's learned protocol (run 0 of
    :func:`mplp_graph.meta.evaluate.evaluate` with key ``seed``, default ``eval.seed``), with
    the learner of ``learner`` (an ``.npz``), of ``run_dir``'s newest checkpoint, or untrained."""
    import jax

    from mplp_graph.meta.evaluate import measure as measure_net
    from mplp_graph.meta.run import load_params_file, load_setup, load_trained
    from mplp_graph.runtime.state import agent_params, with_agent_params, zeros_state

    if run_dir is not None:
        setup, params, _ = load_trained(run_dir)
        source = {"config": str(config_path), "run_dir": str(run_dir)}
    else:
        setup = load_setup(config_path)
        if learner is not None:
            if not os.path.isfile(learner):
                raise TraceError(f"{learner}: no such learner file; give an .npz written by mplp-graph train or reference")
            try:
                params = load_params_file(setup, learner)
            except (ValueError, OSError) as e:
                raise TraceError(f"{e} (is {learner} a learner for the graph of {config_path}?)") from None
        else:
            params = setup.prog.init_params(jax.random.PRNGKey(0))
            print("warning: no --learner or --run-dir: recording an untrained learner")
        source = {"config": str(config_path), "learner": None if learner is None else str(learner)}
    prog, spec, c = setup.prog, setup.prog.spec, setup.config
    seed = c.eval.seed if seed is None else seed
    tasks, keys = setup.family.eval_tasks(jax.random.PRNGKey(seed), 1, setup.data, split or c.eval.split)
    task = jax.tree_util.tree_map(lambda a: a[0], tasks)
    k, batch = task["xt"].shape[:2]
    steps = k if steps is None else steps
    if not 1 <= steps <= k:
        raise TraceError(f"--steps {steps}: a task of {config_path} has {k} inner steps; give 1 to {k}")
    _check_example(example, batch)
    # the prior of run 0 (LearnedProtocol.init), in one compiled call rather than op by op
    state = jax.jit(lambda key: with_agent_params(zeros_state(spec, batch), agent_params(spec, prog.init(key, 1))))(keys[0])
    records = choose_records(spec, fields, arrows, _persistent(prog, state))
    check_size(records, steps, max_mb)
    metric_names = tuple(setup.family.metrics)
    task = jax.tree_util.tree_map(jax.numpy.asarray, task)
    measure_jit = jax.jit(lambda st, tk, i: measure_net(setup.fwd, metric_names, agent_params(spec, st), tk, i)[0])

    def measure(st: Any, i: int) -> dict[str, Any]:
        return measure_jit(st, task, i)

    values, metrics = record_steps(prog, params, state, lambda i: {"x": task["xt"][i], "y": task["yt"][i]}, steps, records, example,
                                   measure)
    source.update(seed=seed, split=split or c.eval.split)
    return _trace(spec, steps, records, values, metrics, batch, example, source)


def _random_inits(spec: GraphSpec, items: Sequence[str]) -> list[tuple[str, str, str, tuple[float, ...]]]:
    """Parse ``group.field=kind[:a[:b]]`` (bernoulli:p, uniform:low:high, normal:std)."""
    out = []
    for item in items:
        ref, eq, how = item.partition("=")
        kind, *nums = (how or "bernoulli").split(":")
        if kind not in RANDOM_INITS:
            raise TraceError(f"--random-init {item!r}: unknown distribution {kind!r}; give group.field=bernoulli:P, =uniform:LOW:HIGH or =normal:STD")
        try:
            args = tuple(float(x) for x in nums)
        except ValueError:
            raise TraceError(f"--random-init {item!r}: the numbers after {kind}: must be numbers, got {nums}") from None
        rec = field_record(spec, ref)
        out.append((rec.group, rec.field, kind, args))
    return out


def _draw(key: Any, kind: str, args: tuple[float, ...], shape: tuple[int, ...], dtype: str) -> Any:
    import jax

    if kind == "bernoulli":
        return jax.random.bernoulli(key, args[0] if args else 0.5, shape).astype(dtype)
    if kind == "uniform":
        lo, hi = (args + (0.0, 1.0)[len(args):])[:2]
        return jax.random.uniform(key, shape, minval=lo, maxval=hi).astype(dtype)
    return (jax.random.normal(key, shape) * (args[0] if args else 1.0)).astype(dtype)


def _npz_arrays(path: str | Path, what: str) -> dict[str, np.ndarray]:
    if not os.path.isfile(path):
        raise TraceError(f"{path}: no such file ({what})")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise TraceError(f"{path}: cannot read it as an .npz ({what}): {e}") from None


def record_graph(
    spec: GraphSpec,
    *,
    steps: int = 20,
    fields: Sequence[str] = (),
    arrows: Sequence[str] = (),
    batch: int = 1,
    example: int = 0,
    seed: int = 0,
    inputs: str | Path | None = None,
    init: str | Path | None = None,
    random_init: Sequence[str] = (),
    max_mb: float = DEFAULT_MAX_MB,
    source: dict[str, Any] | None = None,
) -> Trace:
    """``steps`` steps of a graph from its initial state (key ``seed``). ``init``: an ``.npz`` of
    ``group.field`` arrays replacing initial values (stored shape, batch axis included);
    ``random_init``: ``group.field=bernoulli:P|uniform:LO:HI|normal:STD``; ``inputs``: an
    ``.npz`` with one array per batch key, the batch of every step or ``(steps, *batch)``."""
    import jax
    import jax.numpy as jnp

    from mplp_graph.runtime.program import compile_graph

    if steps < 1:
        raise TraceError(f"--steps must be at least 1, got {steps}")
    if batch < 1:
        raise TraceError(f"--batch must be at least 1, got {batch}")
    _check_example(example, batch)
    prog = compile_graph(spec)
    key = jax.random.PRNGKey(seed)
    state = jax.jit(lambda k: prog.init(k, batch))(jax.random.fold_in(key, 0))
    for k, (g, f, kind, args) in enumerate(_random_inits(spec, random_init)):
        fs = spec.groups[g].state[f]
        state[g][f] = _draw(jax.random.fold_in(key, 100 + k), kind, args, stored_shape(spec.groups[g], fs, batch), fs.dtype)
    if init is not None:
        for ref, arr in _npz_arrays(init, "initial field values").items():
            rec = field_record(spec, ref)
            fs = spec.groups[rec.group].state[rec.field]
            want = stored_shape(spec.groups[rec.group], fs, batch)
            if arr.shape != want:
                raise TraceError(f"{init}: array {ref!r} has shape {arr.shape}, the field is stored as {want} at batch {batch} "
                                 "([batch?, *agent shape (1 along constant_along axes), *field shape])")
            state[rec.group][rec.field] = jnp.asarray(arr, fs.dtype)
    feeds: dict[str, np.ndarray] = {}
    if spec.inputs:
        if inputs is None:
            raise TraceError(f"graph {spec.name!r} takes batch keys {sorted(spec.inputs)} every step; give them with --inputs FILE.npz "
                             "(one array per key: the batch, or (steps, *batch)), or trace an experiment config instead")
        feeds = _npz_arrays(inputs, "batches")
        for k_, ref in spec.inputs.items():
            if k_ not in feeds:
                raise TraceError(f"{inputs}: no array {k_!r}; the graph's batch keys are {sorted(spec.inputs)}")
            g, f = ref.split(".", 1)
            want = stored_shape(spec.groups[g], spec.groups[g].state[f], batch)
            got = feeds[k_].shape
            if got != want and got != (steps, *want):
                raise TraceError(f"{inputs}: array {k_!r} has shape {got}; {ref} at batch {batch} needs {want} (the same batch every "
                                 f"step) or {(steps, *want)} (one batch per step)")
    records = choose_records(spec, fields, arrows, _persistent(prog, state))
    check_size(records, steps, max_mb)

    def batch_at(i: int) -> dict[str, Any]:
        out = {}
        for k_, ref in spec.inputs.items():
            g, f = ref.split(".", 1)
            want = stored_shape(spec.groups[g], spec.groups[g].state[f], batch)
            arr = feeds[k_]
            out[k_] = jnp.asarray(arr[i] if arr.shape != want else arr)
        return out

    values, metrics = record_steps(prog, prog.init_params(jax.random.fold_in(key, 1)), state, batch_at, steps, records, example)
    src = dict(source or {})
    src.update(seed=seed, inputs=None if inputs is None else str(inputs), init=None if init is None else str(init),
               random_init=list(random_init))
    return _trace(spec, steps, records, values, metrics, batch, example, src)


def load_source(path: str | Path) -> tuple[GraphSpec, bool]:
    """The graph of a graph file or of an experiment config (its ``graph.file``, or the template
    its ``graph`` section describes), without loading the task's data; and whether it is a config."""
    import yaml

    from mplp_graph.config.load import load_graph
    from mplp_graph.meta.config import load_experiment
    from mplp_graph.meta.run import template_spec

    if not os.path.isfile(path):
        raise TraceError(f"{path}: no such file; give a graph file (graphs/*.yaml) or an experiment config (experiments/*/config.yaml)")
    try:
        with open(path, "rb") as f:
            top = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError):
        top = None  # the graph loader reports the located problem
    if isinstance(top, dict) and "groups" not in top and ({"experiment", "task", "meta"} & set(top)):
        config, locate = load_experiment(path)
        if config.graph.file is None:
            return template_spec(config.graph), True
        graph = Path(config.graph.file)
        if not graph.is_absolute():
            graph = Path(path).parent / graph
        return load_graph(graph), True
    return load_graph(path), False


def _trace(spec, steps, records, values, metrics, batch, example, source) -> Trace:
    from mplp_graph.meta.checkpoint import graph_hash

    return Trace(spec.name, graph_hash(spec), steps, tuple(records), values, metrics, {"batch": batch, "example": example, "source": source})


# ---------------------------------------------------------------------------------------------
# the file


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def trace_to_bytes(trace: Trace) -> bytes:
    arrays: dict[str, np.ndarray] = {}
    recs = []
    for k, r in enumerate(trace.records):
        member = f"r{k}"
        arrays[member] = np.asarray(trace.values[r.name], np.float32)
        recs.append({"name": r.name, "kind": r.kind, "group": r.group, "field": r.field, "arrow": r.arrow, "shape": list(r.shape),
                     "feature_len": r.feature_len, "array": member})
    metrics = {}
    for k, (name, v) in enumerate(trace.metrics.items()):
        arrays[f"m{k}"] = np.asarray(v, np.float32)
        metrics[name] = f"m{k}"
    manifest = {
        "format": FORMAT, "version": VERSION, "graph": {"name": trace.graph_name, "hash": trace.graph_hash}, "steps": trace.steps,
        **trace.meta, "records": recs, "metrics": metrics,
        "arrays": {m: [list(a.shape), str(a.dtype)] for m, a in arrays.items()},
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as z:
        z.writestr(MANIFEST, json.dumps(manifest, indent=1))
        for m, a in arrays.items():
            z.writestr(f"{m}.npy", _npy(a))
    return buf.getvalue()


def write_trace(path: str | Path, trace: Trace) -> Path:
    """Write ``trace`` to ``path`` atomically (temporary file, then rename)."""
    from mplp_graph.meta.checkpoint import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, trace_to_bytes(trace))
    return path


def _damaged(path: Any, why: str) -> TraceError:
    return TraceError(f"{path}: not a readable trace ({why}); the file is damaged, truncated or not a trace: record it again with "
                      "mplp-graph trace ... -o FILE")


def read_trace(path: str | Path, spec: GraphSpec | None = None) -> Trace:
    """Read a trace written by :func:`write_trace`; with ``spec``, refuse a trace recorded from
    another graph (its hash differs)."""
    if not os.path.isfile(path):
        raise TraceError(f"{path}: no such trace file; record one with mplp-graph trace CONFIG_OR_GRAPH -o {path}")
    try:
        with zipfile.ZipFile(path) as z:
            try:
                manifest = json.loads(z.read(MANIFEST))
            except KeyError:
                raise _damaged(path, f"no {MANIFEST}") from None
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise _damaged(path, f"its manifest does not say format {FORMAT!r}")
            if manifest.get("version") != VERSION:
                raise TraceError(f"{path}: trace format version {manifest.get('version')!r}; this mplp_graph reads version {VERSION}: record it again")
            arrays = {}
            for member, (shape, dtype) in manifest["arrays"].items():
                with z.open(f"{member}.npy") as f:
                    arr = np.lib.format.read_array(io.BytesIO(f.read()), allow_pickle=False)
                if list(arr.shape) != list(shape) or str(arr.dtype) != dtype:
                    raise _damaged(path, f"array {member} is {arr.shape} {arr.dtype}, the manifest says {tuple(shape)} {dtype}")
                arrays[member] = arr
    except TraceError:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, EOFError, OSError, zlib.error) as e:
        raise _damaged(path, f"{type(e).__name__}: {e}") from None
    g = manifest["graph"]
    if spec is not None:
        from mplp_graph.meta.checkpoint import graph_hash

        h = graph_hash(spec)
        if g["hash"] != h:
            raise TraceError(f"{path} was recorded from graph {g['name']!r} (hash {g['hash'][:12]}), not from graph {spec.name!r} (hash {h[:12]}); "
                             "view it with the graph it was recorded from, or record a new trace of this graph with mplp-graph trace")
    steps = int(manifest["steps"])
    records, values = [], {}
    try:
        for r in manifest["records"]:
            rec = Record(r["name"], r["kind"], r["group"], r["field"], r["arrow"], tuple(r["shape"]), int(r.get("feature_len", 0)))
            arr = arrays[r["array"]]
            if arr.shape != (steps + 1, *rec.shape):
                raise _damaged(path, f"record {rec.name} has shape {arr.shape}, expected {(steps + 1, *rec.shape)}")
            records.append(rec)
            values[rec.name] = arr
        metrics = {name: arrays[m] for name, m in manifest["metrics"].items()}
    except KeyError as e:
        raise _damaged(path, f"manifest names a missing array or key {e}") from None
    meta = {k: manifest.get(k) for k in ("batch", "example", "source")}
    return Trace(g["name"], g["hash"], steps, tuple(records), values, metrics, meta, str(path))

