"""Meta-training: the whole meta-step (outer batch vmapped, inner steps scanned, meta-gradient,
per-leaf normalization, Adam) is one jitted function (reference-notes 5.2, 8)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax

from mplp_graph.compile.pipeline import Program
from mplp_graph.meta.checkpoint import (
    atomic_write_bytes,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
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
        return jnp.zeros_like(x) if frozen else jnp.ones_like(x)

    return jax.tree_util.tree_map_with_path(leaf, params)


def normalize_per_leaf(grads: Any) -> Any:
    """``g / (||g||_2 + 1e-8)`` for each leaf (paper: "normalize the gradients for each optimizer parameter")."""
    return jax.tree_util.tree_map(lambda g: g / (jnp.linalg.norm(g.ravel()) + 1e-8), grads)


def make_pool(prog: Program, key: Any, size: int) -> Any:
    """``size`` random priors (W ~ N(0, 0.05), b = 0), stacked: a pytree with leading axis P."""
    return jax.vmap(lambda k: agent_params(prog.spec, prog.init(k, 1)))(jax.random.split(key, size))


@dataclass(frozen=True)
class MetaStep:
    prog: Program
    sample_task: Callable[[Any], dict[str, Any]]
    objective: MetaLoss
    outer_batch: int
    optimizer: optax.GradientTransformation
    mesh: Any = None  # a jax.sharding.Mesh with a "tasks" axis: the outer batch is split over its devices

    def batch_loss(self, params: Any, priors: Any, tasks: dict[str, Any]) -> tuple[Any, dict]:
        losses, parts = jax.vmap(lambda pr, t: task_loss(self.prog, self.objective, params, pr, t))(priors, tasks)
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
        grads = normalize_per_leaf(jax.tree_util.tree_map(jnp.multiply, grads, mask))
        finite = jnp.isfinite(loss) & jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)])
        )
        updates, new_opt = self.optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        # a non-finite step is not applied (the caller stops and keeps the last good checkpoint)
        new_params = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new_params, params)
        new_opt = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new_opt, opt_state)
        return new_params, new_opt, {"loss": loss, **parts, "finite": finite}


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
) -> tuple[Any, list[dict[str, Any]]]:
    """Run ``steps`` meta-steps, writing ``metrics.jsonl`` and checkpoints to ``run_dir``.

    The key of step ``s`` is ``fold_in(key, s)``, so a resumed run draws the same tasks and
    priors as an uninterrupted one."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    opt_state = step_fn.optimizer.init(params)
    start = 0
    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        trees, manifest = load_checkpoint(ckpt, {"params": params, "opt_state": opt_state})
        params, opt_state, start = trees["params"], trees["opt_state"], int(manifest["step"])
    metrics_path = run_dir / "metrics.jsonl"
    history: list[dict[str, Any]] = []
    if metrics_path.exists():
        history = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
        history = [h for h in history if h["step"] <= start]
    jstep = jax.jit(step_fn.__call__)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=start, desc="meta-train", mininterval=2.0)
    t_last = time.perf_counter()
    for s in range(start, steps):
        params, opt_state, m = jstep(params, opt_state, mask, pool, jax.random.fold_in(key, s), data)
        m = {k: float(v) for k, v in m.items()}
        now = time.perf_counter()
        row = {"step": s + 1, "loss": m["loss"], "hint": m["hint"], "cv": m["cv"], "step_s": now - t_last}
        t_last = now
        history.append(row)
        if not m["finite"]:
            raise FloatingPointError(f"non-finite meta-loss or meta-gradient at step {s + 1}; last good checkpoint kept in {run_dir}")
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{m['loss']:.4f}", cv=f"{m['cv']:.4f}")
        if (s + 1) % checkpoint_every == 0 or s + 1 == steps:
            atomic_write_bytes(metrics_path, "".join(json.dumps(h) + "\n" for h in history).encode())
            save_checkpoint(run_dir, s + 1, {"params": params, "opt_state": opt_state}, meta or {})
    if bar is not None:
        bar.close()
    return params, history
