"""Learned protocols beyond dense nets, meta-trained and evaluated through the command line.

    python experiments/any_graph/run.py run rnn          # mplp-graph train + eval of rnn.yaml
    python experiments/any_graph/run.py run custom       # ... of custom.yaml
    python experiments/any_graph/run.py run residual     # ... of residual.yaml
    python experiments/any_graph/run.py collect          # results.json and results.png from the parts

Each ``run NAME`` calls ``mplp-graph train experiments/any_graph/NAME.yaml --run-dir
experiments/any_graph/runs/NAME`` (resumable) then ``mplp-graph eval`` on that folder (100 runs
against the config's baselines, fresh random prior and task per run), and copies the run's
``results.json``, ``eval.png``, ``metrics.jsonl`` and learner (``params.npz``) into
``experiments/any_graph/NAME/`` with the commands and wall times (``part.json``). ``collect``
gathers the parts: metrics ``{name}_{method}_eval_final`` are each method's mean eval loss after
the last inner step over the runs (lower is better), with the commands that produced them; for an
optimizer evaluated at several rates (``adam_lr0.01``, ``adam_lr0.1``), ``{name}_adam_eval_final``
is its best rate's figure (chosen on these same evaluation runs, which favours the baseline) and
``{name}_adam_best_lr`` that rate.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NAMES = ("rnn", "custom", "residual")


def _cli(*args: str) -> tuple[str, float]:
    cmd = ["mplp-graph", *args]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mplp_graph.cli", *args], cwd=ROOT, check=True)
    return " ".join(cmd), round(time.perf_counter() - t0, 1)


def cmd_run(args: argparse.Namespace) -> int:
    name = args.name
    config = HERE / f"{name}.yaml"
    run_dir = HERE / "runs" / name
    rel = lambda p: str(p.relative_to(ROOT))  # noqa: E731
    train_args = ["train", rel(config), "--run-dir", rel(run_dir), "--no-progress"] + (["--steps", str(args.steps)] if args.steps else [])
    out = HERE / name
    old = json.loads((out / "part.json").read_text()) if (out / "part.json").exists() else None
    train_cmd, train_s = _cli(*train_args)
    eval_cmd, eval_s = _cli("eval", rel(run_dir))
    if old is not None and train_s < 0.05 * old["wall_s"]["train"]:  # the run was complete: the recorded training time stands
        train_s = old["wall_s"]["train"]
    out.mkdir(exist_ok=True)
    for f in ("results.json", "eval.png", "metrics.jsonl", "params.npz", "config.yaml"):
        shutil.copy(run_dir / f, out / f)
    part = {"name": name, "config": rel(config), "commands": [train_cmd, eval_cmd], "wall_s": {"train": train_s, "eval": eval_s},
            "note": "train wall time covers the steps run by this call (a resumed run continues from its checkpoint)"}
    (out / "part.json").write_text(json.dumps(part, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics, commands, parts = {}, {}, {}
    names = [n for n in NAMES if (HERE / n / "part.json").exists()]
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        part = json.loads((HERE / name / "part.json").read_text())
        res = json.loads((HERE / name / "results.json").read_text())
        methods = sorted({k[: -len("_loss_final")] for k in res["metrics"] if k.endswith("_loss_final") and not k.endswith("_seen_loss_final")},
                         key=lambda m: (m != "mplp", m))  # the learned protocol first: the same colour in every panel
        for method in methods:
            key = f"{name}_{method}_eval_final"
            metrics[key] = res["metrics"][f"{method}_loss_final"]
            metrics[f"{key}_std"] = res["metrics"][f"{method}_loss_final_std"]
            commands[key] = part["commands"]
            c = res["curves"]
            mu = np.array(c[f"{method}_loss_mean"])
            steps = np.arange(len(mu))
            ax.plot(steps, mu, marker="o", label=method)
            ax.fill_between(steps, c[f"{method}_loss_q25"], c[f"{method}_loss_q75"], alpha=0.15)
        # an optimizer evaluated at several rates: its best rate's figure under the optimizer's name
        for opt in sorted({m.split("_lr")[0] for m in methods if "_lr" in m}):
            best = min((m for m in methods if m.startswith(f"{opt}_lr")), key=lambda m: res["metrics"][f"{m}_loss_final"])
            metrics[f"{name}_{opt}_eval_final"] = metrics[f"{name}_{best}_eval_final"]
            metrics[f"{name}_{opt}_eval_final_std"] = metrics[f"{name}_{best}_eval_final_std"]
            metrics[f"{name}_{opt}_best_lr"] = float(best.split("_lr")[1])
            commands[f"{name}_{opt}_eval_final"] = part["commands"]
        metrics[f"{name}_meta_steps"] = res["metrics"]["meta_steps"]
        parts[name] = {"graph": res["graph"], "config": part["config"], "runs": res["runs"], "wall_s": part["wall_s"], "git_commit": res["git_commit"]}
        ax.set_yscale("log")
        ax.set_xlabel("inner step")
        ax.set_title(f"{name}: {res['graph']} ({res['runs']} runs)", fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle("eval loss after each inner step: mean over runs, middle half shaded (lower is better)", fontsize=10)
    fig.tight_layout()
    fig.savefig(HERE / "results.png", dpi=110)
    doc = {
        "experiment": "any_graph",
        "description": "learned protocols on graphs that are not the dense feedforward template, meta-trained and evaluated "
        "through mplp-graph train / eval; {name}_{method}_eval_final: mean eval loss after the last inner step over the runs",
        "metrics": metrics,
        "commands": commands,
        "collect_command": "python experiments/any_graph/run.py collect",
        "parts": parts,
        "date": time.strftime("%Y-%m-%d"),
    }
    (HERE / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(metrics, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train and evaluate one config through the CLI")
    p.add_argument("name", choices=NAMES)
    p.add_argument("--steps", type=int, default=None, help="override meta.steps")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("collect", help="results.json and results.png from the parts")
    p.set_defaults(func=cmd_collect)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
