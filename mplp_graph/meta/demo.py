"""The demo: meta-train a small MPLP learner on sinusoid regression from scratch, then evaluate
it (and, if present, the learner trained by this repository's recorded run) against Adam(0.01)
with the paper's protocol; print a table and write a plot like the paper's Fig. 2."""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from mplp_graph.meta.config import ExperimentConfig, MetaConfig
from mplp_graph.meta.run import build, evaluate, load_params_file, plot_results, train

REPO_LEARNER = Path(__file__).resolve().parents[2] / "experiments" / "sinusoid" / "learner.npz"


def run_demo(meta_steps: int = 150, runs: int = 100, out: str | Path = "mplp-demo", seed: int = 0, progress: bool = True) -> dict:
    out = Path(out)
    config = ExperimentConfig(meta=MetaConfig(steps=meta_steps, seed=seed, checkpoint_every=max(1, meta_steps), lr=3e-4))
    config = config.model_copy(update={"eval": config.eval.model_copy(update={"runs": runs})})
    setup = build(config)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(setup.prog.init_params(jax.random.PRNGKey(0))))
    print(f"graph {setup.prog.spec.name}: {len(setup.prog.spec.groups)} groups, {len(setup.prog.spec.arrows)} arrows, "
          f"{n_params:,} learner parameters (stateful GRU learners, message 8, hidden 15)")
    t0 = time.perf_counter()
    params, history = train(setup, out / "run", resume=False, progress=progress)
    train_s = time.perf_counter() - t0
    k = max(1, min(20, len(history) // 4))
    first = float(np.mean([h["loss"] for h in history[:k]]))
    last = float(np.mean([h["loss"] for h in history[-k:]]))
    print(f"meta-trained {meta_steps} steps in {train_s:.0f} s: meta-loss {first:.4f} (first {k}) -> {last:.4f} (last {k})")
    learners = {f"MPLP, {meta_steps} meta-steps (this demo)": params}
    if REPO_LEARNER.exists():
        learners["MPLP, recorded run (experiments/sinusoid)"] = load_params_file(setup, REPO_LEARNER)
    rows = {}
    for name, p in learners.items():
        res = evaluate(setup, p)
        rows[name] = res["methods"]["MPLP"]["loss"]
        rows.setdefault("Adam(0.01)", res["methods"]["Adam(0.01)"]["loss"])
        if name.startswith("MPLP, recorded") or len(learners) == 1:
            plot_results(res, setup.family.metrics, out / "demo.png", f"{setup.prog.spec.name}: {name} vs Adam(0.01)")
    print(f"\nmean eval L2 over {runs} runs (fresh random prior and task each), by inner step:")
    steps = rows["Adam(0.01)"].shape[1]
    print(f"{'':46s}" + "".join(f"{s:>9d}" for s in range(steps)))
    for name, ev in rows.items():
        print(f"{name:46s}" + "".join(f"{v:9.4f}" for v in ev.mean(0)))
    print(f"\nplot: {out / 'demo.png'}")
    return {name: float(ev[:, -1].mean()) for name, ev in rows.items()}
