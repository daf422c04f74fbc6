"""Several meta-training runs as one program: helpers around
:func:`meta_train(..., runs=K) <mplp_graph.meta.train.meta_train>`.

Runs differ by seed (learner initialisation and standardizer statistics, prior pool, task
stream) and by a learning-rate multiplier; they share the graph, the task family and the
optimizer's form. ``run_dir`` then holds ``metrics.jsonl`` (per-run lists), checkpoints and
``params.npz``, the stacked learner parameters (leading axis = run) of the last checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from mplp_graph.meta.checkpoint import load_checkpoint, load_params_like


def stack(trees: Sequence[Any]) -> Any:
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree: Any, i: int) -> Any:
    return jax.tree_util.tree_map(lambda a: a[i], tree)


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
