"""Benchmark: the time before the first meta-step, phase by phase, in fresh processes without
any compilation cache (what a user waits for on a new machine, or with ``MPLP_GRAPH_CACHE=off``).

    python benchmarks/startup_bench.py [--config experiments/sinusoid/config.yaml ...] [--reps 2]
        [--baseline PATH] [--out benchmarks/results/startup_bench.json]

Each child process does what ``mplp-graph train`` does before its first step, timing each phase:
``import``, ``build`` (programs, data), ``initial_params`` (learner init + the statistics
rollouts), ``pool`` (random priors), ``mask_opt`` (trainable mask, optimizer state), then the
meta-step's ``trace_lower``, XLA ``compile`` and ``first_run``, and ``second_step`` (an already
compiled step). ``before_first_step_s`` sums them up to the end of the first step.

``--baseline PATH``: another checkout of the library (e.g. ``git worktree add /tmp/base <commit>``)
measured in alternation with this one, child by child, so the ratio is side by side; its commit
is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench_common import result_header, write_json_atomic  # benchmarks/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("experiments/sinusoid/config.yaml", "experiments/mnist/config.yaml")
PHASES = ("import", "build", "initial_params", "pool", "mask_opt", "trace_lower", "compile", "first_run", "second_step")

CHILD = r"""
import inspect, json, os, sys, time
T0 = time.perf_counter()
import jax
from mplp_graph.meta import run as R
from mplp_graph.meta.config import load_experiment_config
from mplp_graph.meta.train import _jitted
try:
    from mplp_graph.meta.step import make_pool, trainable_mask
except ImportError:  # a --baseline checkout from before mplp_graph.meta.step
    from mplp_graph.meta.train import make_pool, trainable_mask
t, last = {"import": time.perf_counter() - T0}, [time.perf_counter()]
def lap(name, value=None):
    jax.block_until_ready(value)
    now = time.perf_counter(); t[name] = now - last[0]; last[0] = now
    return value
cfg = load_experiment_config(sys.argv[1])
# relative graph files are found beside the config (checkouts whose build() takes base_dir)
kw = {"base_dir": os.path.dirname(os.path.abspath(sys.argv[1]))} if "base_dir" in inspect.signature(R.build).parameters else {}
setup = lap("build", R.build(cfg, **kw))
params = lap("initial_params", R.initial_params(setup))
step_fn, m = R.meta_step(setup), cfg.meta
pool = lap("pool", make_pool(setup.prog, jax.random.PRNGKey(m.seed + 1), m.pool))
init = getattr(step_fn, "init_opt_state", step_fn.optimizer.init)  # before the raveled update: optimizer.init
mask, opt = lap("mask_opt", (trainable_mask(params), init(params)))
args = (params, opt, mask, pool, jax.random.PRNGKey(0), setup.data)
lowered = lap("trace_lower", _jitted(step_fn).lower(*args))
compiled = lap("compile", lowered.compile())
lap("first_run", compiled(*args))
t["before_first_step_s"] = time.perf_counter() - T0
lap("second_step", compiled(params, opt, mask, pool, jax.random.PRNGKey(1), setup.data))
print(json.dumps({k: round(v, 3) for k, v in t.items()}))
"""


def child(checkout: Path, config: str) -> dict[str, float]:
    env = {**os.environ, "MPLP_GRAPH_CACHE": "off", "JAX_ENABLE_COMPILATION_CACHE": "false", "PYTHONPATH": str(checkout)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT / config)], capture_output=True, text=True, env=env, cwd=checkout)
    if out.returncode != 0:
        sys.exit(f"startup_bench: the child for {config} in {checkout} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def commit_of(checkout: Path) -> str:
    r = subprocess.run(["git", "-C", str(checkout), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", help=f"experiment configs (default: {', '.join(CONFIGS)})")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--baseline", type=Path, help="another checkout, measured in alternation with this one")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "startup_bench.json")
    ap.add_argument("--note", default="")
    args = ap.parse_args(argv)
    checkouts = {"current": ROOT}
    if args.baseline is not None:
        checkouts["baseline"] = args.baseline.resolve()
    doc = result_header("startup_bench", argv, args.note)
    doc["checkouts"] = {name: commit_of(path) for name, path in checkouts.items()}
    doc["unit"] = "seconds per phase, fresh process, no compilation cache; medians over reps"
    doc["results"] = {}
    for config in args.config or CONFIGS:
        rows: dict[str, list[dict[str, float]]] = {name: [] for name in checkouts}
        for rep in range(args.reps):
            order = list(checkouts) if rep % 2 == 0 else list(reversed(checkouts))
            for name in order:
                rows[name].append(child(checkouts[name], config))
                print(config, rep, name, rows[name][-1], flush=True)
        medians = {name: {k: round(statistics.median(r[k] for r in rs), 2) for k in (*PHASES, "before_first_step_s")} for name, rs in rows.items()}
        entry = {"median_s": medians, "runs": rows}
        if "baseline" in medians:
            entry["ratio_current_vs_baseline"] = {
                k: round(medians["current"][k] / medians["baseline"][k], 3) for k in PHASES + ("before_first_step_s",) if medians["baseline"][k] > 0
            }
        doc["results"][config] = entry
    write_json_atomic(args.out, doc)
    for config, entry in doc["results"].items():
        for name, m in entry["median_s"].items():
            print(f"{config:40s} {name:8s} before first step {m['before_first_step_s']:6.2f} s  "
                  + "  ".join(f"{k} {m[k]:.2f}" for k in PHASES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
