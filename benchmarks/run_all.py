"""The benchmark suite: run every benchmark, then print one table from their JSON results.

    python benchmarks/run_all.py            # all benchmarks (long: tens of minutes on 2 cores)
    python benchmarks/run_all.py --quick    # smoke settings (fewer rounds and runs), into runs/bench_quick/
    python benchmarks/run_all.py --table    # only print the table from benchmarks/results/*.json
    python benchmarks/run_all.py --table --out-dir benchmarks/results/gpu   # the GPU figures
                                            # (experiments/device/gpu_bench.sh on a lent H200)

Each benchmark writes its own JSON into ``benchmarks/results/`` (format: shared/docs/results.md)
with the command that made it; timings are ratios measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

SUITE = {
    # name: (full arguments, quick arguments)
    "step_bench": ([], ["--quick"]),
    "meta_step_bench": ([], ["--quick", "--compile-reps", "1"]),
    "maml_bench": ([], ["--quick"]),
    "eval_bench": (["--runs", "100", "--reps", "3"], ["--runs", "20", "--reps", "1"]),
    "memory_bench": ([], ["--steps", "20"]),
    "compile_bench": (["--reps", "2"], ["--reps", "1"]),
    "kernel_bench": (["--no-remat", "--eval"], ["--rounds", "2", "--iters", "1"]),
    "kernel_bench_remat": (["--set", "remat", "--rounds", "3"], ["--set", "remat", "--rounds", "2", "--iters", "1"]),
    "startup_bench": (["--reps", "2"], ["--reps", "1", "--config", "experiments/sinusoid/config.yaml"]),
}
SCRIPT = {"kernel_bench_remat": "kernel_bench"}  # suite entries that run another entry's script
OUT_NAME = {"kernel_bench": "kernel_bench_mnist", "kernel_bench_remat": "kernel_bench_mnist_remat"}  # their JSON file names
QUICK_DIR = HERE.parent / "runs" / "bench_quick"  # --quick results: smoke numbers, kept apart from the recorded ones


def _load(name: str, results: Path = RESULTS) -> dict | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _first_call(row: dict) -> str:
    """meta_step_bench rows: the engine's first call (trace + compile + run) and its XLA compile
    alone; step_bench rows: their ``compile_s``."""
    engine = row.get("engine")
    if isinstance(engine, dict) and "compile_s" in engine:
        return f"first call {engine['first_call_s']:.1f} s (XLA compile {engine['compile_s']:.1f} s)"
    return f"compile {row.get('compile_s', float('nan')):.1f} s"


def table(results: Path = RESULTS) -> str:
    """One line per measurement, from the JSON files in ``results``."""
    lines = [f"{'benchmark':44s} {'engine':>12s} {'direct':>12s} {'ratio':>7s}  notes"]
    scaling = sorted(p.stem for p in results.glob("meta_step_scaling*.json"))
    for bench in ("step_bench", "meta_step_bench", "maml_bench", *scaling):
        doc = _load(bench, results)
        for r in (doc or {}).get("rows", []):
            if bench == "step_bench" and not r["name"].endswith("vs_manual"):
                continue
            if bench != "meta_step_bench" and r["name"] == "mnist_meta_step" and not r.get("direct_remat"):
                continue  # measured again in meta_step_bench
            if r.get("direct_ms") is None:  # --engine-only
                lines.append(f"{r['name']:44s} {r['engine_ms']:10.3f}ms {'-':>12s} {'-':>7s}  {_first_call(r)}, engine only")
                continue
            remat = ", direct with remat" if r.get("direct_remat") else ""
            lines.append(f"{r['name']:44s} {r['engine_ms']:10.3f}ms {r['direct_ms']:10.3f}ms {r['ratio']:7.3f}  {_first_call(r)}{remat}")
    for path in sorted(results.glob("chunk_bench_*.json")):
        doc = _load(path.stem, results)
        ms = doc["meta_step"]
        for name, t in ms["ms_median"].items():
            label = f"{ms['config']['name']} meta-step, {name}"
            lines.append(f"{label:44s} {t:10.1f}ms {'':>12s} {ms['ratio_vs_whole'][name]:7.3f}  vs rows=0 (whole, remat)")
    for path in sorted(results.glob("kernel_bench_*.json")):
        doc = _load(path.stem, results)
        ms = doc["meta_step"]
        hp = ", huge pages" if "hugetlb=1" in doc.get("glibc_tunables", "") else ""
        for name, t in ms["ms_median"].items():
            label = f"{ms['config']['name']} meta-step{hp}, {name}"
            lines.append(f"{label:44s} {t:10.1f}ms {'':>12s} {ms['ratio_vs_default'][name]:7.3f}  vs the library default")
        for name, t in doc.get("eval_mnist", {}).get("s_median", {}).items():
            lines.append(f"{'eval mnist, ' + name:44s} {t:11.2f}s {'':>12s} {doc['eval_mnist']['ratio_vs_default'][name]:7.3f}  vs the default kernels")
    for bench in ("eval_bench", "eval_bench_modes", "eval_bench_gpu"):
        doc = _load(bench, results)
        where = "GPU" if bench.endswith("gpu") or "NVIDIA" in (doc or {}).get("machine", "") else "CPU"
        for name, r in (doc or {}).get("results", {}).items():
            label = f"eval {name} ({r['runs']} runs, {where})"
            lines.append(f"{label:44s} {r['median_s']:11.3f}s {'':>12s} {'':>7s}  first call {r['first_call_s']:.1f} s")
    doc = _load("memory_bench", results)
    for r in (doc or {}).get("results", []):
        policy = ("on" if r["remat"] else "off") if isinstance(r["remat"], bool) else r["remat"]
        name = f"memory mnist {r['inner_steps']} steps, remat {policy}"
        lines.append(f"{name:44s} {r['total_mib']:10.1f}MiB {'':>12s} {'':>7s}")
    for path in sorted(results.glob("compile_bench*.json")):
        doc = _load(path.stem, results)
        for name, r in doc.get("summary", {}).items():
            lines.append(f"{'compile sinusoid meta-step, ' + name:44s} {r['compile_s']:11.1f}s {'':>12s} {r['compile_ratio_vs_default']:7.3f}  step ratio {r['step_ratio_vs_default']:.2f}")
        for config, r in doc.get("step_interleaved", {}).items():
            for name, ms in r["step_ms"].items():
                label = f"{Path(config).parent.name} meta-step, XLA options {name}"
                lines.append(f"{label:44s} {ms:10.1f}ms {'':>12s} {r['step_ratio_vs_default'][name]:7.3f}  interleaved in one process (compiled one after another: {r['compile_s'][name]:.1f} s)")
    doc = _load("startup_bench", results)
    for config, entry in (doc or {}).get("results", {}).items():
        ratio = entry.get("ratio_current_vs_baseline", {}).get("before_first_step_s")
        for name, m in entry["median_s"].items():
            label = f"before first step, {Path(config).parent.name} ({name} {doc['checkouts'][name]})"
            r = f"{ratio:7.3f}" if ratio is not None and name == "current" else f"{'':>7s}"
            lines.append(f"{label:44s} {m['before_first_step_s']:11.2f}s {'':>12s} {r}  meta-step XLA compile {m['compile']:.1f} s, "
                         f"init + statistics {m['initial_params']:.1f} s")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--table", action="store_true", help="only print the table")
    ap.add_argument("--only", nargs="+", choices=sorted(SUITE))
    ap.add_argument("--out-dir", type=Path, default=None,
                    help=f"where the JSON results go and the table is read from (default {RESULTS.relative_to(HERE.parent)}; "
                    f"with --quick {QUICK_DIR.relative_to(HERE.parent)}, so that smoke runs never replace recorded results)")
    args = ap.parse_args(argv)
    out_dir = args.out_dir or (QUICK_DIR if args.quick else RESULTS)
    if not args.table:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in args.only or SUITE:
            full, quick = SUITE[name]
            out = out_dir / f"{OUT_NAME.get(name, name)}.json"
            cmd = [sys.executable, str(HERE / f"{SCRIPT.get(name, name)}.py"), *(quick if args.quick else full), "--out", str(out)]
            print("$", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
    print(table(out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
