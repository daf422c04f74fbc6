"""The interactive viewer (docs/view.md) in headless Chromium (tag ``separate``: run with
``--tag view``; needs the system Chromium and Playwright, else the cases are skipped): pages of the
MNIST (144, 50, 10) MPLP graph and of a 64 x 64 grid, and the replay page of a 20-step MNIST MPLP
trace (experiments/mnist/learner.npz).

``view_open_*``: one timed unit is one fresh page load up to ``mgView.ready`` (the graph drawn and
taking clicks) as Python sees it; ``check`` records the page's own ``performance.now()`` at ready
(``ready_s``) and the file size. ``view_replay_mnist``: one timed unit is ``mgView.replayRate(2)``
(every heatmap, curve and arrow width redrawn for each step); ``check`` records the rate, the trace
and page sizes. Targets: under 2 s and 5 MB for the pages without a trace; the trace under 50 MB
and a replay at 10+ steps per second.

    python -m benchmarks.cases.view --screenshots docs/img     # the pictures of docs/view.md
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, Case, Variant

MNIST_CONFIG = ROOT / "experiments/mnist/config.yaml"
MNIST_LEARNER = ROOT / "experiments/mnist/learner.npz"


@cache
def _browser():
    """One headless Chromium for the process (closed at exit); ImportError without Playwright."""
    try:
        import playwright  # noqa: F401
    except ImportError as e:
        raise ImportError(f"the viewer cases need Playwright and the system Chromium: {e}") from e
    from mplp_graph.viz.browser import chromium

    stack = contextlib.ExitStack()
    atexit.register(stack.close)
    return stack.enter_context(chromium())


@cache
def _pages() -> dict[str, Any]:
    import mplp_graph as mg
    from mplp_graph.templates.grid import grid
    from mplp_graph.viz.trace import load_source, record_config, write_trace

    tmp = Path(tempfile.mkdtemp(prefix="view_bench_"))
    spec, _ = load_source(MNIST_CONFIG)
    trace = record_config(MNIST_CONFIG, learner=MNIST_LEARNER)
    trace_path = write_trace(tmp / "mnist.trace", trace)
    return {"mnist": mg.view(spec, tmp / "mnist.html"), "grid64": mg.view(grid(64, 64, wrap=True, name="life_64x64"), tmp / "grid64.html"),
            "mnist_replay": mg.view(spec, tmp / "mnist_run.html", trace=trace_path), "trace": trace_path, "steps": trace.steps}


def _open(page_name: str):
    from mplp_graph.viz.browser import open_page

    html = _pages()[page_name]
    page, log = open_page(_browser(), html)
    if log["errors"] or log["blocked"] or len(log["requests"]) != 1:
        raise RuntimeError(f"{html}: errors {log['errors']}, blocked requests {log['blocked']}, requests {log['requests']}")
    return page, html


def _load_variant(page_name: str) -> Variant:
    def build():
        _browser(), _pages()  # the browser started, the pages and the trace written: untimed

        def load():
            page, html = _open(page_name)
            ready = page.evaluate("mgView.readyMs") / 1000
            page.close()
            return {"ready_s": ready, "file_mb": round(html.stat().st_size / 1e6, 3)}

        return load

    return Variant("engine", build)


def _replay_variant() -> Variant:
    def build():
        _browser()
        page, _ = _open("mnist_replay")
        atexit.register(page.close)
        return lambda: {"steps_per_second": page.evaluate("mgView.replayRate(2)")}

    return Variant("engine", build)


def _figures(outs: dict[str, Any]) -> dict:
    return dict(outs["engine"])


def _replay_figures(outs: dict[str, Any]) -> dict:
    p = _pages()
    rate = outs["engine"]["steps_per_second"]
    assert rate > 0, f"replay rate {rate}"
    return {"steps_per_second": round(rate, 1), "steps": p["steps"], "trace_mb": round(p["trace"].stat().st_size / 1e6, 3),
            "page_mb": round(p["mnist_replay"].stat().st_size / 1e6, 3)}


TARGETS = {"seconds_to_interactive": 2.0, "file_mb": 5.0, "trace_mb": 50.0, "steps_per_second": 10.0}
CASES = tuple(
    Case(f"view_open_{name}", (_load_variant(name),), check=_figures, rounds=5, tags=("separate", "view"),
         params={"page": name, "unit": "one fresh page load to mgView.ready", "targets": TARGETS})
    for name in ("mnist", "grid64", "mnist_replay")
) + (Case("view_replay_mnist", (_replay_variant(),), check=_replay_figures, rounds=3, tags=("separate", "view"),
          params={"unit": "mgView.replayRate(2)", "targets": TARGETS}),)


def screenshots(folder: Path) -> None:
    """view_mnist.png, view_grid.png and view_replay.png of docs/view.md into ``folder``."""
    import mplp_graph as mg
    from mplp_graph.templates.grid import grid
    from mplp_graph.viz.browser import open_page

    folder.mkdir(parents=True, exist_ok=True)
    browser, pages = _browser(), _pages()
    page, _ = open_page(browser, pages["mnist"], width=1500, height=820)
    page.evaluate("mgView.expand('W1')")
    page.evaluate("mgView.cy.fit(undefined, 30)")
    page.mouse.move(10, 10)
    page.screenshot(path=str(folder / "view_mnist.png"))
    page.close()
    small = mg.view(grid(16, 16, wrap=True, name="life_16x16"), pages["mnist"].parent / "grid16.html")
    page, _ = open_page(browser, small, width=1200, height=820)
    page.evaluate("mgView.expand('cell')")
    page.evaluate("mgView.cy.fit(undefined, 30)")
    page.screenshot(path=str(folder / "view_grid.png"))
    page.close()
    page, _ = open_page(browser, pages["mnist_replay"], width=1500, height=1500)
    page.evaluate("mgView.setStep(12)")
    page.screenshot(path=str(folder / "view_replay.png"), full_page=False)
    page.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="the viewer's pictures for docs/view.md (timings: python -m benchmarks.run_all --tag view)")
    ap.add_argument("--screenshots", type=Path, required=True, help="folder for view_mnist.png, view_grid.png, view_replay.png")
    screenshots(ap.parse_args().screenshots)
