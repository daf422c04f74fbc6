"""Benchmark: the 100-run evaluation protocols (reference-notes 5.6), each in one jit.

Times the first call (trace + compile + run) and the median of ``--reps`` later calls for the
MNIST (144,50,10) protocol (20 steps, batch 8, accuracy on 100 test images after each step) and
the sinusoid protocol (5 steps, batch 10), with a learner whose standardizers come from an init
rollout (the timing does not depend on the learner's values).

``--modes``: how the runs are batched (:mod:`mplp_graph.meta.batching`: ``auto``, the default, is
one run after another on the CPU and vmapped elsewhere; ``vmap``; ``map``). With several modes
each protocol's modes are timed in interleaved rounds (the order rotating) and must agree (the
same mean accuracy / eval loss, to float rounding); rows are then named ``PROTOCOL (MODE)``.

    python benchmarks/eval_bench.py [--runs 100] [--reps 3] [--modes auto] [--out benchmarks/results/eval_bench.json]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np
import yaml

from mplp_graph.meta.checkpoint import atomic_write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import device_peak_mib, exclusive_device, interleaved_call_times  # noqa: E402
from mplp_graph.meta.config import ExperimentConfig
from mplp_graph.meta.evaluate import evaluate_mplp
from mplp_graph.meta.run import build, initial_params

ROOT = Path(__file__).resolve().parents[1]


def timed(fns: dict, reps: int) -> tuple[dict, dict, dict, float]:
    """First call and median of ``reps`` later calls of each function of ``fns``, the later calls
    in interleaved rounds (the order rotating): ``(first_s, median_s, first output, lock wait)``."""
    first, outs = {}, {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        outs[name] = jax.block_until_ready(fn())
        first[name] = time.perf_counter() - t0
    with exclusive_device() as wait_s:  # one process at a time on a shared accelerator ($MPLP_BENCH_LOCK)
        times = interleaved_call_times(fns, reps)
    return first, {k: statistics.median(v) for k, v in times.items()}, outs, wait_s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "eval_bench.json")
    ap.add_argument("--note", default="")
    ap.add_argument("--modes", nargs="+", choices=["auto", "vmap", "map"], default=["auto"], help="how the runs are batched (default: auto)")
    args = ap.parse_args(argv)
    rows = {}
    for name in ("mnist", "sinusoid"):
        config = ExperimentConfig.model_validate(yaml.safe_load((ROOT / "experiments" / name / "config.yaml").read_text()))
        config = config.model_copy(update={"meta": config.meta.model_copy(update={"stats_rounds": 1})})
        key = jax.random.PRNGKey(0)
        setup = build(config)  # the task family and its data (MNIST: loaded here)
        params = initial_params(setup)
        # the primary metric: MNIST accuracy after each update, the sinusoid's eval loss before and after each
        metric, cols = ("accuracy", slice(1, None)) if name == "mnist" else ("loss", slice(None))
        fns = {m: lambda setup=setup, params=params, key=key, m=m, metric=metric, cols=cols: evaluate_mplp(
                   setup.prog, setup.fwd, params, setup.family, key, args.runs, data=setup.data, mode=m)[metric][:, cols]
               for m in args.modes}
        first, median, outs, wait_s = timed(fns, args.reps)
        base = np.asarray(outs[args.modes[0]])
        for m, out in outs.items():  # the same runs (keys, priors, tasks): the same results up to float rounding
            if not np.allclose(np.mean(np.asarray(out), 0), np.mean(base, 0), rtol=1e-3, atol=0.05 if name == "mnist" else 1e-6):
                raise SystemExit(f"eval {name}: mode {m} disagrees with {args.modes[0]}")
        for m in args.modes:
            row = name if len(args.modes) == 1 else f"{name} ({m})"
            rows[row] = {"runs": args.runs, "mode": m, "first_call_s": round(first[m], 3), "median_s": round(median[m], 4),
                         "finite": bool(np.all(np.isfinite(np.asarray(outs[m])))), "device_peak_mib": device_peak_mib(), "lock_wait_s": round(wait_s, 1)}
            print(row, rows[row], flush=True)
    doc = {
        "benchmark": "eval_bench",
        "command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {jax.devices()[0].device_kind}, jax {jax.__version__}",
        "note": args.note,
        "results": rows,
    }
    atomic_write_json(args.out, doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
