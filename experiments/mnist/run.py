"""MNIST (paper 4.2, Table 1, Fig. 4): evaluate our own meta-trained MPLP against Adam and SGD,
with transfers to a step activation and to a (784,100,10) net on 28x28 images.

    python experiments/sweep.py --config experiments/mnist/config.yaml --run-dir runs/mnist \\
        --seeds 0 1 2 3                                            # meta-train (resumable)
    python experiments/mnist/run.py --from-sweep runs/mnist        # select on validation, evaluate

Selection: every run of the sweep is evaluated with the protocol on the *validation* split (the
training images held out from meta-training: inner batches from the meta-training split,
accuracy on validation images), and the best accuracy after the last step is kept; with ``--every-checkpoint`` every checkpoint kept in the
sweep directory (``experiments/sweep.py --keep``) competes too, which is early stopping on
validation. The test set
is used only for the reported numbers (docs/mplp.md, "The evaluation protocol": 100 runs from
fresh random priors, 20 steps of batch 8, accuracy on the next 100 test images after each step).

Several sweeps (configurations) can be given; each one's selection result is recorded in
``results.json`` under ``configs``, and the best configuration by validation is evaluated.
Writes experiments/mnist/results.json, mnist.png, training.png and learner.npz.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from mplp_graph.cache import enable_compilation_cache
from mplp_graph.meta.checkpoint import atomic_write_json, save_params_file
from mplp_graph.meta.eval_mnist import plot_accuracy, table1
from mplp_graph.meta.evaluate import evaluate_mplp
from mplp_graph.meta.run import git_commit, load_setup
from mplp_graph.meta.sweep import load_stacked_params, sweep_checkpoints, unstack

HERE = Path(__file__).resolve().parent
PAPER = {"mplp": (48.95, 6.35), "step": (43.07, 7.31), "784": (37.60, 9.23), "adam": (39.46, 9.57), "sgd": (14.66, 5.76)}


def candidates(sweep_dir: Path, template, every_checkpoint: bool) -> list[tuple[int | None, object]]:
    """``(step, stacked params)`` to choose from: the sweep's last ``params.npz`` (step None), or
    with ``every_checkpoint`` the learners of every checkpoint kept in ``sweep_dir`` (early
    stopping on validation: a run that got worse later is taken where it was best; the newest
    checkpoint is params.npz)."""
    found = sweep_checkpoints(sweep_dir, template) if every_checkpoint else []
    return found or [(None, load_stacked_params(template, sweep_dir / "params.npz"))]


def select(sweep_dir: Path, runs: int, key, every_checkpoint: bool = False) -> dict:
    """Validation accuracy@20 of every run of a sweep (and of every kept checkpoint with
    ``every_checkpoint``); returns the record and the best params."""
    setup = load_setup(sweep_dir / "config.yaml")  # the family's data: meta-training, validation and test splits
    config = setup.config
    info = json.loads((sweep_dir / "sweep.json").read_text())
    rows, best, best_params = [], None, None
    for step, stacked in candidates(sweep_dir, setup.prog.init_params(jax.random.PRNGKey(0)), every_checkpoint):
        for i, (seed, mult) in enumerate(zip(info["seeds"], info["lr_mults"])):
            params = unstack(stacked, i)
            # the protocol on the validation split: inner batches from the meta-training split, accuracy on validation images
            r = evaluate_mplp(setup.prog, setup.fwd, params, setup.family, key, runs, data=setup.data, split="validation")
            acc = float(r["accuracy"][:, -1].mean())
            rows.append({"run": i, "seed": seed, "lr": config.meta.lr * mult, "step": step if step is not None else info.get("steps_done"), "val_acc20": acc})
            print(json.dumps({"sweep": str(sweep_dir), **rows[-1]}), flush=True)
            if best is None or acc > rows[best]["val_acc20"]:
                best, best_params = len(rows) - 1, params
    record = {
        "sweep": str(sweep_dir), "config": config.to_json(), "steps_done": info.get("steps_done"),
        "train_wall_s": info.get("train_wall_s"), "trained_on": info.get("device"), "train_note": info.get("train_note"),
        "commands": info.get("commands", [info.get("command")]),
        "runs": rows, "selected_run": rows[best]["run"], "selected_step": rows[best]["step"],
        "val_acc20": rows[best]["val_acc20"],
    }
    return {"record": record, "params": best_params, "config": config, "setup": setup}


def plot_training(records: list[dict], path: Path) -> None:
    """Left: the CV part of the meta-loss of every run of every sweep (running mean over 8 logged
    points). Right: validation accuracy@20 of every evaluated checkpoint; the selection starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.2))
    for rec in records:
        metrics = Path(rec["sweep"]) / "metrics.jsonl"
        if not metrics.exists():
            continue
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        steps = np.array([r["step"] for r in rows])
        cv = np.array([r["cv"] for r in rows])
        width = max(1, min(8, len(rows)))
        for i in range(cv.shape[1]):
            smooth = np.convolve(cv[:, i], np.ones(width) / width, mode="valid")
            seed = rec["runs"][i]["seed"] if i < len(rec["runs"]) else i
            ax0.plot(steps[width - 1 :], smooth, lw=1.2, label=f"{Path(rec['sweep']).name} seed {seed}")
        by_run: dict[int, list] = {}
        for r in rec["runs"]:
            by_run.setdefault(r["run"], []).append((r["step"], r["val_acc20"]))
        for run, pts in by_run.items():
            pts.sort()
            ax1.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, label=f"{Path(rec['sweep']).name} run {run}")
    best = max(records, key=lambda r: r["val_acc20"])
    ax1.plot([best["selected_step"]], [best["val_acc20"]], "k*", ms=14, label="selected")
    ax0.axhline(np.log(10) / 10, color="gray", ls=":", lw=1)  # chance: CE/10 of a uniform guess
    ax0.set(xlabel="meta-step", ylabel="CV loss (CE / 10), running mean", title="meta-training")
    ax1.set(xlabel="meta-step", ylabel="validation accuracy@20 (%)", title="selection on the validation split")
    ax0.legend(fontsize=7)
    ax1.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate_all(chosen: dict, runs: int, runs_784: int, key, skip_784: bool) -> tuple[dict, dict, dict]:
    return table1(chosen["setup"], chosen["params"], key, runs, runs_784=0 if skip_784 else runs_784)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from-sweep", type=Path, nargs="+", required=True, help="run directories of experiments/sweep.py")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--val-runs", type=int, default=50)
    ap.add_argument("--runs-784", type=int, default=100)
    ap.add_argument("--skip-784", action="store_true")
    ap.add_argument("--select-only", action="store_true", help="print the validation results and stop")
    ap.add_argument("--every-checkpoint", action="store_true", help="also choose among the checkpoints kept in each sweep directory (early stopping on validation)")
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args(argv)
    enable_compilation_cache()
    key = jax.random.PRNGKey(args.seed)
    val_key = jax.random.PRNGKey(args.seed + 1)
    chosen, records = None, []
    for sweep in args.from_sweep:
        c = select(sweep, args.val_runs, val_key, args.every_checkpoint)
        records.append(c["record"])
        print(json.dumps({k: c["record"][k] for k in ("sweep", "steps_done", "selected_run", "selected_step", "val_acc20")}), flush=True)
        if chosen is None or c["record"]["val_acc20"] > chosen["record"]["val_acc20"]:
            chosen = c
    args.out.mkdir(parents=True, exist_ok=True)
    plot_training(records, args.out / "training.png")
    if args.select_only:
        return 0
    metrics, curves, wall = evaluate_all(chosen, args.runs, args.runs_784, key, args.skip_784)
    doc = {
        "experiment": "mnist",
        "command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
        "git_commit": git_commit(),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"evaluation: {jax.devices()[0].device_kind}, jax {jax.__version__}",
        "runs": args.runs,
        "selected": {k: chosen["record"][k] for k in ("sweep", "selected_run", "selected_step", "val_acc20")},
        "metrics": metrics,
        "paper_table1": {k: {"acc20": v[0], "std": v[1]} for k, v in PAPER.items()},
        "configs": records,
        "wall_s": wall,
        "curves": curves,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "results.json", doc)
    save_params_file(args.out / "learner.npz", chosen["params"])
    plot_accuracy(curves, args.out / "mnist.png")
    print(f"{'':28s} {'ours':>14s} {'paper':>14s}")
    for name in ("mplp", "step", "784", "adam", "sgd"):
        if f"{name}_acc20" in metrics:
            print(f"{name:28s} {metrics[f'{name}_acc20']:6.2f} +- {metrics[f'{name}_acc20_std']:5.2f} {PAPER[name][0]:6.2f} +- {PAPER[name][1]:5.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
