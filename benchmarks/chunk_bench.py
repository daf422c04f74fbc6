"""Benchmark: learners over cache-sized pieces of their agents (``chunk_rows``) vs whole tensors.

By default the MNIST meta-step (reference-notes 5.5: (144, 50, 10), GRU learners shared across layers, msg 4,
hidden 7, 20 inner steps of batch 8, outer batch 1, hint 0.7 + CV 0.3, Adam 5e-4; random inputs
and labels as in ``meta_step_bench.py``) compiled once per ``chunk_rows`` value and timed in
interleaved rounds (the order rotates every round), so that every variant sees the same machine
load. The first variant (0: whole tensors) is the baseline of the ratios. Before timing, every
variant's meta-loss and new parameters are checked against the baseline's (the same math; only
the order of the parameter-gradient sums differs).

``--eval`` adds the 100-run MNIST evaluation (untrained learner; time does not depend on its
values) with ``chunk_rows`` 0 and the second ``--rows`` value.

    python benchmarks/chunk_bench.py [--config mnist] [--rows 0 1024 2048 4096] [--rounds 5] [--iters 2] [--eval]

``--config`` takes the names of ``meta_step_bench.py`` (``sinusoid``, ``mnist``, ``mnist_144x100``, ...).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import meta_step_bench as msb  # noqa: E402
from bench_common import mnist_eval_setup, result_header, write_json_atomic  # noqa: E402
from eval_bench import timed  # noqa: E402

from mplp_graph import compile_graph, xla  # noqa: E402
from mplp_graph.meta.objectives import MetaLoss  # noqa: E402
from mplp_graph.meta.step import MetaStep, adam, make_pool, trainable_mask  # noqa: E402
from mplp_graph.templates.mplp import mplp_feedforward  # noqa: E402



def variant(cfg: msb.MetaConfig, rows, seed: int, remat: bool = True):
    spec = mplp_feedforward(cfg.sizes, cfg.activation, cfg.loss, msg=cfg.msg, hidden=cfg.hidden, sharing=cfg.sharing, chunk_rows=rows)
    prog = compile_graph(spec)
    family = msb.task_family(cfg)
    step = MetaStep(prog, family.sample, MetaLoss(cfg.hint_weight, cfg.cv_weight, remat=remat), cfg.outer_batch, adam(cfg.lr))
    key = jax.random.PRNGKey(seed)
    params = prog.init_params(key)
    return prog, step, params, make_pool(prog, jax.random.fold_in(key, 3), cfg.pool)


def bench_meta_step(cfg: msb.MetaConfig, rows_list: list, rounds: int, iters: int, seed: int, no_remat: bool = False) -> dict:
    variants = {f"rows={r}": variant(cfg, r, seed) for r in rows_list}
    if no_remat:  # the same without the remat of each inner step (the pieces are still rematerialized)
        variants.update({f"rows={r},no-remat": variant(cfg, r, seed, remat=False) for r in rows_list})
    _, _, params, pool = next(iter(variants.values()))
    jitted = {name: (xla.jit(step.__call__), params, step.init_opt_state(params)) for name, (_, step, _, _) in variants.items()}
    return msb.compare_variants(cfg, jitted, (trainable_mask(params), pool), seed, rounds, iters, "ratio_vs_whole")


def bench_eval(runs: int, reps: int, chunk: int) -> dict:
    from mplp_graph.meta.evaluate import evaluate_mplp

    out = {}
    for rows in (0, chunk):
        setup, params = mnist_eval_setup(chunk_rows=rows)

        def fn(setup=setup, params=params):  # accuracy after each update, (runs, steps)
            return evaluate_mplp(setup.prog, setup.fwd, params, setup.family, jax.random.PRNGKey(0), runs, data=setup.data)["accuracy"][:, 1:]

        first, median, outs, _ = timed({"eval": fn}, reps)
        first, median, acc = first["eval"], median["eval"], np.asarray(outs["eval"])
        out[f"rows={rows}"] = {"first_call_s": round(first, 2), "median_s": round(median, 2), "mean_acc_last": float(acc[:, -1].mean())}
        print(f"eval rows={rows}: {out[f'rows={rows}']}", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="+", type=int, default=[0, 1024, 2048, 4096])
    ap.add_argument("--config", default="mnist", choices=[c.name for c in msb.ALL_CONFIGS], help="a meta_step_bench config (default mnist)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-remat", action="store_true", help="also every variant without the inner-step remat")
    ap.add_argument("--eval", action="store_true", help="also time the 100-run MNIST evaluation (needs MNIST)")
    ap.add_argument("--eval-runs", type=int, default=100)
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results/chunk_bench_CONFIG.json)")
    args = ap.parse_args(argv)
    cfg = next(c for c in msb.ALL_CONFIGS if c.name == args.config)
    out = args.out or HERE / "results" / f"chunk_bench_{cfg.name}.json"
    doc = {
        **result_header("chunk_bench", argv, args.note),
        "meta_step": bench_meta_step(cfg, args.rows, args.rounds, args.iters, args.seed, args.no_remat),
    }
    print("ms per meta-step:", doc["meta_step"]["ms_median"], "ratio:", doc["meta_step"]["ratio_vs_whole"], flush=True)
    write_json_atomic(out, doc)
    if args.eval:
        doc["eval"] = bench_eval(args.eval_runs, 2, args.rows[1])
        write_json_atomic(out, doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
