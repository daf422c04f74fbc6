"""Evaluate the authors' published learners in the engine (docs/mplp.md, "The evaluation protocol"
and "The published learners").

    python experiments/reference/run.py                 # everything, 100 runs (784 transfer: 10)
    python experiments/reference/run.py --runs 20 --only sinusoid maml

Writes experiments/reference/results.json and curves.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax

import mplp_graph as mg
from mplp_graph.cache import enable_compilation_cache
from mplp_graph.meta.checkpoint import atomic_write_json
from mplp_graph.meta.evaluate import evaluate_mplp, evaluate_optax
from mplp_graph.meta.run import git_commit
from mplp_graph.reference import load_reference_learner, load_reference_prior
from mplp_graph.tasks.sinusoid import SinusoidFamily
from mplp_graph.templates.mplp import mplp_feedforward

HERE = Path(__file__).resolve().parent
# the authors' mplp/savedmodels/*.npy (docs/mplp.md, "The authors' code"); --weights DIR elsewhere
WEIGHTS = HERE.parents[1].parent / "shared" / "reference-weights"
PARTS = ("sinusoid", "maml", "mnist", "mnist784")


def sinusoid(runs, key, metrics, curves, weights):
    prog = mg.compile_graph(mplp_feedforward((1, 20, 20, 1)))
    fwd = mg.compile_graph(mg.feedforward((1, 20, 20, 1), "relu", "l2", protocol="none"))
    params = load_reference_learner(weights / "sinusoid_weights_00035869.npy", prog)
    fam = SinusoidFamily()
    m = evaluate_mplp(prog, fwd, params, fam, key, runs)
    a = evaluate_optax(fwd, optax.adam(0.01), fam, key, runs)
    for name, r in (("sinusoid_mplp", m), ("sinusoid_adam", a)):
        ev = np.asarray(r["loss"])  # on the 100-point grid, before any update and after each
        metrics[f"{name}_eval_l2_step5"] = float(ev[:, 5].mean())
        metrics[f"{name}_eval_l2_step5_std"] = float(ev[:, 5].std())
        curves[f"{name}_eval_mean"] = ev.mean(0).tolist()
    curves["sinusoid_mplp_train_mean"] = np.asarray(m["seen_loss"])[:, 1:].mean(0).tolist()  # on the points seen, after each update


def maml(runs, key, metrics, curves, weights):
    prog = mg.compile_graph(mplp_feedforward((1, 20, 20, 1), learner="mlp"))
    fwd = mg.compile_graph(mg.feedforward((1, 20, 20, 1), "relu", "l2", protocol="none"))
    params = load_reference_learner(weights / "maml_sin_net_weights_00258202.npy", prog)
    prior = load_reference_prior(weights / "maml_sin_prior_weights_00258202.npy", prog)
    fam = SinusoidFamily(inner_steps=2)
    learned = np.asarray(evaluate_mplp(prog, fwd, params, fam, key, runs, prior=prior)["loss"])
    random = np.asarray(evaluate_mplp(prog, fwd, params, fam, key, runs)["loss"])
    for s in range(3):
        metrics[f"maml_eval_l2_step{s}"] = float(learned[:, s].mean())
        metrics[f"maml_eval_l2_step{s}_std"] = float(learned[:, s].std())
    metrics["maml_random_prior_eval_l2_step2"] = float(random[:, 2].mean())
    metrics["maml_random_prior_eval_l2_step2_std"] = float(random[:, 2].std())
    curves["maml_eval_mean"] = learned.mean(0).tolist()
    curves["maml_random_prior_eval_mean"] = random.mean(0).tolist()


def _mnist_learner(sizes, activation, weights):
    prog = mg.compile_graph(mplp_feedforward(sizes, activation, "ce", msg=4, hidden=7, sharing="layers"))
    fwd = mg.compile_graph(mg.feedforward(sizes, activation, "ce", protocol="none"))
    return prog, fwd, load_reference_learner(weights / "mnist_weights_00005000.npy", prog)


def _acc(metrics, curves, name, acc):
    metrics[f"{name}_acc20"] = float(acc[:, -1].mean())
    metrics[f"{name}_acc20_std"] = float(acc[:, -1].std())
    curves[f"{name}_acc_mean"] = acc.mean(0).tolist()


def _mnist_acc(prog, fwd, params, family, data, key, runs, chunk=None):
    """Test accuracy after each of the 20 steps, (runs, 20): the protocol of paper section 4.2
    (inner batches from the whole training set, the next 100 test images after each step)."""
    return evaluate_mplp(prog, fwd, params, family, key, runs, data=data, chunk=chunk)["accuracy"][:, 1:]  # column 0: before any update


def mnist(runs, key, metrics, curves, weights):
    from mplp_graph.tasks.mnist import MnistFamily

    fam = MnistFamily(inner_steps=20, batch=8)  # 12x12
    data = fam.load()
    prog, fwd, params = _mnist_learner((144, 50, 10), "sigmoid", weights)
    t0 = time.perf_counter()
    _acc(metrics, curves, "mnist_mplp", _mnist_acc(prog, fwd, params, fam, data, key, runs))
    metrics["mnist_mplp_eval_wall_s"] = time.perf_counter() - t0  # compile included; reference code: ~107 s
    for name, opt in (("mnist_adam", optax.adam(0.01)), ("mnist_sgd", optax.sgd(0.1))):
        _acc(metrics, curves, name, evaluate_optax(fwd, opt, fam, key, runs, data=data)["accuracy"][:, 1:])
    prog, fwd, params = _mnist_learner((144, 50, 10), "step", weights)
    _acc(metrics, curves, "mnist_step", _mnist_acc(prog, fwd, params, fam, data, key, runs))


def mnist784(runs, key, metrics, curves, weights):
    from mplp_graph.tasks.mnist import MnistFamily

    fam = MnistFamily(inner_steps=20, batch=8, image_size=28)  # 28x28 with its own statistics
    prog, fwd, params = _mnist_learner((784, 100, 10), "sigmoid", weights)
    _acc(metrics, curves, "mnist_784", _mnist_acc(prog, fwd, params, fam, fam.load(), key, runs, chunk=10))
    metrics["mnist_784_runs"] = runs


def plot(curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name in ("sinusoid_mplp_eval_mean", "sinusoid_adam_eval_mean"):
        if name in curves:
            axes[0].plot(curves[name], marker="o", label=name.replace("_eval_mean", ""))
    for name in ("maml_eval_mean", "maml_random_prior_eval_mean"):
        if name in curves:
            axes[1].plot(curves[name], marker="o", label=name.replace("_eval_mean", ""))
    for name in [k for k in curves if k.endswith("_acc_mean")]:
        axes[2].plot(np.arange(1, len(curves[name]) + 1), curves[name], marker=".", label=name.replace("_acc_mean", ""))
    for ax, title, log in zip(axes, ("sinusoid 5x10: eval L2", "MAML+MPLP 2x10: eval L2", "MNIST: test accuracy (%)"), (True, True, False)):
        ax.set_title(title)
        ax.set_xlabel("inner step")
        if log:
            ax.set_yscale("log")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--runs-784", type=int, default=10, help="runs for the slow (784,100,10) transfer (reference: 10)")
    ap.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE))
    ap.add_argument("--weights", type=Path, default=WEIGHTS, help="folder with the authors' published .npy learners (default: %(default)s)")
    args = ap.parse_args(argv)
    enable_compilation_cache()
    key = jax.random.PRNGKey(args.seed)
    out = Path(args.out)
    previous = {}
    if (out / "results.json").exists():  # parts run separately accumulate in one file
        import json

        previous = json.loads((out / "results.json").read_text())
    metrics, curves, wall = previous.get("metrics", {}), previous.get("curves", {}), previous.get("wall_s", {})
    for part in args.only:
        t0 = time.perf_counter()
        runs = args.runs_784 if part == "mnist784" else args.runs
        globals()[part](runs, key, metrics, curves, args.weights)
        wall[part] = time.perf_counter() - t0
        print(part, {k: round(v, 5) for k, v in metrics.items() if k.startswith(part[:5])}, f"{wall[part]:.0f} s", flush=True)
    doc = {
        "experiment": "reference",
        "command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
        "git_commit": git_commit(),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"2-core CPU, jax {jax.__version__}",
        "runs": args.runs,
        "parts": sorted(set(previous.get("parts", [])) | set(args.only)),
        "runs_784": metrics.get("mnist_784_runs", args.runs_784),
        "wall_s": wall,
        "metrics": metrics,
        "curves": curves,
        "reference_numpy_reimplementation": {
            "sinusoid_mplp_eval_l2": [0.0232, 0.0100, 0.0045, 0.0023, 0.0014, 0.0011],
            "maml_eval_l2": [0.0250, 0.0537, 0.0012],
            "maml_random_prior_eval_l2": [0.030, 0.034, 0.265],
            "mnist_acc20": {"mplp": 48.03, "sgd": 15.24, "adam": 38.05, "step": 41.46, "784 (10 runs)": 37.90},
            "source": "an independent NumPy re-implementation of the inner loop of the authors' code "
            "(github.com/google-research/self-organising-systems, mplp/, commit 3d5547c), run with their "
            "published weights, 100 runs (the 784 transfer: 10), seed 0; docs/experiments.md, 'The published learners'",
        },
    }
    atomic_write_json(out / "results.json", doc)
    plot(curves, out / "curves.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
