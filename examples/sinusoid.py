"""Meta-train an MPLP learner on sinusoid regression with the Python API, then compare it with
Adam(0.01) (the paper's section 4.1.1, Fig. 2, at a small scale).

    python examples/sinusoid.py --out /tmp/mplp-sinusoid                # ~200 meta-steps
    python examples/sinusoid.py --quick --out /tmp/mplp-sinusoid        # a smoke run (tiny net)

The steps, each one call into the library:

1. ``mplp_feedforward``: the (1, 20, 20, 1) ReLU net whose backward pass is a learned protocol
   (stateful GRU learners by default), and ``feedforward(..., protocol="none")``, the same net
   forward only, for the evaluation and the Adam baseline;
2. ``init_params`` then ``init_statistics``: learner parameters, with the input standardizers'
   statistics measured on an initialisation rollout (then frozen);
3. ``MetaStep`` and ``meta_train``: the meta-step (outer batch of tasks and priors, inner steps
   scanned, meta-gradient normalized per leaf, Adam), run by the library's loop (metrics and a
   checkpoint in OUT/run);
4. ``evaluate_mplp`` / ``evaluate_optax``: the paper's protocol, all runs in one jitted program:
   the family's metrics (``loss``: eval L2 on 100 evenly spaced points; ``seen_loss``) before
   and after each inner step, fresh prior and task per run.

Writes ``results.json`` (curves and settings), ``sinusoid.png`` and ``run/`` (the meta-training
run folder: metrics.jsonl, a checkpoint, params.npz) into OUT (default: a new
temporary folder). The recorded long run (12,000 meta-steps) is experiments/sinusoid/.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import optax

import mplp_graph as mg
from mplp_graph.cache import enable_compilation_cache
from mplp_graph.meta.evaluate import evaluate_mplp, evaluate_optax, plot_eval_curves
from mplp_graph.meta.objectives import MetaLoss
from mplp_graph.meta.stats import init_statistics
from mplp_graph.meta.step import MetaStep, adam, make_pool, trainable_mask
from mplp_graph.meta.train import meta_train
from mplp_graph.runtime.state import agent_params
from mplp_graph.tasks.sinusoid import SinusoidFamily
from mplp_graph.templates.mplp import mplp_feedforward

QUICK = {"sizes": "1,8,1", "meta_steps": 3, "runs": 4, "pool": 8}  # --quick: seconds, not minutes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,20,20,1", help="layer widths, comma-separated (default 1,20,20,1)")
    ap.add_argument("--learner", choices=("gru", "mlp"), default="gru", help="stateful GRU or stateless MLP learners (default gru)")
    ap.add_argument("--meta-steps", type=int, default=200, help="meta-training steps (default 200)")
    ap.add_argument("--outer-batch", type=int, default=4, help="tasks per meta-step (default 4)")
    ap.add_argument("--pool", type=int, default=128, help="random priors to draw from (default 128)")
    ap.add_argument("--lr", type=float, default=3e-4, help="meta learning rate (default 3e-4)")
    ap.add_argument("--runs", type=int, default=100, help="evaluation runs (default 100)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--out", default=None, help="output folder (default: a new temporary folder)")
    ap.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK}")
    args = ap.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    if min(args.meta_steps, args.outer_batch, args.runs) < 1 or args.pool < args.outer_batch:
        ap.error("--meta-steps, --outer-batch and --runs must be at least 1, and --pool at least --outer-batch")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    enable_compilation_cache()  # meta-steps take 15-30 s to compile; later runs load them
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="mplp-sinusoid-"))
    out.mkdir(parents=True, exist_ok=True)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    key = jax.random.PRNGKey(args.seed)
    k_params, k_stats, k_pool, k_meta, k_eval = jax.random.split(key, 5)

    # 1. the graphs
    prog = mg.compile_graph(mplp_feedforward(sizes, "relu", "l2", learner=args.learner))
    fwd = mg.compile_graph(mg.feedforward(sizes, "relu", "l2", protocol="none"))
    family = SinusoidFamily(inner_steps=5, batch=10)  # A in [0.1, 0.5], phase in [0, pi], x in [-5, 5]

    # 2. learner parameters and standardizer statistics
    params = prog.init_params(k_params)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    print(f"graph {prog.spec.name}: {len(prog.spec.groups)} groups, {len(prog.spec.arrows)} arrows, {n_params:,} learner parameters")

    def sample_round(k):  # one statistics round: a fresh prior and one task's inner batches
        kp, kt = jax.random.split(k)
        task = family.sample(kt)
        return agent_params(prog.spec, prog.init(kp, 1)), task["xt"], task["yt"]

    params = init_statistics(prog, params, sample_round, k_stats)
    untrained = params

    # 3. meta-training: hint losses after each inner step (0.7) + CV loss after the last (0.3),
    # through the library's loop (metrics, checkpoints and resume in OUT/run, the NaN guard)
    step = MetaStep(prog, family.sample, MetaLoss(), args.outer_batch, adam(args.lr))
    pool = make_pool(prog, k_pool, args.pool)  # random priors, W ~ N(0, 0.05), b = 0
    mask = trainable_mask(params)  # the standardizers' statistics stay frozen
    t0 = time.perf_counter()
    params, history = meta_train(step, params, mask, pool, k_meta, args.meta_steps, out / "run", resume=False, progress=False,
                                 checkpoint_every=max(1, args.meta_steps))
    train_s = time.perf_counter() - t0
    every = max(1, args.meta_steps // 10)
    for s in range(args.meta_steps):
        if (s + 1) % every == 0 or s == 0:
            recent = history[max(0, s + 1 - every) : s + 1]
            print(f"meta-step {s + 1:5d}  meta-loss {np.mean([h['loss'] for h in recent]):.5f}  "
                  f"cv {np.mean([h['cv'] for h in recent]):.5f}")
    print(f"meta-trained in {train_s:.0f} s (the first step compiles the meta-step)")

    # 4. evaluation: the same tasks and priors for every row (same key)
    rows = {
        "MPLP, untrained": evaluate_mplp(prog, fwd, untrained, family, k_eval, args.runs),
        f"MPLP, {args.meta_steps} meta-steps": evaluate_mplp(prog, fwd, params, family, k_eval, args.runs),
        "Adam(0.01)": evaluate_optax(fwd, optax.adam(0.01), family, k_eval, args.runs),
    }
    curves = {name: np.asarray(r["loss"]) for name, r in rows.items()}  # eval L2 on the grid, (runs, 1 + inner steps)
    print(f"\nmean eval L2 over {args.runs} runs, before and after each inner step:")
    print(f"{'':28s}" + "".join(f"{s:>9d}" for s in range(curves["Adam(0.01)"].shape[1])))
    for name, ev in curves.items():
        print(f"{name:28s}" + "".join(f"{v:9.4f}" for v in ev.mean(0)))

    results = {
        "sizes": list(sizes),
        "learner": args.learner,
        "learner_parameters": n_params,
        "meta_steps": args.meta_steps,
        "runs": args.runs,
        "meta_train_s": train_s,
        "meta_loss": [h["loss"] for h in history],
        "eval_mean": {name: ev.mean(0).tolist() for name, ev in curves.items()},
        "eval_std": {name: ev.std(0).tolist() for name, ev in curves.items()},
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot_eval_curves({k: (v.mean(0), v.std(0)) for k, v in curves.items()}, f"sinusoid regression, {curves['Adam(0.01)'].shape[0]} runs", out / "sinusoid.png")
    print(f"\nwrote {out / 'results.json'} and {out / 'sinusoid.png'}")
    finite = all(np.all(np.isfinite(ev)) for ev in curves.values())
    return 0 if finite else 1


if __name__ == "__main__":
    raise SystemExit(main())
