"""Run benchmark cases and print one table of their rows.

    python -m benchmarks.run_all                      # every case (long: tens of minutes on 2 cores)
    python -m benchmarks.run_all --tag quick          # the small cases (a smoke run), into runs/bench_quick/
    python -m benchmarks.run_all --case mnist_meta_step sinusoid_meta_step
    python -m benchmarks.run_all --table              # only print the table from benchmarks/results/*.json
    python -m benchmarks.run_all --table --out-dir benchmarks/results/gpu

Run it from the repository root. Each case's row is written atomically to
``<out-dir>/<case>.json`` (format: benchmarks/harness.py, docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import traceback
from pathlib import Path

from benchmarks.anchors import ANCHORS
from benchmarks.harness import RESULTS, ROOT, run_case, write_row

QUICK_DIR = ROOT / "runs" / "bench_quick"  # quick runs: smoke numbers, kept apart from the recorded ones


def _f(x, spec: str) -> str:
    """``x`` formatted by ``spec`` (e.g. ``"11.3f"``), or a dash as wide."""
    return format(x, spec) if x is not None else "-".rjust(int(spec.split(".")[0] or 0))


def format_table(rows: list[dict]) -> str:
    """One line per row: name, engine / direct medians (ms), the other variants, ratio, the
    subject's compile time and peak memory growth, and the anchor of the same workload."""
    head = f"{'case':30s} {'engine_ms':>11s} {'direct_ms':>11s} {'ratio':>7s} {'compile_s':>9s} {'peak_mib':>9s}  other variants / anchor"
    lines = [head]
    for row in rows:
        variants = row.get("variants", {})
        subject = next(iter(variants), None)
        sub = variants.get(subject, {})
        engine = row.get("engine_ms", sub.get("median_ms") if subject != "direct" else None)
        others = [f"{n} {v['median_ms']:.3f} ms" for n, v in variants.items() if n not in ("engine", "direct")]
        others += [f"{n} skipped" for n in row.get("skipped", {})]
        if row.get("baseline") not in (None, "direct") and row.get("ratio") is not None:
            others.append(f"ratio vs {row['baseline']}")
        anchor = ANCHORS.get(row["name"])
        if anchor is not None and engine is not None:
            others.append(f"TF {anchor[0]:.0f} ms (engine/TF {engine / anchor[0]:.2f})")
        lines.append(f"{row['name']:30s} {_f(engine, '11.3f')} {_f(row.get('direct_ms'), '11.3f')} {_f(row.get('ratio'), '7.3f')} "
                     f"{_f(sub.get('compile_s'), '9.2f')} {_f(sub.get('peak_mib'), '9.1f')}  {'; '.join(others)}")
    return "\n".join(lines)


def load_rows(out_dir: Path) -> list[dict]:
    """The rows in ``out_dir/*.json`` (files in the harness's format only)."""
    rows = []
    for path in sorted(Path(out_dir).glob("*.json")):
        doc = json.loads(path.read_text())
        if isinstance(doc, dict) and "variants" in doc and "name" in doc:
            rows.append(doc)
    return rows


def select(cases: dict, names: list[str] | None, tags: list[str] | None) -> list:
    """The cases named (in the order given) or carrying one of ``tags``; all without either."""
    if names:
        unknown = [n for n in names if n not in cases]
        if unknown:
            raise SystemExit(f"run_all: unknown case(s) {unknown}; known: {sorted(cases)}")
        return [cases[n] for n in names]
    if tags:
        return [c for c in cases.values() if set(tags) & set(c.tags)]
    return [c for c in cases.values() if "separate" not in c.tags]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", nargs="+", metavar="NAME", help="run these cases")
    ap.add_argument("--tag", nargs="+", help="run the cases with one of these tags (quick, slow, separate, ...)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default: each case's own)")
    ap.add_argument("--note", default="", help="recorded in every row, e.g. 'machine shared with other jobs'")
    ap.add_argument("--table", action="store_true", help="only print the table from the results folder")
    ap.add_argument("--list", action="store_true", help="list the cases and their tags")
    ap.add_argument("--out-dir", type=Path, default=None,
                    help="where rows are written and the table is read from (default benchmarks/results; "
                    "runs/bench_quick with --tag quick, so that smoke runs never replace recorded results)")
    args = ap.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        ap.error(f"--rounds must be >= 1, got {args.rounds}")
    quick_only = args.tag == ["quick"] and not args.case
    out_dir = args.out_dir or (QUICK_DIR if quick_only else RESULTS)
    if not args.table:
        from benchmarks.cases import all_cases, unavailable

        cases = all_cases()
        for mod, why in unavailable().items():
            print(f"run_all: case module benchmarks/cases/{mod}.py not loaded ({why})", file=sys.stderr)
        if args.list:
            for c in cases.values():
                print(f"{c.name:32s} {','.join(c.tags):20s} {', '.join(v.name for v in c.variants)}")
            return 0
        command = "python -m benchmarks.run_all " + shlex.join(argv if argv is not None else sys.argv[1:])
        rows, failed = [], {}
        for case in select(cases, args.case, args.tag):
            print(f"== {case.name}", flush=True)
            try:
                row = run_case(case, rounds=args.rounds, command=command.strip(), log=lambda s: print(s, flush=True))
            except Exception as e:  # a failed check or build: reported, the other cases still run
                traceback.print_exc()
                failed[case.name] = f"{type(e).__name__}: {e}"
                continue
            if args.note:
                row["note"] = "; ".join(x for x in (row["note"], args.note) if x)
            print(f"   -> {write_row(row, out_dir)}", flush=True)
            rows.append(row)
        print(format_table(rows))
        for name, why in failed.items():
            print(f"run_all: case {name} failed (no row written): {why}", file=sys.stderr)
        return 1 if failed else 0
    print(format_table(load_rows(out_dir)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
