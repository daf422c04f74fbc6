"""Meta-train MPLP on sinusoid regression and evaluate it against Adam (paper 4.1.1, Fig. 2).

    python experiments/sinusoid/run.py --run-dir runs/sinusoid            # train (resumable) + eval
    python experiments/sinusoid/run.py --run-dir runs/sinusoid --eval-only
    python experiments/sinusoid/run.py --from-sweep runs/sin_sweep         # pick + evaluate a sweep run

``--from-sweep`` takes a run directory of ``experiments/sweep.py`` (K runs trained together),
evaluates every run on validation tasks (eval seed + 1), picks the best by eval L2 after the last
step, and evaluates that one on the evaluation tasks (eval seed), so the selection never sees the
reported numbers. Writes experiments/sinusoid/results.json, eval.png and learner.npz.
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
from mplp_graph.errors import MplpGraphError
from mplp_graph.meta.checkpoint import atomic_write_json, save_params_file
from mplp_graph.meta.config import apply_overrides, load_experiment
from mplp_graph.meta.evaluate import evaluate_mplp
from mplp_graph.meta.run import build, evaluate, load_setup, load_trained, train, write_results
from mplp_graph.meta.sweep import load_stacked_params, unstack

HERE = Path(__file__).resolve().parent


def from_sweep(sweep_dir: Path, out: Path, command: str) -> dict:
    setup = load_setup(sweep_dir / "config.yaml")
    config = setup.config
    info = json.loads((sweep_dir / "sweep.json").read_text())
    stacked = load_stacked_params(setup.prog.init_params(jax.random.PRNGKey(0)), sweep_dir / "params.npz")
    k = setup.family.inner_steps
    val_key = jax.random.PRNGKey(config.eval.seed + 1)  # validation tasks: not the reported ones
    val = []
    for i in range(len(info["seeds"])):
        r = evaluate_mplp(setup.prog, setup.fwd, unstack(stacked, i), setup.family, val_key, config.eval.runs)
        val.append(float(np.asarray(r["loss"])[:, k].mean()))
    best = int(np.argmin(val))
    params = unstack(stacked, best)
    results = evaluate(setup, params)
    doc = write_results(setup, results, out, command=command, meta_steps=int(info["steps_done"]), train_s=info.get("train_wall_s"))
    doc["sweep"] = {
        "runs": [{"seed": s, "lr": config.meta.lr * m, f"val_eval_l2_step{k}": v} for s, m, v in zip(info["seeds"], info["lr_mults"], val)],
        "selected_run": best,
        "selection": f"lowest mean eval L2 after step {k} on {config.eval.runs} validation tasks (eval seed + 1)",
        "trained_on": info.get("device"),
        "train_note": info.get("train_note"),
        "train_commands": info.get("commands", [info.get("command")]),
    }
    doc["machine"] = f"evaluation: {doc['machine']}; meta-training: {info.get('device')} (sweep.train_note)"
    atomic_write_json(out / "results.json", doc)
    save_params_file(out / "learner.npz", params)
    if (sweep_dir / "metrics.jsonl").exists():
        plot_sweep(sweep_dir / "metrics.jsonl", doc["sweep"]["runs"], best, out / "sweep_meta_loss.png")
    return doc


def plot_sweep(metrics: Path, runs: list, best: int, path: Path) -> None:
    """Meta-loss of every run of the sweep (smoothed), the selected one drawn thick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])  # (logged steps, runs)
    width = max(1, min(10, len(rows)))  # running mean over up to 10 logged points
    kernel = np.ones(width) / width
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, r in enumerate(runs):
        smooth = np.convolve(loss[:, i], kernel, mode="valid")
        ax.plot(steps[width - 1 :], smooth, lw=2.5 if i == best else 0.8, label=f"seed {r['seed']}, lr {r['lr']:.0e}" if i == best else None)
    ax.set_yscale("log")
    ax.set_xlabel("meta-step")
    ax.set_ylabel("meta-loss (0.7 hint + 0.3 CV), running mean")
    ax.set_title(f"{len(runs)} runs trained together; selected run thick")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(HERE / "config.yaml"))
    ap.add_argument("--run-dir", default="runs/sinusoid")
    ap.add_argument("--steps", type=int, help="override meta.steps")
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--from-sweep", type=Path, help="a run directory of experiments/sweep.py")
    ap.add_argument("--out", default=str(HERE))
    args = ap.parse_args(argv)
    enable_compilation_cache()
    command = "python " + " ".join([str(Path(sys.argv[0]))] + (argv if argv is not None else sys.argv[1:]))
    if args.from_sweep is not None:
        doc = from_sweep(args.from_sweep, Path(args.out), command)
        print(json.dumps(doc["sweep"]["runs"], indent=0))
        print({k: round(v, 5) if isinstance(v, float) else v for k, v in doc["metrics"].items()})
        return 0
    train_s = None
    if not args.eval_only:
        try:  # located errors: file:line:col
            config, locate = load_experiment(args.config)
            config = apply_overrides(config, {"meta.steps": args.steps} if args.steps is not None else {}, "--steps")
            setup = build(config, base_dir=Path(args.config).resolve().parent, locate=locate)
        except MplpGraphError as e:
            ap.error(str(e))
        t0 = time.perf_counter()
        train(setup, args.run_dir)
        train_s = time.perf_counter() - t0
    setup, params, step = load_trained(args.run_dir)
    results = evaluate(setup, params)
    doc = write_results(setup, results, Path(args.out), command=command, meta_steps=step, train_s=train_s)
    print({k: round(v, 5) if isinstance(v, float) else v for k, v in doc["metrics"].items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
