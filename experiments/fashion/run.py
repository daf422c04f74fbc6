"""Tuned baselines on MNIST and Fashion-MNIST, and the MNIST-trained learner on both.

    python experiments/fashion/run.py run mnist      # mplp-graph eval of mnist.yaml into experiments/fashion/mnist/
    python experiments/fashion/run.py run fashion    # ... of config.yaml (task.dataset: fashion) into experiments/fashion/fashion/
    python experiments/fashion/run.py collect        # experiments/fashion/results.json from the two parts

``run NAME`` calls ``mplp-graph eval --config CONFIG --learner experiments/mnist/learner.npz
--out experiments/fashion/NAME``: with ``eval.tune`` each optimizer's grid of rates is run on the
validation split (100 runs each, the test set unseen), the best rate per optimizer (accuracy
after the last inner step) is kept, and the learner and the kept rates run 100 times on the test
split (docs/experiments.md, "Tuned baselines and Fashion-MNIST"). ``collect`` gathers each
part's ``results.json`` (command, commit, tuning grid) into ``results.json`` here: per data set,
the test accuracy after 20 steps of MPLP and of the tuned Adam and SGD (mean and std over the
runs), the rates chosen and their validation figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

from mplp_graph.meta.checkpoint import atomic_write_json

PARTS = {"mnist": "mnist.yaml", "fashion": "config.yaml"}  # data set -> config (they differ only in task.dataset)
LEARNER = "experiments/mnist/learner.npz"


def cmd_run(args: argparse.Namespace) -> int:
    rel = lambda p: str(p.relative_to(ROOT))  # noqa: E731
    cli = ["eval", "--config", rel(HERE / PARTS[args.name]), "--learner", LEARNER, "--out", rel(HERE / args.name)]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mplp_graph.cli", *cli], cwd=ROOT, check=True)
    print(f"mplp-graph {' '.join(cli)}: {time.perf_counter() - t0:.0f} s")
    return 0


def part_summary(doc: dict, folder: str) -> dict:
    """One data set's figures from its ``results.json``, written by ``mplp-graph eval`` into
    ``folder`` (its ``--out``, which the recorded command leaves out)."""
    m, tuning = doc["metrics"], doc["tuning"]
    metric = tuning["metric"]
    out = {"command": f"{doc['command']} --out {folder}", "git_commit": doc["git_commit"], "machine": doc["machine"], "runs": doc["runs"],
           "split": doc["split"], "eval_s": round(doc["wall_s"]["eval"], 1), "dataset": doc["config"]["task"]["dataset"],
           "mplp": {"mean": m[f"mplp_{metric}_final"], "std": m[f"mplp_{metric}_final_std"]}}
    for name, lr in tuning["chosen"].items():
        row = next(r for r in tuning["grid"][name] if r["lr"] == lr)
        out[f"{name}_tuned"] = {"lr": lr, "mean": m[f"{name}_tuned_{metric}_final"], "std": m[f"{name}_tuned_{metric}_final_std"],
                                "validation_mean": row[f"{metric}_final"], "at_grid_edge": tuning["at_grid_edge"][name]}
    out["validation_grid"] = {name: {f"{r['lr']:g}": r[f"{metric}_final"] for r in rows} for name, rows in tuning["grid"].items()}
    return out


def cmd_collect(args: argparse.Namespace) -> int:
    parts = {name: json.loads((HERE / name / "results.json").read_text()) for name in PARTS if (HERE / name / "results.json").exists()}
    if not parts:
        sys.exit("no part yet: python experiments/fashion/run.py run mnist (and fashion) first")
    summaries = {name: part_summary(doc, str((HERE / name).relative_to(ROOT))) for name, doc in parts.items()}
    doc = {
        "what": "test accuracy (%) after 20 inner steps, mean and std over 100 runs (fresh random prior, 20 batches of 8 "
                "training images, 100 test images per step), of the MNIST-trained learner experiments/mnist/learner.npz (MPLP) "
                "and of Adam and SGD with the rate chosen on the validation split (the last 5,000 training images; seed 12346), "
                "on MNIST and on Fashion-MNIST, the (144, 50, 10) sigmoid net on 12 x 12 images",
        "learner": LEARNER,
        "commands": [s["command"] for s in summaries.values()] + ["python experiments/fashion/run.py collect"],
        "datasets": summaries,
        "metrics": {f"{name}_{method}_acc20{suffix}": s[method][key]
                    for name, s in summaries.items() for method in s if isinstance(s[method], dict) and "mean" in s[method]
                    for suffix, key in (("", "mean"), ("_std", "std"))}
                   | {f"{name}_{method}_lr": s[method]["lr"] for name, s in summaries.items() for method in s if method.endswith("_tuned")},
    }
    atomic_write_json(HERE / "results.json", doc)
    for k, v in doc["metrics"].items():
        print(f"{k}: {v:.4g}")
    print(f"wrote {HERE / 'results.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="evaluate one data set")
    p.add_argument("name", choices=sorted(PARTS))
    p.set_defaults(func=cmd_run)
    sub.add_parser("collect", help="results.json from the parts").set_defaults(func=cmd_collect)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
