"""Meta-training: the whole meta-step (the outer batch's tasks, inner steps scanned,
meta-gradient, per-leaf normalization, Adam) is one jitted function (reference-notes 5.2, 8)."""

from __future__ import annotations

import functools
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from mplp_graph import xla
from mplp_graph.runtime.program import Program
from mplp_graph.meta import batching
from mplp_graph.meta.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    latest_checkpoint,
    load_checkpoint,
    read_manifest,
    save_checkpoint,
)
from mplp_graph.meta.guard import Diagnosis, NonFiniteError, diagnose
from mplp_graph.meta.objectives import MetaLoss, task_loss
from mplp_graph.runtime.state import agent_params

FROZEN_STATS = ("in_mean", "in_norm", "out_mean")  # only out_scale among the normalization is trained
ADAM_EPS = 1e-7  # the Keras default used by the reference (notes 8)


def trainable_mask(params: Any, train_g: bool = True) -> Any:
    """1.0 for meta-trained leaves, 0.0 for frozen ones (standardizer statistics; and g when
    ``train_g`` is False, as in the reference's MAML run where g never reached the optimizer)."""

    def leaf(path, x):
        names = [getattr(p, "key", None) for p in path]
        frozen = any(n in FROZEN_STATS for n in names) or (not train_g and "g" in names)
        return jnp.asarray(np.full(np.shape(x), 0.0 if frozen else 1.0, np.float32))  # no XLA program per leaf

    return jax.tree_util.tree_map_with_path(leaf, params)


def normalize_per_leaf(grads: Any) -> Any:
    """``g / (||g||_2 + 1e-8)`` for each leaf (paper: "normalize the gradients for each optimizer parameter")."""
    return jax.tree_util.tree_map(lambda g: g / (jnp.linalg.norm(g.ravel()) + 1e-8), grads)


# ---------------------------------------------------------------------------------------------
# the outer update, on the parameters raveled into one vector
#
# The learners have ~180 small parameter leaves. Masking, normalizing, Adam and the finiteness
# guard leaf by leaf made ~1,500 tiny XLA kernels per meta-step: XLA compiled them one by one
# (a sinusoid meta-step's outer update alone took 45 s to compile on the 2-core CPU, 2.6 s
# raveled) and ran them one by one (3.4 ms vs 1.7 ms). docs/mplp.md, "Compile times".


def _leaf_segments(tree: Any) -> tuple[np.ndarray, int]:
    """For the raveled ``tree``: the index of the leaf each element comes from, and the leaf count."""
    sizes = [int(np.size(x)) for x in jax.tree_util.tree_leaves(tree)]
    return np.repeat(np.arange(len(sizes), dtype=np.int32), sizes), len(sizes)


def _ravel(tree: Any) -> tuple[Any, Callable[[Any], Any]]:
    leaves = jax.tree_util.tree_leaves(tree)
    bad = sorted({str(jnp.result_type(x)) for x in leaves} - {"float32"})
    if bad:
        raise TypeError(f"the meta-step trains float32 parameters; found leaves of type {', '.join(bad)}")
    return ravel_pytree(tree)


def init_opt_state(optimizer: optax.GradientTransformation, params: Any) -> Any:
    """The optimizer state of :func:`outer_update`: ``optimizer`` over ``params`` raveled into
    one float32 vector (so Adam's moments are two vectors, not one array per parameter leaf)."""
    return optimizer.init(_ravel(params)[0])


def _same_layout(a: Any, b: Any) -> bool:
    """Whether two pytrees have the same structure and leaf shapes (arrays or shape structs)."""
    return jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b) and all(
        np.shape(x) == np.shape(y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


def _check_opt_state(optimizer: optax.GradientTransformation, opt_state: Any, flat: Any) -> None:
    if not _same_layout(opt_state, jax.eval_shape(optimizer.init, flat)):
        raise TypeError(
            "opt_state does not match the meta-step's optimizer state: the outer update keeps it over the parameters "
            f"raveled into one vector of {flat.size} values. Make it with init_opt_state(optimizer, params) (or "
            "step.init_opt_state(params)), not optimizer.init(params)"
        )


def outer_update(
    optimizer: optax.GradientTransformation, params: Any, opt_state: Any, mask: Any, loss: Any, grads: Any
) -> tuple[Any, Any, Any]:
    """Mask, normalize per leaf (:func:`normalize_per_leaf`), ``optimizer``; a non-finite loss or
    gradient leaves everything as it was (reference-notes 5.2). Computed on the raveled
    parameters; ``opt_state`` comes from :func:`init_opt_state`.

    Returns ``(params, opt_state, finite)``. A masked leaf gets a zero gradient, hence a zero
    Adam update: it stays bitwise at its value."""
    flat, unravel = _ravel(params)
    _check_opt_state(optimizer, opt_state, flat)
    seg, n_leaves = _leaf_segments(params)
    g = _ravel(grads)[0] * _ravel(mask)[0]
    sq = jax.ops.segment_sum(g * g, seg, num_segments=n_leaves, indices_are_sorted=True)
    g = g / (jnp.sqrt(sq) + 1e-8)[seg]
    finite = jnp.isfinite(loss) & jnp.all(jnp.isfinite(g))
    updates, new_opt = optimizer.update(g, opt_state, flat)
    new_flat = jnp.where(finite, optax.apply_updates(flat, updates), flat)
    new_opt = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new_opt, opt_state)
    return unravel(new_flat), new_opt, finite


def make_pool(prog: Program, key: Any, size: int) -> Any:
    """``size`` random priors (W ~ N(0, 0.05), b = 0), stacked: a pytree with leading axis P."""
    # one compiled program (op by op under vmap, each small op compiled its own: 1-3 s)
    return jax.jit(jax.vmap(lambda k: agent_params(prog.spec, prog.init(k, 1))))(jax.random.split(key, size))


class RaveledOptState:
    """For step functions whose outer update is :func:`outer_update` (``self.optimizer``):
    ``init_opt_state(params)`` makes the optimizer state they expect."""

    def init_opt_state(self, params: Any) -> Any:
        return init_opt_state(self.optimizer, params)


@dataclass(frozen=True)
class MetaStep(RaveledOptState):
    prog: Program
    sample_task: Callable[[Any], dict[str, Any]]
    objective: MetaLoss
    outer_batch: int
    optimizer: optax.GradientTransformation
    mesh: Any = None  # a jax.sharding.Mesh with a "tasks" axis: the outer batch is split over its devices
    # XLA options for compiling the meta-step in meta_train, as (name, value) pairs; FAST_COMPILE
    # trades some XLA optimization for ~25% less compile time (benchmarks/compile_bench.py)
    compiler_options: tuple = ()
    # the outer batch's tasks vmapped, one after another ("map"), or "auto": map on the CPU, vmap
    # elsewhere (mplp_graph.meta.batching); with a mesh they are vmapped (and split over its devices)
    outer_batch_mode: str = "auto"

    def __post_init__(self):
        batching.resolve(self.outer_batch_mode)  # a known mode
        if self.mesh is not None and self.outer_batch_mode == "map":
            raise ValueError("outer_batch_mode='map' runs the tasks one after another, a mesh splits them over its devices; "
                             "use 'vmap' or 'auto' with a mesh")

    def batch_loss(self, params: Any, priors: Any, tasks: dict[str, Any]) -> tuple[Any, dict]:
        def one(pr, t):
            return task_loss(self.prog, self.objective, params, pr, t)

        if self.mesh is not None:  # the tasks' axis is split over the mesh's devices
            losses, parts = jax.vmap(one)(priors, tasks)
        else:
            losses, parts = batching.over_leading_axis(one, (priors, tasks), self.outer_batch_mode)
        return jnp.mean(losses), jax.tree_util.tree_map(jnp.mean, parts)

    def __call__(self, params: Any, opt_state: Any, mask: Any, pool: Any, key: Any, data: Any = None):
        """One meta-step. ``data``: the task family's arrays (e.g. MNIST images), passed as an
        argument rather than closed over so that they are not baked into the compiled program;
        ``sample_task(key, data)`` is called when it is given, ``sample_task(key)`` otherwise."""
        k_pool, k_task = jax.random.split(key)
        n_pool = jax.tree_util.tree_leaves(pool)[0].shape[0]
        idx = jax.random.choice(k_pool, n_pool, (self.outer_batch,), replace=False)  # distinct priors
        priors = jax.tree_util.tree_map(lambda a: a[idx], pool)
        sample = self.sample_task if data is None else (lambda k: self.sample_task(k, data))
        tasks = jax.vmap(sample)(jax.random.split(k_task, self.outer_batch))
        if self.mesh is not None:  # tasks and their priors live on different devices; params are replicated
            from mplp_graph.meta.shard import shard_tasks

            priors, tasks = shard_tasks(self.mesh, (priors, tasks))
        (loss, parts), grads = jax.value_and_grad(self.batch_loss, has_aux=True)(params, priors, tasks)
        params, opt_state, finite = outer_update(self.optimizer, params, opt_state, mask, loss, grads)
        return params, opt_state, {"loss": loss, **parts, "finite": finite}


def adam(lr: float, schedule: str = "constant", steps: int = 1, lr_final: float = 1e-5) -> optax.GradientTransformation:
    """Adam with the Keras epsilon; optionally a cosine decay of the learning rate over ``steps``."""
    if schedule == "cosine":
        rate = optax.cosine_decay_schedule(lr, steps, alpha=lr_final / lr)
        return optax.adam(rate, b1=0.9, b2=0.999, eps=ADAM_EPS)
    return optax.adam(lr, b1=0.9, b2=0.999, eps=ADAM_EPS)


def meta_train(
    step_fn: MetaStep,
    params: Any,
    mask: Any,
    pool: Any,
    key: Any,
    steps: int,
    run_dir: str | Path,
    *,
    checkpoint_every: int = 500,
    resume: bool = True,
    progress: bool = True,
    meta: dict[str, Any] | None = None,
    data: Any = None,
    keep: int = 3,
    on_nonfinite: str = "stop",
) -> tuple[Any, list[dict[str, Any]]]:
    """Run ``steps`` meta-steps, writing ``metrics.jsonl`` and checkpoints to ``run_dir``.

    Exact resume: the key of step ``s`` is ``fold_in(key, s)`` and a checkpoint holds the
    parameters (standardizer statistics included), the optimizer state and, through the metrics
    file written just before it, the metrics; so a run killed at any moment (even during a
    write: files are replaced atomically) and resumed gives, on the CPU, bitwise the parameters
    and metrics of an uninterrupted run. Checkpoints record the graph's hash and ``key``;
    resuming a run directory with another graph or key raises :class:`CheckpointError`.

    ``on_nonfinite``: a meta-step whose meta-loss or meta-gradient is not finite is never
    applied. ``"stop"`` (default) raises :class:`NonFiniteError`, whose message names the arrow
    and learner parameters where the first non-finite value appeared (:func:`guard.diagnose`);
    nothing is written for the failing step, so the newest checkpoint is the last good one.
    ``"skip"`` records the step (``finite: false`` in the metrics), warns once with the
    diagnosis, and goes on. ``keep``: how many checkpoints to keep."""
    if on_nonfinite not in ("stop", "skip"):
        raise ValueError(f"on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for tmp in run_dir.glob(".metrics.jsonl.*"):  # left by a run killed while writing it
        tmp.unlink(missing_ok=True)
    graph = _graph_of(step_fn)
    opt_state = step_opt_state(step_fn, params)
    start = 0
    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        trees, manifest = restore_train_state(ckpt, step_fn.optimizer, params, opt_state, graph=graph, rng_key=key)
        params, opt_state, start = trees["params"], trees["opt_state"], int(manifest["step"])
    metrics_path = run_dir / "metrics.jsonl"
    history = _metrics_up_to(metrics_path, start)
    config = {
        **(meta or {}),
        "meta_train": {
            "step_fn": type(step_fn).__name__, "outer_batch": getattr(step_fn, "outer_batch", None), "steps": steps,
            "checkpoint_every": checkpoint_every, "keep": keep, "on_nonfinite": on_nonfinite,
        },
    }
    jstep = _jitted(step_fn)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=start, desc="meta-train", mininterval=2.0)
    t_last = time.perf_counter()
    warned = False
    for s in range(start, steps):
        step_key = jax.random.fold_in(key, s)
        new_params, new_opt, m = jstep(params, opt_state, mask, pool, step_key, data)
        m = {k: float(v) for k, v in m.items()}
        finite = bool(m.get("finite", np.isfinite(m["loss"])))
        now = time.perf_counter()
        row = {"step": s + 1, "loss": m["loss"], "hint": m["hint"], "cv": m["cv"], "step_s": now - t_last, "finite": finite}
        t_last = now
        if not finite:
            diagnosis = diagnose(step_fn, params, pool, step_key, data)
            if on_nonfinite == "stop":
                if bar is not None:
                    bar.close()
                raise NonFiniteError(_nonfinite_message(s + 1, m, diagnosis, run_dir), s + 1, diagnosis)
            if not warned:
                warnings.warn(_nonfinite_message(s + 1, m, diagnosis, None), RuntimeWarning, stacklevel=2)
                warned = True
            new_params, new_opt = params, opt_state  # never apply it, whatever the step function did
        params, opt_state = new_params, new_opt
        history.append(row)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{m['loss']:.4f}", cv=f"{m['cv']:.4f}")
        if (s + 1) % checkpoint_every == 0 or s + 1 == steps:
            # metrics first: the checkpoint's manifest, written last, marks both complete
            atomic_write_bytes(metrics_path, "".join(json.dumps(h) + "\n" for h in history).encode())
            save_checkpoint(run_dir, s + 1, {"params": params, "opt_state": opt_state}, config, keep, graph=graph, rng_key=key)
    if bar is not None:
        bar.close()
    return params, history


def step_opt_state(step_fn: Any, params: Any) -> Any:
    """The initial optimizer state for ``step_fn``: its ``init_opt_state(params)`` (the library's
    steps: raveled, :func:`init_opt_state`), else ``step_fn.optimizer.init(params)``."""
    init = getattr(step_fn, "init_opt_state", None)
    return init(params) if init is not None else step_fn.optimizer.init(params)


def restore_train_state(
    ckpt: Path, optimizer: optax.GradientTransformation, params: Any, opt_state: Any, *, runs: bool = False, **identity: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``load_checkpoint(ckpt, {"params": params, "opt_state": opt_state}, **identity)``, also
    reading checkpoints written before the outer update was raveled (:func:`outer_update`), whose
    optimizer state holds one array per parameter leaf: those arrays are raveled in
    :func:`ravel_pytree`'s order. ``runs``: the trees carry a leading run axis (sweeps)."""
    templates = {"params": params, "opt_state": opt_state}
    try:
        return load_checkpoint(ckpt, templates, **identity)
    except CheckpointError as err:
        first = err
    legacy = (jax.vmap(optimizer.init) if runs else optimizer.init)(params)
    try:
        trees, manifest = load_checkpoint(ckpt, {"params": params, "opt_state": legacy}, **identity)
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
    if not _same_layout(state, opt_state):
        raise first
    return {**trees, "opt_state": state}, manifest


# xla_backend_optimization_level=1 (default 2): on this 2-core CPU the sinusoid meta-step compiles
# in 9.1 s instead of 13.1 s and the MNIST one in ~12.7 s instead of ~15.4 s, at the same step time
# within noise (benchmarks/results/compile_bench.json; docs/mplp.md "Compile times")
FAST_COMPILE = (("xla_backend_optimization_level", 1),)


def _jit_step(step_fn: Any) -> Any:
    # the library's defaults (mplp_graph.xla) and the step's own options; MamlStep / JointStep have none
    return xla.jit(step_fn.__call__, getattr(step_fn, "compiler_options", ()))


@functools.lru_cache(maxsize=16)
def _jitted_cached(step_fn: Any) -> Any:
    return _jit_step(step_fn)


def _jitted(step_fn: Any) -> Any:
    """One jitted step per step function, so that calling meta_train again (resuming in the same
    process, tests) does not trace and compile the meta-step again."""
    try:
        return _jitted_cached(step_fn)
    except TypeError:  # an unhashable step function
        return _jit_step(step_fn)


def _graph_of(step_fn: Any) -> Any:
    """The graph spec a step function trains (``prog``, or MAML's forward program ``fwd``)."""
    for name in ("prog", "fwd"):
        prog = getattr(step_fn, name, None)
        if isinstance(prog, Program):
            return prog.spec
    return None


def _metrics_up_to(path: Path, start: int) -> list[dict[str, Any]]:
    """The rows of steps 1..``start`` of the metrics file (a resumed run's history)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    rows = [h for h in rows if h["step"] <= start]
    if [h["step"] for h in rows] != list(range(1, start + 1)):
        warnings.warn(
            f"{path}: expected one row for each step 1..{start} (the checkpoint's step), found {len(rows)} rows; "
            "the resumed metrics will have gaps", RuntimeWarning, stacklevel=3,
        )
    return rows


def _nonfinite_message(step: int, m: dict[str, float], diagnosis: Diagnosis, run_dir: Path | None) -> str:
    groups = diagnosis.groups
    head = f"meta-step {step}: non-finite meta-loss ({m['loss']}) or meta-gradient; the step was not applied"
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
