"""Several meta-training runs as one program: the meta-step ``vmap``-ed over runs.

Runs differ by seed (learner initialisation and standardizer statistics, prior pool, task
stream) and by a learning-rate multiplier; they share the graph, the task family and the
optimizer's form. On an accelerator a meta-step is launch-bound (many small kernels), so K runs
cost little more than one; on a CPU they cost about K times one.

The learning-rate multiplier scales each run's parameter change, which for Adam (whose update is
linear in its learning rate) is the same as running it with ``lr * mult``.

Outputs in ``run_dir``: ``metrics.jsonl`` (one row per logged step, per-run lists), checkpoints
(:mod:`mplp_graph.meta.checkpoint`, resumable) and ``params.npz``, the stacked learner
parameters (leading axis = run) of the last checkpoint.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mplp_graph import xla
from mplp_graph.meta.checkpoint import (
    atomic_write_bytes,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from mplp_graph.meta.run import load_params_like, save_params_file
from mplp_graph.meta.train import MetaStep, restore_train_state, step_opt_state


def stack(trees: Sequence[Any]) -> Any:
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree: Any, i: int) -> Any:
    return jax.tree_util.tree_map(lambda a: a[i], tree)


def sweep_step(step_fn: MetaStep) -> Any:
    """``(params, opt_state, mult, mask, pool, key, step, data) -> (params, opt_state, metrics)``
    for K runs at once (leading axis K on params, opt_state, mult, pool, key)."""

    def one(params, opt_state, mult, mask, pool, key, step, data):
        new, opt, m = step_fn(params, opt_state, mask, pool, jax.random.fold_in(key, step), data)
        new = jax.tree_util.tree_map(lambda n, o: o + mult * (n - o), new, params)
        return new, opt, m

    return xla.jit(jax.vmap(one, in_axes=(0, 0, 0, None, 0, 0, None, None)))


def meta_train_sweep(
    step_fn: MetaStep,
    params: Any,
    mask: Any,
    pools: Any,
    keys: Any,
    mults: Any,
    steps: int,
    run_dir: str | Path,
    *,
    data: Any = None,
    time_budget: float | None = None,
    checkpoint_every: int = 500,
    log_every: int = 10,
    keep: int = 3,
    resume: bool = True,
    progress: bool = True,
    meta: dict[str, Any] | None = None,
) -> tuple[Any, int, list[dict[str, Any]]]:
    """Train K runs together for ``steps`` meta-steps (or until ``time_budget`` seconds of
    training have passed; the state is then checkpointed). ``params``, ``pools``, ``keys`` and
    ``mults`` carry a leading axis K. Returns ``(params, steps_done, history)``.

    Step ``s`` of run ``i`` uses ``fold_in(keys[i], s)``: a resumed sweep draws what an
    uninterrupted one would. A run whose loss or gradient is not finite skips that step (the
    others go on); the metrics record it. ``keep``: how many checkpoints to keep (the newest;
    keep them all to select a checkpoint on validation data afterwards, i.e. early stopping)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    opt_state = jax.vmap(lambda p: step_opt_state(step_fn, p))(params)
    mults = jnp.asarray(mults, jnp.float32)
    start = 0
    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        trees, manifest = restore_train_state(
            ckpt, step_fn.optimizer, params, opt_state, runs=True, graph=step_fn.prog.spec, rng_key=keys
        )
        params, opt_state, start = trees["params"], trees["opt_state"], int(manifest["step"])
    metrics_path = run_dir / "metrics.jsonl"
    history: list[dict[str, Any]] = []
    if metrics_path.exists():
        history = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
        history = [h for h in history if h["step"] <= start]
    run = sweep_step(step_fn)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=start, desc=f"meta-train x{len(mults)}", mininterval=5.0)
    t0 = time.perf_counter()
    t_log, s_log = t0, start
    s = start
    acc: list[dict[str, Any]] = []

    def save(step):
        atomic_write_bytes(metrics_path, "".join(json.dumps(h) + "\n" for h in history).encode())
        save_checkpoint(run_dir, step, {"params": params, "opt_state": opt_state}, {**(meta or {}), "runs": len(mults)}, keep,
                        graph=step_fn.prog.spec, rng_key=keys)
        save_params_file(run_dir / "params.npz", params)  # stacked: leading axis = run

    while s < steps:
        params, opt_state, m = run(params, opt_state, mults, mask, pools, keys, jnp.int32(s), data)
        s += 1
        acc.append(m)
        if s % log_every == 0 or s == steps:
            m_host = jax.device_get(acc)  # one transfer per log interval, not per step
            now = time.perf_counter()
            per_step = (now - t_log) / (s - s_log)
            t_log, s_log = now, s
            for offset, mm in enumerate(m_host):
                step_no = s - len(m_host) + offset + 1
                if step_no % log_every == 0 or step_no == steps:
                    history.append({
                        "step": step_no, "step_s": per_step,
                        **{k: np.asarray(mm[k]).astype(float).round(7).tolist() for k in ("loss", "hint", "cv")},
                        "finite": np.asarray(mm["finite"]).astype(bool).tolist(),
                    })
            acc = []
            if bar is not None:
                bar.update(len(m_host))
                bar.set_postfix(loss=f"{min(history[-1]['loss']):.4f}")
        if s % checkpoint_every == 0 or s == steps:
            save(s)
        if time_budget is not None and time.perf_counter() - t0 > time_budget and s % log_every == 0:
            save(s)
            break
    if bar is not None:
        bar.close()
    return params, s, history


def sweep_checkpoints(run_dir: str | Path, template: Any) -> list[tuple[int, Any]]:
    """``(step, stacked learner parameters)`` of every complete checkpoint kept in a sweep's
    ``run_dir``, oldest first (``template``: one run's parameter tree). With ``keep`` large
    enough, these are the candidates for early stopping on validation data."""
    run_dir = Path(run_dir)
    stacked = load_stacked_params(template, run_dir / "params.npz")  # the shapes, with the run axis
    out = []
    for ckpt in sorted(run_dir.glob("ckpt_*.npz")):
        if ckpt.with_suffix(".json").exists():
            trees, manifest = load_checkpoint(ckpt, {"params": stacked})
            out.append((int(manifest["step"]), trees["params"]))
    return out


def load_stacked_params(template: Any, path: str | Path) -> Any:
    """The stacked learner parameters of ``params.npz`` (leading axis = run), checked against
    ``template`` (one run's parameter tree, e.g. ``prog.init_params(key)``)."""
    return load_params_like(template, path, stacked=True)
