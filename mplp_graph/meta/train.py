"""Meta-training: one loop for every step function (:mod:`mplp_graph.meta.step`), one run or
several runs trained as one program (a sweep of seeds or learning rates), with metrics,
checkpoints, exact resume and the NaN guard (paper section 3.1.1; docs/mplp.md)."""

from __future__ import annotations

import functools
import json
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mplp_graph import xla
from mplp_graph.meta.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    latest_checkpoint,
    load_checkpoint,
    read_manifest,
    save_checkpoint,
    save_params_file,
)
from mplp_graph.meta.guard import Diagnosis, NonFiniteError, diagnose
from mplp_graph.meta.shard import AXIS, broadcast, gather, replicate, split_leading
from mplp_graph.meta.step import StepFunction, same_layout


def meta_train(
    step_fn: StepFunction,
    params: Any,
    mask: Any,
    pool: Any,
    key: Any,
    steps: int,
    run_dir: str | Path,
    *,
    runs: int | None = None,
    lr_mult: Any = None,
    checkpoint_every: int = 500,
    log_every: int = 1,
    time_budget: float | None = None,
    resume: bool = True,
    progress: bool = True,
    meta: dict[str, Any] | None = None,
    data: Any = None,
    keep: int = 3,
    on_nonfinite: str | None = None,
    mesh: Any = None,
) -> tuple[Any, list[dict[str, Any]]]:
    """Run meta-steps ``start+1 .. steps`` of ``step_fn``, writing ``metrics.jsonl``,
    checkpoints and ``params.npz`` (the parameters alone) to ``run_dir``. Returns ``(params,
    history)``, ``history`` the metrics rows (``history[-1]["step"]``: the steps done).

    ``runs``: train that many runs as one program (the step vmapped over runs): ``params``,
    ``pool`` and ``key`` then carry a leading axis of that size, the rows hold one value per run,
    and ``lr_mult`` (one multiplier per run, default 1) scales each run's parameter change, which
    for Adam (linear in its learning rate) is running it with ``lr * mult``. On an accelerator a
    meta-step is launch-bound, so K runs cost little more than one; on a CPU about K times one.
    ``mesh`` (with ``runs``; a mesh with a ``"tasks"`` axis, :func:`mplp_graph.meta.shard.task_mesh`):
    the runs are split over its devices (K a multiple of their number), across the processes of
    a job of several processes too (docs/scaling.md). For one run, the step function's own
    mesh splits the outer batch (``MetaStep(..., mesh=...)``). Process 0 writes the files.

    Exact resume: step ``s`` of a run uses ``fold_in(key, s)``, and a checkpoint holds the
    parameters (standardizer statistics included), the optimizer state and, through the metrics
    file written just before it, the metrics; so a run killed at any moment (even during a
    write: files are replaced atomically) and resumed gives, on the CPU, bitwise the parameters
    and metrics of an uninterrupted run. Checkpoints record the graph's hash and ``key``;
    resuming a run directory with another graph or key raises :class:`CheckpointError`.

    ``on_nonfinite``: a meta-step whose meta-loss or meta-gradient is not finite is never
    applied. ``"stop"`` (the default for one run) raises :class:`NonFiniteError`, whose message
    names the arrow and learner parameters where the first non-finite value appeared
    (:func:`guard.diagnose`); nothing is written for the failing step, so the newest checkpoint
    is the last good one. ``"skip"`` (the default for several runs: the others go on) records
    the step (``finite: false``), warns once with the diagnosis, and goes on.

    ``log_every``: write a metrics row every that many steps (and at the last); metrics are
    copied to the host once per row (sweeps: fewer transfers) unless ``on_nonfinite="stop"``,
    which checks every step. ``time_budget``: stop, with a checkpoint, at the first row written
    after that many seconds. ``keep``: how many checkpoints to keep (keep them all to select one
    on validation data afterwards, i.e. early stopping)."""
    carries_pool = getattr(step_fn, "carries_pool", False)  # the step updates the pool (rollout training)
    on_nonfinite = on_nonfinite or ("stop" if runs is None else "skip")
    if on_nonfinite not in ("stop", "skip"):
        raise ValueError(f"on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}")
    if min(steps, checkpoint_every, log_every) < 1:
        raise ValueError(f"steps, checkpoint_every and log_every must be at least 1, got {steps}, {checkpoint_every}, {log_every}")
    run_dir = Path(run_dir)
    multi = jax.process_count() > 1
    main = jax.process_index() == 0  # the process that writes (metrics, checkpoints, params.npz)
    if runs is None and mesh is not None:
        raise ValueError("meta_train's mesh splits a sweep's runs; for one run, give the mesh to the step function (MetaStep(..., mesh=...))")
    if runs is not None and mesh is not None:
        if getattr(step_fn, "mesh", None) is not None:
            raise ValueError("split either the runs (meta_train's mesh) or each run's outer batch (the step function's mesh), not both")
        if runs % mesh.shape[AXIS]:
            raise ValueError(f"a sweep of {runs} runs cannot be split evenly over {mesh.shape[AXIS]} devices; use a multiple of {mesh.shape[AXIS]} runs")
    split_runs = runs is not None and mesh is not None
    mesh = mesh if runs is not None else getattr(step_fn, "mesh", None)
    if multi and mesh is None:
        raise ValueError("in a job of several processes the meta-step needs a mesh over every process's devices: "
                         "MetaStep(..., mesh=mplp_graph.meta.shard.task_mesh()), or meta_train(..., runs=K, mesh=...) for a sweep")
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for pattern in (".metrics.jsonl.*", ".params.npz.*"):  # left by a run killed while writing them
            for tmp in run_dir.glob(pattern):
                tmp.unlink(missing_ok=True)
    opt_state = step_fn.init_opt_state(params) if runs is None else jax.vmap(step_fn.init_opt_state)(params)
    params, opt_state, pool, start = _restore(step_fn, run_dir, params, opt_state, pool, key, resume, runs is not None, main, multi)
    if split_runs:  # each device holds its runs; the mask and the data are the same for all
        mults = jnp.ones((runs,), jnp.float32) if lr_mult is None else jnp.asarray(lr_mult, jnp.float32)
        params, opt_state, pool, split_key, lr_mult = split_leading(mesh, (params, opt_state, pool, key, mults))
        mask = replicate(mesh, mask)
        if multi:
            data = replicate(mesh, data)
    elif mesh is not None:  # every device holds the parameters (process 0's, in a job of several processes)
        params, opt_state, mask, pool = replicate(mesh, (params, opt_state, mask, pool))
        if multi:
            data = replicate(mesh, data)
    fetch = gather if split_runs else jax.device_get  # runs split across processes are gathered whole
    metrics_path = run_dir / "metrics.jsonl"
    history = _metrics_up_to(metrics_path, start, log_every) if main else []
    config = {
        **(meta or {}),
        "meta_train": {
            "step_fn": type(step_fn).__name__, "outer_batch": step_fn.outer_batch, "steps": steps, "runs": runs,
            "checkpoint_every": checkpoint_every, "keep": keep, "on_nonfinite": on_nonfinite,
        },
    }
    if runs is None:
        jstep = _jitted(step_fn)
        # a job of several processes passes the step's key as a host value, the same in every process
        step_key = (lambda s: np.asarray(jax.random.fold_in(key, s))) if multi else (lambda s: jax.random.fold_in(key, s))  # noqa: E731
        call = lambda p, o, pl, s: jstep(p, o, mask, pl, step_key(s), data)  # noqa: E731
    else:
        jruns = _jitted_runs(step_fn, mesh if split_runs else None)
        if split_runs:
            mults, run_keys = lr_mult, split_key
        else:
            mults, run_keys = (jnp.ones((runs,), jnp.float32) if lr_mult is None else jnp.asarray(lr_mult, jnp.float32)), key
        call = lambda p, o, pl, s: jruns(p, o, mults, mask, pl, run_keys, np.int32(s), data)  # noqa: E731
    sync_every = 1 if on_nonfinite == "stop" else log_every
    bar = None
    if progress and main:
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=start, desc="meta-train" + (f" x{runs}" if runs else ""), mininterval=2.0)
    t0 = t_last = time.perf_counter()
    s_last = start
    warned = False
    pending: list[dict[str, Any]] = []

    def save(step: int) -> None:
        trees = {"params": params, "opt_state": opt_state, **({"pool": pool} if carries_pool else {})}
        if split_runs and multi:
            trees = gather(trees)  # every process takes part; process 0 writes
        if not main:  # process 0 writes; the parameters are the same in every process
            return
        # metrics first: the checkpoint's manifest, written last, marks both complete
        atomic_write_bytes(metrics_path, "".join(json.dumps(h) + "\n" for h in history).encode())
        save_checkpoint(run_dir, step, trees, config, keep, graph=step_fn.graph, rng_key=key)
        save_params_file(run_dir / "params.npz", trees["params"])

    s = start
    try:
        while s < steps:
            new_params, new_opt, m, *new_pool = call(params, opt_state, pool, s)
            pending.append(m)
            if on_nonfinite == "stop":
                finite = np.asarray(fetch(m["finite"]))
                if not finite.all():
                    bad = int(np.argmin(finite.ravel()))  # the first run whose step failed
                    one = (lambda t: t) if runs is None else (lambda t: jax.tree_util.tree_map(lambda a: a[bad], fetch(t)))
                    step_key = jax.random.fold_in(one(key), s)
                    diagnosis = diagnose(step_fn, one(params), one(pool) if pool is not None else None, step_key, data)
                    if bar is not None:
                        bar.close()
                    loss = float(np.asarray(fetch(m["loss"])).ravel()[bad])
                    raise NonFiniteError(_nonfinite_message(s + 1, loss, diagnosis, run_dir), s + 1, diagnosis)
            params, opt_state = new_params, new_opt  # a non-finite step left them as they were (outer_update)
            if carries_pool:
                pool = new_pool[0]
            s += 1
            if s % sync_every and s % log_every and s != steps:
                continue
            rows = fetch(pending)
            pending = []
            now = time.perf_counter()
            per_step = (now - t_last) / (s - s_last)
            t_last, s_last = now, s
            for offset, mm in enumerate(rows):
                step_no = s - len(rows) + offset + 1
                finite = np.asarray(mm["finite"]).astype(bool)
                if not finite.all() and not warned:
                    i = int(np.argmin(finite.ravel()))
                    one = (lambda t: t) if runs is None else (lambda t: jax.tree_util.tree_map(lambda a: a[i], fetch(t)))
                    diagnosis = diagnose(step_fn, one(params), one(pool) if pool is not None else None, jax.random.fold_in(one(key), step_no - 1), data)
                    run_note = "" if runs is None else f" (run {i})"
                    warnings.warn(_nonfinite_message(step_no, float(np.asarray(mm["loss"]).ravel()[i]), diagnosis, None) + run_note,
                                  RuntimeWarning, stacklevel=2)
                    warned = True
                if step_no % log_every == 0 or step_no == steps:
                    history.append(_row(step_no, per_step, mm, runs is not None))
            if bar is not None:
                bar.update(len(rows))
                last = history[-1] if history else {}
                bar.set_postfix({k: f"{np.min(last[k]):.4f}" for k in ("loss", "cv") if k in last})
            over_budget = time_budget is not None and time.perf_counter() - t0 > time_budget and s % log_every == 0
            if multi and time_budget is not None:  # every process stops at the same step: process 0's clock decides
                over_budget = bool(broadcast(np.asarray(over_budget)))
            if s % checkpoint_every == 0 or s == steps or over_budget:
                save(s)
            if over_budget:
                break
    except Exception as err:  # a lost process shows up here as a failed collective operation
        from mplp_graph import distributed

        if not distributed.is_collective_failure(err):
            raise
        ckpt = latest_checkpoint(run_dir) if main else None
        newest = f"The newest checkpoint is {ckpt} (step {read_manifest(ckpt)['step']})" if ckpt is not None else "Process 0 reports the newest checkpoint"
        raise distributed.lost_process_error(err, f"{newest}; restart the whole job to resume from it") from None
    if bar is not None:
        bar.close()
    return params, history


def _row(step: int, step_s: float, m: dict[str, Any], runs: bool) -> dict[str, Any]:
    """One metrics row: the step, its wall time, ``finite`` and every metric of the step
    function (``loss`` and the parts of its ``batch_loss``); with ``runs``, lists over runs."""
    row: dict[str, Any] = {"step": step, "step_s": step_s}
    for k, v in m.items():
        v = np.asarray(v)
        if k == "finite":
            row[k] = v.astype(bool).tolist() if runs else bool(v)
        else:
            row[k] = v.astype(float).round(7).tolist() if runs else float(v)
    return row


def _restore(step_fn: StepFunction, run_dir: Path, params: Any, opt_state: Any, pool: Any, key: Any, resume: bool, runs: bool,
             main: bool, multi: bool) -> tuple[Any, Any, Any, int]:
    """``(params, opt_state, pool, start)`` from the newest checkpoint of ``run_dir`` (or as
    given, ``start`` 0; the pool is in checkpoints of step functions that update it). In a job of several processes process 0 reads it and every process learns
    the step it reached, or that it failed (run folders need not be on a shared file system);
    the trees themselves reach the others through :func:`mplp_graph.meta.shard.replicate`."""
    start, failure = 0, None
    if main:
        try:
            ckpt = latest_checkpoint(run_dir) if resume else None
            if ckpt is not None:
                extra = {"pool": pool} if getattr(step_fn, "carries_pool", False) else {}
                trees, manifest = restore_train_state(ckpt, step_fn.optimizer, params, opt_state, runs=runs, graph=step_fn.graph, rng_key=key,
                                                      extra=extra)
                params, opt_state, start = trees["params"], trees["opt_state"], int(manifest["step"])
                pool = trees.get("pool", pool)
        except CheckpointError as err:
            if not multi:
                raise
            failure = err  # the others must hear of it before this process stops
    if not multi:
        return params, opt_state, pool, start
    ok, start = broadcast((np.asarray(failure is None), np.asarray(start, np.int32)))
    if not ok:
        raise failure if failure is not None else CheckpointError(
            f"process 0 could not restore the newest checkpoint of {run_dir}; its message says why")
    return params, opt_state, pool, int(start)  # process 0's trees reach the others through shard.replicate


def restore_train_state(
    ckpt: Path, optimizer: optax.GradientTransformation, params: Any, opt_state: Any, *, runs: bool = False,
    extra: dict[str, Any] | None = None, **identity: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``load_checkpoint(ckpt, {"params": params, "opt_state": opt_state, **extra}, **identity)``
    (``extra``: more trees stored beside them, e.g. a rollout step's pool), also
    reading checkpoints written before the outer update was raveled (:func:`outer_update`), whose
    optimizer state holds one array per parameter leaf: those arrays are raveled in
    :func:`ravel_pytree`'s order. ``runs``: the trees carry a leading run axis (sweeps)."""
    templates = {"params": params, "opt_state": opt_state, **(extra or {})}
    try:
        return load_checkpoint(ckpt, templates, **identity)
    except CheckpointError as err:
        first = err
    legacy = (jax.vmap(optimizer.init) if runs else optimizer.init)(params)
    try:
        trees, manifest = load_checkpoint(ckpt, {"params": params, "opt_state": legacy, **(extra or {})}, **identity)
    except CheckpointError:
        raise first from None
    treedef = jax.tree_util.tree_structure(params)
    is_params = lambda x: jax.tree_util.tree_structure(x) == treedef  # noqa: E731

    def ravel(sub):
        if not is_params(sub):
            return sub
        leaves = jax.tree_util.tree_leaves(sub)
        return np.concatenate([np.reshape(x, (*np.shape(x)[: int(runs)], -1)) for x in leaves], axis=-1)

    state = jax.tree_util.tree_map(ravel, trees["opt_state"], is_leaf=is_params)
    if not same_layout(state, opt_state):
        raise first
    return {**trees, "opt_state": state}, manifest


# xla_backend_optimization_level=1 (default 2): on this 2-core CPU the sinusoid meta-step compiles
# in 9.1 s instead of 13.1 s and the MNIST one in ~12.7 s instead of ~15.4 s, at the same step time
# within noise (benchmarks/results/compile_bench.json; docs/performance.md "Compile times")
FAST_COMPILE = (("xla_backend_optimization_level", 1),)


def _jit_step(step_fn: StepFunction) -> Any:
    # the library's XLA defaults (mplp_graph.xla) and the step's own options; with a mesh, the
    # parameters and metrics come out on every device (every process can read and save them)
    mesh = getattr(step_fn, "mesh", None)
    if mesh is None:
        return xla.jit(step_fn.__call__, step_fn.compiler_options)
    from jax.sharding import NamedSharding, PartitionSpec

    return xla.jit(step_fn.__call__, step_fn.compiler_options, out_shardings=NamedSharding(mesh, PartitionSpec()))


@functools.lru_cache(maxsize=16)
def _jitted(step_fn: StepFunction) -> Any:
    """One jitted step per step function, so that calling meta_train again (resuming in the same
    process, tests) does not trace and compile the meta-step again."""
    return _jit_step(step_fn)


@functools.lru_cache(maxsize=16)
def _jitted_runs(step_fn: StepFunction, mesh: Any = None) -> Any:
    """``(params, opt_state, mult, mask, pool, key, step, data) -> (params, opt_state, metrics)``
    for K runs at once (leading axis K on params, opt_state, mult, pool, key); with ``mesh``,
    every output stays split by run over its ``"tasks"`` axis."""

    def one(params, opt_state, mult, mask, pool, key, step, data):
        new, opt, m, *new_pool = step_fn(params, opt_state, mask, pool, jax.random.fold_in(key, step), data)
        new = jax.tree_util.tree_map(lambda n, o: o + mult * (n - o), new, params)
        return (new, opt, m, *new_pool)  # a step that updates its pool returns it last

    # pools are per run (None, an empty pytree, for steps that draw no priors)
    fn = jax.vmap(one, in_axes=(0, 0, 0, None, 0, 0, None, None))
    if mesh is None:
        return xla.jit(fn, step_fn.compiler_options)
    from jax.sharding import NamedSharding, PartitionSpec

    return xla.jit(fn, step_fn.compiler_options, out_shardings=NamedSharding(mesh, PartitionSpec(AXIS)))


def _metrics_up_to(path: Path, start: int, log_every: int = 1) -> list[dict[str, Any]]:
    """The rows of steps 1..``start`` of the metrics file (a resumed run's history)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    rows = [h for h in rows if h["step"] <= start]
    expected = [s for s in range(1, start + 1) if s % log_every == 0 or s == start]  # rows every log_every steps, and at the checkpoint
    if [h["step"] for h in rows] != expected:
        warnings.warn(
            f"{path}: expected a row for each logged step up to {start} (the checkpoint's step), found {len(rows)} rows; "
            "the resumed metrics will have gaps", RuntimeWarning, stacklevel=3,
        )
    return rows


def _nonfinite_message(step: int, loss: float, diagnosis: Diagnosis, run_dir: Path | None) -> str:
    groups = diagnosis.groups
    head = f"meta-step {step}: non-finite meta-loss ({loss}) or meta-gradient; the step was not applied"
    if groups:
        head += f". Parameter groups involved: {', '.join(repr(g) for g in groups)}"
    lines = [head, "  " + diagnosis.describe()]
    if run_dir is not None:
        ckpt = latest_checkpoint(run_dir)
        last = f"{ckpt} (step {read_manifest(ckpt)['step']})" if ckpt is not None else "none yet"
        lines.append(
            f"Nothing was written for step {step}; the newest checkpoint in {run_dir}, the last good one, is {last}. "
            "Fix the cause (learning rate, standardizer statistics, task data), or pass on_nonfinite='skip' to skip such steps."
        )
    return "\n".join(lines)
