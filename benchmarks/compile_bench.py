"""Benchmark: compile time of the sinusoid meta-step under XLA compiler options, each in a fresh
process (no in-memory or persistent cache), alternating, with the compiled step's run time.

    python benchmarks/compile_bench.py [--reps 2] [--out benchmarks/results/compile_bench.json]

Options compared: XLA's defaults; ``xla_llvm_disable_expensive_passes`` (skips LLVM's costly
optimization passes); ``xla_backend_optimization_level=1``; both.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = {
    "default": {},
    "no_expensive_llvm_passes": {"xla_llvm_disable_expensive_passes": True},
    "backend_opt_level_1": {"xla_backend_optimization_level": 1},
    "both": {"xla_backend_optimization_level": 1, "xla_llvm_disable_expensive_passes": True},
}

CHILD = r"""
import json, statistics, sys, time
import jax
import mplp_graph as mg
from mplp_graph import xla
from mplp_graph.meta.objectives import MetaLoss
from mplp_graph.meta.train import MetaStep, adam, make_pool, trainable_mask
from mplp_graph.tasks.sinusoid import SinusoidFamily
from mplp_graph.templates.mplp import mplp_feedforward
options = json.loads(sys.argv[1])
prog = mg.compile_graph(mplp_feedforward((1, 20, 20, 1)))
params = prog.init_params(jax.random.PRNGKey(0))
step = MetaStep(prog, SinusoidFamily().sample, MetaLoss(), 4, adam(1e-4))
args = (params, step.init_opt_state(params), trainable_mask(params), make_pool(prog, jax.random.PRNGKey(1), 128), jax.random.PRNGKey(2))
t0 = time.perf_counter()
lowered = jax.jit(step.__call__).lower(*args)
t1 = time.perf_counter()
compiled = lowered.compile(compiler_options=xla.compiler_options(options))  # the library's defaults + the variant's
t2 = time.perf_counter()
jax.block_until_ready(compiled(*args))
times = []
for _ in range(7):
    t = time.perf_counter(); jax.block_until_ready(compiled(*args)); times.append(time.perf_counter() - t)
print(json.dumps({"lower_s": t1 - t0, "compile_s": t2 - t1, "step_ms": 1e3 * statistics.median(times)}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "compile_bench.json")
    ap.add_argument("--note", default="")
    args = ap.parse_args(argv)
    env = {**os.environ, "MPLP_GRAPH_CACHE": "off", "JAX_ENABLE_COMPILATION_CACHE": "false"}
    rows: dict[str, list] = {k: [] for k in OPTIONS}
    for rep in range(args.reps):
        for name, opts in (OPTIONS.items() if rep % 2 == 0 else reversed(OPTIONS.items())):
            out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(opts)], capture_output=True, text=True, env=env, check=True, cwd=ROOT)
            rows[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rep, name, rows[name][-1], flush=True)
    summary = {name: {k: round(statistics.median(r[k] for r in rs), 2) for k in ("lower_s", "compile_s", "step_ms")} for name, rs in rows.items()}
    base = summary["default"]
    for name, s in summary.items():
        s["compile_ratio_vs_default"] = round(s["compile_s"] / base["compile_s"], 3)
        s["step_ratio_vs_default"] = round(s["step_ms"] / base["step_ms"], 3)
    doc = {
        "benchmark": "compile_bench", "date": datetime.date.today().isoformat(),
        "command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
        "note": args.note, "config": "sinusoid meta-step: (1,20,20,1), stateful msg 8 hidden 15, 5 steps x batch 10, outer batch 4",
        "summary": summary, "runs": rows,
    }
    from mplp_graph.meta.checkpoint import atomic_write_json

    atomic_write_json(args.out, doc)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
