"""experiments/nca/results.json: the engine's Growing NCA against the reference training of the
same model, and the pictures of docs/nca.md.

Reads what three commands wrote (each named in the output with its command):

* the engine's training run (``mplp-graph train experiments/nca/config.yaml --run-dir RUN``):
  ``RUN/metrics.jsonl``, one training loss per step;
* its evaluation (``mplp-graph eval RUN --out experiments/nca/engine``): 8 growths of 96 steps
  from the seed, then regrowth of 96 steps after the right half is erased;
* the reference (``python experiments/nca/cax_reference.py --steps 300 --cax-steps 0 --rollout
  64 96 --out experiments/nca/reference_64_96.json``): the hand-written model
  (benchmarks/nca_direct.py, whose training step equals CAX's: experiments/nca/cax_reference.json)
  trained by the same recipe for as many steps from the same seed, evaluated the same way.

Writes ``experiments/nca/results.json`` (``metrics.nca_final_loss``: the engine's mean L2 to the
target after 96 steps from the seed; ``metrics.cax_final_loss``: the reference's; and the
regrowth losses, the training losses of the last 10 steps, the ratio), ``training.png`` (both
training curves) and copies the growth picture and animation to docs/img/.

    python experiments/nca/summarize.py --run runs/nca
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from mplp_graph.meta.checkpoint import atomic_write_json  # noqa: E402

TRAIN = "mplp-graph train experiments/nca/config.yaml --run-dir {run}"
EVAL = "mplp-graph eval {run} --out experiments/nca/engine"
REFERENCE = "python experiments/nca/cax_reference.py --steps 300 --cax-steps 0 --rollout 64 96 --out experiments/nca/reference_64_96.json"


def smooth(x: np.ndarray, k: int = 10) -> np.ndarray:
    """Running mean over ``k`` steps (shorter at the start)."""
    c = np.cumsum(np.insert(x, 0, 0.0))
    n = np.minimum(np.arange(1, len(x) + 1), k)
    return (c[1:] - c[np.arange(len(x)) + 1 - n]) / n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "nca", help="the engine's training run folder")
    ap.add_argument("--engine", type=Path, default=HERE / "engine", help="the folder 'mplp-graph eval --out' wrote")
    ap.add_argument("--reference", type=Path, default=HERE / "reference_64_96.json")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs" / "img")
    args = ap.parse_args(argv)

    rows = [json.loads(line) for line in (args.run / "metrics.jsonl").read_text().splitlines()]
    engine_losses = np.array([r["loss"] for r in rows], np.float64)
    ev = json.loads((args.engine / "results.json").read_text())
    ref_doc = json.loads(args.reference.read_text())
    ref = ref_doc["direct"]
    ref_losses = np.array(ref["losses"], np.float64)
    steps = ev["metrics"]["steps"]
    if len(engine_losses) != len(ref_losses):
        raise SystemExit(f"summarize: the engine trained {len(engine_losses)} steps, the reference {len(ref_losses)}; compare equal runs")
    grow, ref_grow = ev["metrics"]["grow_loss"], ref[f"eval_loss_{steps}_steps_from_seed"]
    metrics = {
        "nca_final_loss": grow,
        "cax_final_loss": ref_grow,
        "nca_regrow_loss": ev["metrics"]["regrow_loss"],
        "cax_regrow_loss": ref[f"eval_regrow_loss_{steps}_steps"],
        "nca_over_cax": grow / ref_grow,
        "within_10_percent_or_below": bool(grow <= 1.1 * ref_grow),
        "nca_train_loss_last10": float(engine_losses[-10:].mean()),
        "cax_train_loss_last10": float(ref_losses[-10:].mean()),
        "train_steps": len(engine_losses),
        "eval_steps": steps,
        "eval_runs": ev["runs"],
        "nca_grow_loss_std": ev["metrics"]["grow_loss_std"],
        "nca_regrow_loss_std": ev["metrics"]["regrow_loss_std"],
    }
    run = args.run.relative_to(ROOT) if args.run.is_relative_to(ROOT) else args.run
    doc = {
        "experiment": "growing_nca_vs_reference",
        "what": "Growing NCA (Mordvintsev et al., Distill 2020) trained by the engine (graphs/growing_nca.yaml, mplp_graph/meta/rollout.py) "
                "and by the hand-written model whose training step equals CAX's (benchmarks/nca_direct.py; experiments/nca/cax_reference.json), "
                "same recipe (pool 1024, batch 8, damage 3, rollouts of 64-96 steps, per-leaf normalised gradient + Adam 2e-3), same seed, "
                f"same number of steps; final loss = mean L2 of RGBA to the target after {steps} steps from the seed ({ev['runs']} growths), "
                "regrow loss = the same after erasing the right half and regrowing as many steps.",
        "commands": {"engine_train": TRAIN.format(run=run), "engine_eval": EVAL.format(run=run),
                     "reference": REFERENCE, "summary": "python experiments/nca/summarize.py"},
        "metrics": metrics,
        "engine": {"results": "experiments/nca/engine/results.json", "commit": ev.get("git_commit"), "date": ev.get("date"),
                   "losses": engine_losses.tolist()},
        "reference": {"results": str(args.reference.relative_to(ROOT)), "commit": ref_doc.get("commit"), "date": ref_doc.get("date"),
                      "jax": ref_doc.get("jax"), "losses": ref_losses.tolist()},
        "machine": ev.get("machine"),
    }
    atomic_write_json(HERE / "results.json", doc)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    x = np.arange(1, len(engine_losses) + 1)
    for losses, label, colour in ((engine_losses, "engine (graphs/growing_nca.yaml)", "C0"), (ref_losses, "hand-written, = CAX's step", "C1")):
        ax.plot(x, losses, color=colour, alpha=0.25, lw=0.8)
        ax.plot(x, smooth(losses), color=colour, label=f"{label}, mean of 10")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("batch loss (L2 to the target)")
    ax.set_title(f"Growing NCA: final loss after {steps} steps, engine {grow:.4f} vs reference {ref_grow:.4f}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = HERE / ".training.tmp.png"
    fig.savefig(tmp, dpi=120)
    tmp.replace(HERE / "training.png")
    args.docs.mkdir(parents=True, exist_ok=True)
    for name in ("growth.png", "growth.gif"):
        shutil.copyfile(args.engine / name, args.docs / f"nca_{name}")
    shutil.copyfile(HERE / "training.png", args.docs / "nca_training.png")
    print(json.dumps(metrics, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
