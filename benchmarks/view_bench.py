"""The interactive viewer (docs/view.md) in headless Chromium: time to interactive and file size of
the page of the MNIST (144, 50, 10) MPLP graph and of a 64 x 64 grid, and a 20-step MNIST MPLP
trace: its size, the size of its replay page and the replay rate.

Time to interactive: from the start of navigation to the page's ``mgView.ready`` (the graph is
drawn and takes clicks), the page's own ``performance.now()``; the median of ``--loads`` fresh
pages. Replay rate: steps per second when every heatmap, curve, arrow width is redrawn for each
step, one step after another (``mgView.replayRate``). Targets: under 2 s and under 5 MB for the
pages without a trace; the trace under 50 MB and a replay at 10+ steps per second.

    python benchmarks/view_bench.py                    # writes benchmarks/results/view_bench.json
    python benchmarks/view_bench.py --screenshots docs/img   # also the pictures of docs/view.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, result_header, write_json_atomic  # noqa: E402

MNIST_CONFIG = ROOT / "experiments/mnist/config.yaml"
MNIST_LEARNER = ROOT / "experiments/mnist/learner.npz"


def load_times(browser, html: Path, loads: int) -> list[float]:
    from mplp_graph.viz.browser import open_page

    out = []
    for _ in range(loads):
        page, log = open_page(browser, html)
        if log["errors"] or log["blocked"] or len(log["requests"]) != 1:
            raise SystemExit(f"{html}: errors {log['errors']}, blocked requests {log['blocked']}, requests {log['requests']}")
        out.append(page.evaluate("mgView.readyMs") / 1000)
        page.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loads", type=int, default=5, help="page loads per file (median)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/view_bench.json"))
    ap.add_argument("--screenshots", default=None, help="folder for view_mnist.png, view_grid.png, view_replay.png")
    args = ap.parse_args(argv)

    import mplp_graph as mg
    from mplp_graph.templates.grid import grid
    from mplp_graph.viz.browser import chromium, open_page
    from mplp_graph.viz.trace import load_source, record_config, write_trace

    tmp = Path(tempfile.mkdtemp(prefix="view_bench_"))
    mnist_spec, _ = load_source(MNIST_CONFIG)
    pages = {"view_open_mnist": mg.view(mnist_spec, tmp / "mnist.html"), "view_open_grid64": mg.view(grid(64, 64, wrap=True, name="life_64x64"), tmp / "grid64.html")}

    t0 = time.perf_counter()
    trace = record_config(MNIST_CONFIG, learner=MNIST_LEARNER)
    record_s = time.perf_counter() - t0
    trace_path = write_trace(tmp / "mnist.trace", trace)
    t0 = time.perf_counter()
    pages["view_open_mnist_replay"] = mg.view(mnist_spec, tmp / "mnist_run.html", trace=trace_path)
    replay_write_s = time.perf_counter() - t0

    rows = []
    with chromium() as browser:
        for name, html in pages.items():
            times = load_times(browser, html, args.loads)
            rows.append({"name": name, "seconds_to_interactive_median": round(statistics.median(times), 3),
                         "seconds_to_interactive": [round(t, 3) for t in times], "file_mb": round(html.stat().st_size / 1e6, 3)})
        page, _ = open_page(browser, pages["view_open_mnist_replay"])
        rates = [page.evaluate("mgView.replayRate(2)") for _ in range(3)]
        n_records = len(trace.records)
        rows.append({"name": "view_replay_mnist", "steps": trace.steps, "records": n_records, "steps_per_second_median": round(statistics.median(rates), 1),
                     "steps_per_second": [round(r, 1) for r in rates], "trace_mb": round(trace_path.stat().st_size / 1e6, 3),
                     "trace_record_s": round(record_s, 2), "page_write_s": round(replay_write_s, 2),
                     "page_mb": round(pages["view_open_mnist_replay"].stat().st_size / 1e6, 3)})
        page.close()
        if args.screenshots:
            shots = Path(args.screenshots)
            shots.mkdir(parents=True, exist_ok=True)
            page, _ = open_page(browser, pages["view_open_mnist"], width=1500, height=820)
            page.evaluate("mgView.expand('W1')")
            page.evaluate("mgView.cy.fit(undefined, 30)")
            page.mouse.move(10, 10)
            page.screenshot(path=str(shots / "view_mnist.png"))
            page.close()
            small = mg.view(grid(16, 16, wrap=True, name="life_16x16"), tmp / "grid16.html")
            page, _ = open_page(browser, small, width=1200, height=820)
            page.evaluate("mgView.expand('cell')")
            page.evaluate("mgView.cy.fit(undefined, 30)")
            page.screenshot(path=str(shots / "view_grid.png"))
            page.close()
            page, _ = open_page(browser, pages["view_open_mnist_replay"], width=1500, height=1500)
            page.evaluate("mgView.setStep(12)")
            page.screenshot(path=str(shots / "view_replay.png"), full_page=False)
            page.close()

    doc = result_header("view_bench", argv, note="headless Chromium (Debian package) driven by Playwright; MNIST: experiments/mnist/config.yaml, "
                        "learner experiments/mnist/learner.npz, default trace selection")
    doc["targets"] = {"seconds_to_interactive": 2.0, "file_mb": 5.0, "trace_mb": 50.0, "steps_per_second": 10.0}
    doc["rows"] = rows
    write_json_atomic(Path(args.out), doc)
    for r in rows:
        print(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
