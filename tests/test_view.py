"""The interactive viewer and trace files (docs/view.md): traces recorded, written and refused
(other graph, damage, unknown names, size cap) with nothing half-written; the page escapes what
comes from the YAML; and in headless Chromium (one browser for the module): no console error,
no network request, as many groups and arrows as the spec, a click expands a group, the slider
shows the recorded values of the step it is moved to."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

import mplp_graph as mg
from mplp_graph.cli import main
from mplp_graph.viz.browser import chromium_path
from mplp_graph.viz.html import agent_window, render_html, window_edges
from mplp_graph.viz.trace import TraceError, read_trace, record_graph, write_trace

ROOT = Path(__file__).resolve().parent.parent
LIFE = ROOT / "graphs/life_grid.yaml"
ASSETS = ROOT / "mplp_graph/viz/assets"

XSS_YAML = """
name: '<script>window.__pwned=1</script>'
description: '"><img src=x onerror="window.__pwned=2"> </script><script>window.__pwned=3</script> <!--'
groups:
  '<script>window.__pwned=4</script>':
    kind: '"><img src=x onerror=window.__pwned=5>'
    shape: [3]
    state: {v: {}}
  b:
    kind: weight
    shape: [3]
    state: {v: {}}
arrows:
- name: '"><img src=x onerror=window.__pwned=6>'
  from: '<script>window.__pwned=4</script>'
  to: b
  op: identity
  inputs: [v]
  into: v
"""


def life_step(s: np.ndarray) -> np.ndarray:
    """Conway's rule on a torus, in numpy (the reference for the recorded steps)."""
    n = sum(np.roll(np.roll(s, dr, 0), dc, 1) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0))
    return ((n == 3) | ((s > 0.5) & (n == 2))).astype(np.float32)


@pytest.fixture(scope="module")
def life():
    spec = mg.load_graph(LIFE)
    return spec, record_graph(spec, steps=4, random_init=["cell.s=bernoulli:0.4"], seed=3)


# ---------------------------------------------------------------------------------------------
# traces (no browser)


def test_trace_records_the_run_and_reads_back(life, tmp_path):
    spec, trace = life
    assert [r.name for r in trace.records] == ["cell.s", "sense"]  # persistent field, then the message not already recorded
    s = trace.values["cell.s"]
    assert s.shape == (5, 8, 8) and 0 < s[0].sum() < 64
    for t in range(4):
        np.testing.assert_array_equal(s[t + 1], life_step(s[t]))
        neighbours = sum(np.roll(np.roll(s[t], dr, 0), dc, 1) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0))
        np.testing.assert_array_equal(trace.values["sense"][t + 1], neighbours)  # the aggregated message: live neighbours
    path = write_trace(tmp_path / "life.trace", trace)
    back = read_trace(path, spec)
    assert back.steps == 4 and [r.name for r in back.records] == ["cell.s", "sense"]
    for r in trace.records:
        np.testing.assert_array_equal(back.values[r.name], trace.values[r.name])


def test_trace_refuses_other_graphs_and_damaged_files(life, tmp_path):
    spec, trace = life
    path = write_trace(tmp_path / "life.trace", trace)
    other = mg.load_graph(ROOT / "graphs/async_diffusion.yaml")
    with pytest.raises(TraceError, match=r"life.trace was recorded from graph 'life_grid'.*not from graph 'async_diffusion'"):
        read_trace(path, other)
    data = path.read_bytes()
    (tmp_path / "cut.trace").write_bytes(data[: len(data) // 2])
    with pytest.raises(TraceError, match=r"cut.trace: not a readable trace .*record it again"):
        read_trace(tmp_path / "cut.trace", spec)
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = z.getinfo("r0.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)  # the member's compressed bytes
    flipped = bytearray(data)
    flipped[start + info.compress_size // 2] ^= 0xFF
    (tmp_path / "bad.trace").write_bytes(bytes(flipped))
    with pytest.raises(TraceError, match="bad.trace: not a readable trace"):
        read_trace(tmp_path / "bad.trace", spec)


def test_trace_cli_errors_exit_2_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "run.trace"
    cases = [
        (["--field", "cell.q"], "group 'cell' of graph 'life_grid' has no field 'q'; its fields: s, n"),
        (["--field", "cel.s"], "no group 'cel' in graph 'life_grid'"),
        (["--arrow", "sens"], "graph 'life_grid' has no arrow 'sens' (did you mean sense"),
        (["--steps", "100000", "--max-mb", "1"], "the trace would hold 51.2 MB, more than the cap of 1 MB (largest: cell.s (25.6 MB)"),
    ]
    for extra, message in cases:
        assert main(["trace", str(LIFE), "-o", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err, err
        assert "Traceback" not in err
        assert not out.exists() and not list(tmp_path.iterdir())
    out.write_bytes(b"previous")
    assert main(["trace", str(LIFE), "-o", str(out), "--arrow", "update", "--max-mb", "0.0001"]) == 2
    assert out.read_bytes() == b"previous"  # a refused trace leaves the old file as it was
    other = tmp_path / "other.trace"
    assert main(["trace", str(LIFE), "-o", str(other), "--steps", "2", "--random-init", "cell.s=bernoulli:0.5"]) == 0
    assert main(["view", str(ROOT / "graphs/async_diffusion.yaml"), "--trace", str(other), "-o", str(tmp_path / "x.html")]) == 2
    assert "recorded from graph 'life_grid'" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


def test_trace_of_an_experiment_config(tmp_path, capsys):
    """One inner loop of the sinusoid learner: the recorded weights are those the engine's step
    gives, and the metrics are measured."""
    out = tmp_path / "sin.trace"
    config, learner = ROOT / "experiments/sinusoid/config.yaml", ROOT / "experiments/sinusoid/learner.npz"
    assert main(["trace", str(config), "--learner", str(learner), "--steps", "2", "--field", "W1.w", "--arrow", "b1->W1", "-o", str(out)]) == 0
    from mplp_graph.viz.trace import load_source

    spec, is_config = load_source(config)
    assert is_config
    t = read_trace(out, spec)
    assert t.values["W1.w"].shape == (3, 20, 20) and t.values["b1->W1"].shape[:3] == (3, 20, 20)
    assert not np.array_equal(t.values["W1.w"][0], t.values["W1.w"][2])  # the learner changed the weights
    assert set(t.metrics) == {"loss", "seen_loss", "train_loss"} and np.isnan(t.metrics["train_loss"][0]) and np.all(np.isfinite(t.metrics["loss"]))


# ---------------------------------------------------------------------------------------------
# the page (no browser)


def test_vendored_library_matches_its_record():
    record = json.loads((ASSETS / "vendor.json").read_text())["cytoscape.min.js"]
    assert hashlib.sha256((ASSETS / "cytoscape.min.js").read_bytes()).hexdigest() == record["sha256"]
    assert "Permission is hereby granted" in (ASSETS / "cytoscape.LICENSE").read_text()


def test_agent_windows_and_edges():
    assert agent_window((144, 50), 1024) == (32, 32) and agent_window((64, 64), 1024) == (32, 32)
    assert agent_window((7200,), 1024) == (1024,) and agent_window((10, 3), 1024) == (10, 3) and agent_window((), 1) == ()
    spec = mg.load_graph(ROOT / "graphs/mnist_mlp.yaml")
    a = next(a for a in spec.arrows if a.map == "i -> i j")
    w_src, w_dst = (4,), (4, 3)
    edges, total = window_edges(spec, a, w_src, w_dst)
    assert total == math.prod(spec.groups[a.dst].shape)
    assert sorted(map(tuple, edges.tolist())) == [(i, i * 3 + j) for i in range(4) for j in range(3)]  # x[i] -> W[i, j]


def test_page_escapes_user_text(tmp_path):
    spec = mg.loads_graph(XSS_YAML)
    html = mg.view(spec, tmp_path / "x.html").read_text()
    assert len(re.findall(r"<script", html)) == 3  # the data block and the two inlined scripts, nothing from the YAML
    assert "<img" not in html and "window.__pwned" in html  # present, but only escaped inside the JSON block
    assert html.count("</script>") == 3


# ---------------------------------------------------------------------------------------------
# in a real browser

needs_browser = pytest.mark.skipif(chromium_path() is None, reason="no Chromium on this machine (.ci/run installs the Debian package chromium)")


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("playwright", reason="the playwright package (test extra) is not installed")
    from mplp_graph.viz.browser import chromium

    with chromium() as b:
        yield b


def clean(log):
    assert log["errors"] == [], log["errors"]
    assert log["blocked"] == [] and len(log["requests"]) == 1 and log["requests"][0].startswith("file://"), log


@needs_browser
def test_browser_group_view_counts_expand_search(browser, tmp_path):
    from mplp_graph.viz.browser import open_page
    from mplp_graph.viz.trace import load_source

    spec, _ = load_source(ROOT / "experiments/mnist/config.yaml")  # the MNIST (144, 50, 10) MPLP graph
    page, log = open_page(browser, mg.view(spec, tmp_path / "mnist.html"))
    clean(log)
    counts = page.evaluate("mgView.counts()")
    assert counts == {"groups": len(spec.groups), "arrows": len(spec.arrows), "agents": 0, "agentEdges": 0}
    assert page.text_content("#title") == spec.name
    box = page.locator("#cy").bounding_box()
    pos = page.evaluate("mgView.cy.getElementById('g:W1').renderedPosition()")
    page.mouse.click(box["x"] + pos["x"], box["y"] + pos["y"])  # a real click on the W1 box
    counts = page.evaluate("mgView.counts()")
    assert page.evaluate("mgView.isExpanded('W1')") and counts["agents"] == 500  # 50 x 10 weights, all shown
    assert counts["agentEdges"] == 0 and counts["groups"] == len(spec.groups)  # no other group expanded yet
    assert page.text_content("#details .name") == "W1" and "[50, 10] = 500" in page.text_content("#details")
    pos = page.evaluate("mgView.cy.getElementById('g:a0').renderedPosition()")
    page.mouse.click(box["x"] + pos["x"], box["y"] + pos["y"])
    assert page.evaluate("mgView.counts()")["agentEdges"] == 2 * 50 * 10  # a0 -> W1 (i -> i j) and W1 -> a0 (i j -> i), agent by agent
    page.evaluate("mgView.collapse('a0')")
    # a click on the expanded box itself (between its top edge and its first row of agents) folds it
    x, y = page.evaluate("""() => { const g = mgView.cy.getElementById('g:W1'), top = g.renderedBoundingBox({includeLabels: false});
                                    const first = g.children().renderedBoundingBox(); return [(top.x1 + top.x2) / 2, (top.y1 + first.y1) / 2]; }""")
    page.mouse.click(box["x"] + x, box["y"] + y)
    assert page.evaluate("mgView.counts().agents") == 0  # a second click folds it
    page.fill("#search", "softmax")
    assert page.text_content("#search-count") == f"{sum('softmax' in n for n in [*spec.groups, *(a.name for a in spec.arrows)])} matches"
    prog = mg.compile_graph(spec)
    assert page.locator("#kernels tbody tr").count() == sum(len(ks) for stages in prog.phases.values() for ks in stages)
    clean(log)
    page.close()


@needs_browser
def test_browser_nothing_from_the_yaml_executes(browser, tmp_path):
    from mplp_graph.viz.browser import open_page

    spec = mg.loads_graph(XSS_YAML)
    page, log = open_page(browser, mg.view(spec, tmp_path / "x.html"))
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.evaluate("mgView.expand('<script>window.__pwned=4</script>')")
    page.hover("#cy")
    assert page.evaluate("window.__pwned") is None and dialogs == []
    assert page.evaluate("document.querySelectorAll('img').length") == 0
    assert page.evaluate("document.scripts.length") == 3
    assert page.text_content("#title") == spec.name  # shown as text, literally
    assert page.evaluate("mgView.counts()")["groups"] == 2 and page.evaluate("mgView.counts()")["agents"] == 3
    clean(log)
    page.close()


@needs_browser
def test_browser_replay_slider_shows_the_recorded_step(browser, life, tmp_path):
    from mplp_graph.viz.browser import open_page

    spec, trace = life
    path = write_trace(tmp_path / "life.trace", trace)
    page, log = open_page(browser, mg.view(spec, tmp_path / "run.html", trace=path))
    clean(log)
    first = None
    for t in (3, 0, 4, 1):
        page.locator("#slider").fill(str(t))
        h = page.evaluate("mgView.heatmap('cell.s')")
        assert h["step"] == t and page.text_content("#step-label").startswith(f"step {t} / 4")
        np.testing.assert_array_equal(np.asarray(h["values"], np.float32), trace.values["cell.s"][t].ravel())
        pixels = page.evaluate(
            """([sel, px, rows, cols]) => { const c = document.querySelector(sel).getContext('2d'); const out = [];
               for (let r = 0; r < rows; r++) for (let k = 0; k < cols; k++) { const d = c.getImageData(k * px + px / 2, r * px + px / 2, 1, 1).data; out.push([d[0], d[1], d[2]]); }
               return out; }""",
            ['#heatmaps .card[data-record="cell.s"] canvas.heat', h["px"], h["rows"], h["cols"]],
        )
        want = [page.evaluate("([n, v]) => mgView.colorOf(n, v)", ["cell.s", float(v)]) for v in trace.values["cell.s"][t].ravel()]
        assert pixels == want
        if first is None:
            first = pixels
    assert pixels != first  # the heatmap changed with the step
    clean(log)
    page.close()
