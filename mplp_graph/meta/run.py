"""End-to-end runs from an :class:`ExperimentConfig`: build, initialise statistics, meta-train
(resumable), evaluate against Adam, write JSON and plots."""

from __future__ import annotations

import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import yaml

from mplp_graph.runtime.program import Program, compile_graph
from mplp_graph.meta.checkpoint import (
    atomic_write_bytes,
    atomic_write_json,
    latest_checkpoint,
    load_checkpoint,
)
from mplp_graph.meta.config import ExperimentConfig, load_experiment_config
from mplp_graph.meta.evaluate import evaluate_mplp, evaluate_optax
from mplp_graph.meta.objectives import MetaLoss
from mplp_graph.meta.stats import init_statistics
from mplp_graph.meta.train import FAST_COMPILE, MetaStep, adam, make_pool, meta_train, trainable_mask
from mplp_graph.runtime.state import agent_params
from mplp_graph.tasks.sinusoid import SinusoidFamily
from mplp_graph.templates.feedforward import feedforward
from mplp_graph.templates.mplp import mplp_feedforward


@dataclass(frozen=True)
class Setup:
    config: ExperimentConfig
    prog: Program  # the net trained by the learned protocol
    fwd: Program  # the same net, forward only (baselines, evaluation)
    family: Any  # SinusoidFamily | MnistFamily
    data: Any = None  # the family's arrays (MNIST: meta_splits), None for the sinusoid

    def sample(self, key: Any) -> dict[str, Any]:
        return self.family.sample(key) if self.data is None else self.family.sample(key, self.data)


def load_mnist_splits(config: ExperimentConfig) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(prepared, meta)``: the preprocessed data set (train/test, for evaluation) and the
    meta-training arrays (train minus validation, validation) as device arrays."""
    from mplp_graph.tasks.mnist import load_mnist, meta_splits, preprocess

    t = config.task
    prepared = preprocess(load_mnist(), t.image_size)
    return prepared, {k: jnp.asarray(v) for k, v in meta_splits(prepared, t.validation).items()}


def build(config: ExperimentConfig, *, data: Any = None) -> Setup:
    """Programs and task family for ``config``. MNIST data are loaded unless ``data`` (the
    arrays of :func:`mplp_graph.tasks.mnist.meta_splits`) is given."""
    g = config.graph
    spec = mplp_feedforward(
        g.sizes, g.activation, g.loss, learner=g.learner, msg=g.msg, hidden=g.hidden, sharing=g.sharing,
        out_scale_init=g.out_scale_init, matmul=g.matmul, first_layer=g.first_layer, chunk_rows=g.chunk_rows,
    )
    fwd = feedforward(g.sizes, "relu" if g.activation == "step" else g.activation, g.loss, protocol="none")
    t = config.task
    if t.family == "mnist":
        from mplp_graph.tasks.mnist import MnistFamily

        if data is None:
            data = load_mnist_splits(config)[1]
        family = MnistFamily(inner_steps=t.inner_steps, batch=t.batch, cv_points=t.cv_points)
    else:
        family = SinusoidFamily(inner_steps=t.inner_steps, batch=t.batch, cv_points=t.cv_points)
    return Setup(config, compile_graph(spec), compile_graph(fwd), family, data)


def initial_params(setup: Setup) -> Any:
    """Learner parameters with standardizer statistics from the init rollout (notes 3.3)."""
    m = setup.config.meta
    key = jax.random.PRNGKey(m.seed)
    params = setup.prog.init_params(key)

    def draw(k, data):
        kp, kt = jax.random.split(k)
        task = setup.family.sample(kt) if data is None else setup.family.sample(kt, data)
        return agent_params(setup.prog.spec, setup.prog.init(kp, 1)), task["xt"], task["yt"]

    # one compiled program per draw (op by op, each small op compiled its own: ~2 s); the data
    # are an argument, not constants baked into it
    draw = jax.jit(draw)
    if m.stats_rounds:
        params = init_statistics(
            setup.prog, params, lambda k: draw(k, setup.data), jax.random.fold_in(key, 1), m.stats_rounds, m.stats_mix
        )
    return params


def optimizer(config: ExperimentConfig):
    m = config.meta
    return adam(m.lr, m.lr_schedule, m.steps, m.lr_final)


def train(config: ExperimentConfig, run_dir: str | Path, *, resume: bool = True, progress: bool = True) -> tuple[Any, list]:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run_dir / "config.yaml", yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False).encode())
    setup = build(config)
    m = config.meta
    params = initial_params(setup)
    step_fn = meta_step(setup)
    pool = make_pool(setup.prog, jax.random.PRNGKey(m.seed + 1), m.pool)
    if step_fn.mesh is not None:
        from mplp_graph.meta.shard import replicate

        params, pool = replicate(step_fn.mesh, (params, pool))
    return meta_train(
        step_fn, params, trainable_mask(params), pool, jax.random.PRNGKey(m.seed + 2), m.steps, run_dir,
        checkpoint_every=m.checkpoint_every, resume=resume, progress=progress,
        meta={"experiment": config.experiment, "config": config.model_dump(mode="json")}, data=setup.data,
    )


def meta_step(setup: Setup) -> MetaStep:
    m = setup.config.meta
    mesh = None
    if m.shard_tasks:
        from mplp_graph.meta.shard import task_mesh

        mesh = task_mesh()
    return MetaStep(
        setup.prog, setup.family.sample, MetaLoss(m.hint_weight, m.cv_weight, m.remat, m.unroll), m.outer_batch, optimizer(setup.config), mesh,
        FAST_COMPILE if m.fast_compile else (), m.outer_batch_mode,
    )


def load_trained(run_dir: str | Path) -> tuple[Setup, Any, int]:
    run_dir = Path(run_dir)
    config = load_experiment_config(run_dir / "config.yaml")
    setup = build(config)
    params = setup.prog.init_params(jax.random.PRNGKey(0))
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint; run training first")
    # the parameters alone: the optimizer state stored beside them is not needed to evaluate
    trees, manifest = load_checkpoint(ckpt, {"params": params}, graph=setup.prog.spec)
    return setup, trees["params"], int(manifest["step"])


def save_params_file(path: str | Path, params: Any) -> None:
    """Learner parameters alone (no optimizer state), as an ``.npz`` written atomically."""
    import io

    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    buf = io.BytesIO()
    np.savez(buf, **{jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves})
    atomic_write_bytes(Path(path), buf.getvalue())


def load_params_file(setup: Setup, path: str | Path) -> Any:
    """Learner parameters saved by :func:`save_params_file`, checked against the graph."""
    return load_params_like(setup.prog.init_params(jax.random.PRNGKey(0)), path)


def load_params_like(template: Any, path: str | Path, *, stacked: bool = False) -> Any:
    """The tree of ``template``'s structure saved in ``path`` by :func:`save_params_file`; each
    array must have its leaf's shape, or ``(runs, *shape)`` when ``stacked`` (a sweep's runs)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    with np.load(path, allow_pickle=False) as data:
        out = []
        for p, v in leaves:
            key = jax.tree_util.keystr(p)
            if key not in data or (data[key].shape[1:] if stacked else data[key].shape) != v.shape:
                want = f"(runs, *{v.shape})" if stacked else str(v.shape)
                raise ValueError(f"{path}: no array {key} of shape {want}; the file was saved for another graph")
            out.append(jnp.asarray(data[key]))
    return jax.tree_util.tree_unflatten(treedef, out)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def evaluate(setup: Setup, params: Any) -> dict[str, Any]:
    e = setup.config.eval
    key = jax.random.PRNGKey(e.seed)
    t0 = time.perf_counter()
    mplp = jax.tree_util.tree_map(np.asarray, evaluate_mplp(setup.prog, setup.fwd, params, setup.family, key, e.runs))
    adam_r = jax.tree_util.tree_map(np.asarray, evaluate_optax(setup.fwd, optax.adam(e.adam_lr), setup.family, key, e.runs))
    return {"mplp": mplp, "adam": adam_r, "eval_s": time.perf_counter() - t0}


def plot_sinusoid(results: dict[str, Any], path: Path) -> None:
    """A figure like the paper's Fig. 2: an example fit and mean +- std loss curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    m, a = results["mplp"], results["adam"]
    ax = axes[0]
    ax.plot(m["x"][0], m["y"][0], "k--", label="target")
    ax.plot(m["x"][0], m["pred"][0], label="MPLP after k steps")
    ax.plot(a["x"][0], a["pred"][0], label="Adam(0.01) after k steps")
    ax.set_title("example fit (run 0)")
    ax.legend()
    for ax, key, title in ((axes[1], "eval", "eval L2 (100 points on the domain)"), (axes[2], "train", "train L2 (points seen so far)")):
        for name, r in (("MPLP", m), ("Adam(0.01)", a)):
            mu, sd = r[key].mean(0), r[key].std(0)
            steps = np.arange(len(mu)) + (0 if key == "eval" else 1)
            ax.plot(steps, mu, marker="o", label=name)
            ax.fill_between(steps, np.maximum(mu - sd, 1e-6), mu + sd, alpha=0.2)
        ax.set_yscale("log")
        ax.set_xlabel("inner step")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(setup: Setup, results: dict[str, Any], out_dir: Path, *, command: str, meta_steps: int, train_s: float | None) -> dict:
    m, a = results["mplp"], results["adam"]
    k = setup.family.inner_steps
    doc = {
        "experiment": setup.config.experiment,
        "command": command,
        "git_commit": git_commit(),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {jax.devices()[0].platform}, {jax.local_device_count()} device(s), jax {jax.__version__}",
        "runs": int(m["eval"].shape[0]),
        "wall_s": {"meta_train": train_s, "eval": results["eval_s"]},
        "metrics": {
            f"mplp_eval_l2_step{k}": float(m["eval"][:, k].mean()),
            f"mplp_eval_l2_step{k}_std": float(m["eval"][:, k].std()),
            f"adam_eval_l2_step{k}": float(a["eval"][:, k].mean()),
            f"adam_eval_l2_step{k}_std": float(a["eval"][:, k].std()),
            "meta_steps": meta_steps,
        },
        "curves": {
            "mplp_eval_mean": m["eval"].mean(0).tolist(),
            "mplp_eval_std": m["eval"].std(0).tolist(),
            "mplp_train_mean": m["train"].mean(0).tolist(),
            "adam_eval_mean": a["eval"].mean(0).tolist(),
            "adam_eval_std": a["eval"].std(0).tolist(),
            "adam_train_mean": a["train"].mean(0).tolist(),
        },
        "config": setup.config.model_dump(mode="json"),
    }
    atomic_write_json(out_dir / "results.json", doc)
    plot_sinusoid(results, out_dir / "sinusoid.png")
    return doc
