"""Benchmark: memory of long unrolls, with and without remat of the inner step (and with the
partial remat policies ``hidden`` and ``dots``, mplp_graph.meta.objectives.REMAT).

For the MNIST-shaped meta-step ((144,50,10) sigmoid + softmax + CE, stateful learner, message 4,
hidden 7, W/b learners shared across layers, batch 8, outer batch 1) with ``--steps`` inner steps
(default 20 and 100), XLA's own memory analysis of the compiled meta-step (no run needed):
``temp`` is the scratch memory the program needs (activations kept for the backward pass live
here), ``argument``/``output`` the inputs and results. ``MetaLoss(remat=True)`` wraps each inner
step in ``jax.checkpoint``, so only the carry between steps is stored and each step's
activations are recomputed in the backward pass; ``remat="hidden"`` / ``"dots"`` also keep the
learners' 40-wide hidden layers / every matmul output of each step.

    python benchmarks/memory_bench.py [--steps 20 100] [--remat full none hidden dots] [--out benchmarks/results/memory_bench.json]
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import jax

from mplp_graph import xla
from mplp_graph.runtime.program import compile_graph
from mplp_graph.meta.checkpoint import atomic_write_json
from mplp_graph.meta.objectives import MetaLoss
from mplp_graph.meta.step import MetaStep, adam, make_pool, trainable_mask
from mplp_graph.templates.mplp import mplp_feedforward

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import machine_line
from meta_step_bench import RandomClassFamily

ROOT = Path(__file__).resolve().parents[1]


def analyse(steps: int, remat: bool | str) -> dict:
    prog = compile_graph(mplp_feedforward((144, 50, 10), "sigmoid", "ce", msg=4, hidden=7, sharing="layers"))
    family = RandomClassFamily(inner_steps=steps, batch=8, cv_points=8, n_in=144, n_out=10)
    step = MetaStep(prog, family.sample, MetaLoss(remat=remat), 1, adam(5e-4))
    params = prog.init_params(jax.random.PRNGKey(0))
    pool = make_pool(prog, jax.random.PRNGKey(1), 4)
    opt = step.init_opt_state(params)
    t0 = time.perf_counter()
    compiled = xla.jit(step.__call__).lower(params, opt, trainable_mask(params), pool, jax.random.PRNGKey(2)).compile()
    compile_s = time.perf_counter() - t0
    m = compiled.memory_analysis()
    mib = 1 / 2**20
    return {
        "inner_steps": steps, "remat": remat, "compile_s": round(compile_s, 1),
        "temp_mib": round(m.temp_size_in_bytes * mib, 1),
        "argument_mib": round(m.argument_size_in_bytes * mib, 1),
        "output_mib": round(m.output_size_in_bytes * mib, 1),
        "total_mib": round((m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes) * mib, 1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, nargs="+", default=[20, 100])
    ap.add_argument("--remat", nargs="+", default=["full", "none", "hidden", "dots"], choices=["full", "none", "hidden", "dots"])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "memory_bench.json")
    args = ap.parse_args(argv)
    rows = []
    as_bool = {"full": True, "none": False}  # recorded as true / false, as before the policies
    for steps in args.steps:
        for remat in args.remat:
            rows.append(analyse(steps, as_bool.get(remat, remat)))
            print(rows[-1], flush=True)
    atomic_write_json(args.out, {
        "benchmark": "memory_bench",
        "command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
        "date": datetime.date.today().isoformat(),
        "machine": f"{machine_line()}, {jax.devices()[0].device_kind}, jax {jax.__version__}",
        "config": "mnist (144,50,10), stateful msg 4 hidden 7, shared W/b learners, batch 8, outer batch 1",
        "target": "a 100-step MNIST unroll with remat under 4 GB (issue 9)",
        "results": rows,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
