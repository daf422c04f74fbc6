"""Benchmark: compile time of the sinusoid meta-step under XLA compiler options, each in a fresh
process (no in-memory or persistent cache), alternating, with the compiled step's run time.

    python benchmarks/compile_bench.py [--reps 2] [--out benchmarks/results/compile_bench.json]

Options compared: XLA's defaults; ``xla_llvm_disable_expensive_passes`` (skips LLVM's costly
optimization passes); ``xla_backend_optimization_level=1``; both.

``--interleaved CONFIG`` (repeatable; an experiment config such as
``experiments/mnist/config.yaml``): also compile that config's meta-step under every option set
in one process and time the executables interleaved (``--rounds`` rounds of ``--iters`` steps),
the step-time comparison the fresh-process runs (7 calls each) are too noisy for.
``--reps 0`` skips the fresh-process part.
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
from mplp_graph.meta.step import MetaStep, adam, make_pool, trainable_mask
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


INTERLEAVED = r"""
import json, statistics, sys, time
import jax
from mplp_graph import xla
from mplp_graph.meta import run as R
from mplp_graph.meta.step import make_pool, trainable_mask
options, rounds, iters = json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
setup = R.load_setup(sys.argv[1])  # graph, task family and its data
cfg = setup.config
params = R.initial_params(setup)
step = R.meta_step(setup)
pool, mask, opt = make_pool(setup.prog, jax.random.PRNGKey(1), cfg.meta.pool), trainable_mask(params), step.init_opt_state(params)
lowered = jax.jit(step.__call__).lower(params, opt, mask, pool, jax.random.PRNGKey(0), setup.data)
fns, out = {}, {"compile_s": {}, "step_ms": {}}
for name, o in options.items():
    t = time.perf_counter()
    fns[name] = lowered.compile(compiler_options=xla.compiler_options(o))
    out["compile_s"][name] = round(time.perf_counter() - t, 2)
runs = {name: [] for name in fns}
for r in range(rounds):
    for name in (list(fns) if r % 2 == 0 else list(reversed(fns))):
        f, p, o = fns[name], params, opt
        jax.block_until_ready(f(p, o, mask, pool, jax.random.PRNGKey(99), setup.data))
        t = time.perf_counter()
        for i in range(iters):
            p, o, _ = f(p, o, mask, pool, jax.random.PRNGKey(i), setup.data)
        jax.block_until_ready(p)
        runs[name].append(round(1e3 * (time.perf_counter() - t) / iters, 2))
base = statistics.median(runs["default"])
out["step_ms"] = {k: statistics.median(v) for k, v in runs.items()}
out["step_ratio_vs_default"] = {k: round(statistics.median(v) / base, 3) for k, v in runs.items()}
out["runs_ms"] = runs
print(json.dumps(out))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "compile_bench.json")
    ap.add_argument("--note", default="")
    ap.add_argument("--interleaved", action="append", default=[], metavar="CONFIG", help="experiment config: step times interleaved in one process")
    ap.add_argument("--rounds", type=int, default=5, help="--interleaved: timing rounds (default 5)")
    ap.add_argument("--iters", type=int, default=3, help="--interleaved: meta-steps per round (default 3)")
    args = ap.parse_args(argv)
    env = {**os.environ, "MPLP_GRAPH_CACHE": "off", "JAX_ENABLE_COMPILATION_CACHE": "false"}
    rows: dict[str, list] = {k: [] for k in OPTIONS}
    for rep in range(args.reps):
        for name, opts in (OPTIONS.items() if rep % 2 == 0 else reversed(OPTIONS.items())):
            out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(opts)], capture_output=True, text=True, env=env, check=True, cwd=ROOT)
            rows[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rep, name, rows[name][-1], flush=True)
    summary = {}
    if args.reps > 0:
        summary = {name: {k: round(statistics.median(r[k] for r in rs), 2) for k in ("lower_s", "compile_s", "step_ms")} for name, rs in rows.items()}
        base = summary["default"]
        for name, s in summary.items():
            s["compile_ratio_vs_default"] = round(s["compile_s"] / base["compile_s"], 3)
            s["step_ratio_vs_default"] = round(s["step_ms"] / base["step_ms"], 3)
    interleaved = {}
    for config in args.interleaved:
        cmd = [sys.executable, "-c", INTERLEAVED, config, json.dumps(OPTIONS), str(args.rounds), str(args.iters)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True, cwd=ROOT)
        interleaved[config] = json.loads(out.stdout.strip().splitlines()[-1])
        print(config, interleaved[config]["step_ratio_vs_default"], interleaved[config]["compile_s"], flush=True)
    doc = {
        "benchmark": "compile_bench", "date": datetime.date.today().isoformat(),
        "command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
        "note": args.note, "config": "sinusoid meta-step: (1,20,20,1), stateful msg 8 hidden 15, 5 steps x batch 10, outer batch 4",
        "summary": summary, "runs": rows, "step_interleaved": interleaved,
    }
    from mplp_graph.meta.checkpoint import atomic_write_json

    atomic_write_json(args.out, doc)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
