"""The examples and the documentation's code run and say what they claim.

* Every ``examples/*.py`` runs as a subprocess with tiny settings, in a temporary folder, writing
  only into the folder given by its ``--out`` flag; the tests check the files it writes and the
  numbers it prints.
* Every ```python and ```bash block of the documentation pages in ``DOC_PAGES`` runs, in order,
  in one namespace per page, in a temporary folder that links ``graphs/`` and ``examples/``.
  A ```text block right after a code block is its expected output: it must match what the
  block printed, line by line, with numbers compared to 2% (``...`` on a line of its own
  matches any number of lines). Bash blocks run with the venv's ``bin`` on ``PATH``; a nonzero
  exit status is printed as ``[exit status N]``, so it must appear in the expected output.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
DOC_PAGES = ("docs/api.md", "docs/custom-graph.md")
TIMEOUT_S = 600  # a cold compilation cache on a loaded 2-core machine; warm runs take seconds
MARK = "@@@ end of block {} @@@"
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
FLOAT_REL = 2e-2
FLOAT_ABS = 1e-6


def run_example(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], check=False, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S
    )


def finite_numbers(text: str) -> list[float]:
    return [float(x) for x in NUMBER.findall(text)]


# ---------------------------------------------------------------------------------------------
# examples


def test_custom_graph_example(tmp_path):
    out = tmp_path / "out"
    r = run_example("custom_graph.py", "--out", str(out), "--steps", "40", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # the graph printer, the compile report, the gradient check and the loss lines
    assert "graph sparse_dense" in r.stdout and "gather+segment" in r.stdout, r.stdout
    diff = float(re.search(r"max \|graph step - jax\.grad SGD step\| over W, S, b: (\S+)", r.stdout).group(1))
    assert diff < 1e-5
    losses = [float(x) for x in re.findall(r"^step +\d+ +loss (\S+)$", r.stdout, flags=re.MULTILINE)]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses), r.stdout
    assert losses[-1] < 0.1 * losses[0]  # a linear teacher the model can fit exactly
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_loss"] == pytest.approx(losses[-1], abs=1e-6)  # printed with 6 decimals
    assert len(summary["losses"]) == 40
    for name in ("sparse_dense.png", "sparse_dense_agents.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    dot = (out / "sparse_dense.dot").read_text()
    assert dot.startswith('digraph "sparse_dense"') and '"S" -> "out"' in dot
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing outside --out


def test_custom_graph_example_reports_a_bad_graph(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((EXAMPLES / "custom_graph.yaml").read_text().replace("op: l2_grad", "op: l2grad"))
    r = run_example("custom_graph.py", "--graph", str(bad), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 2
    assert re.search(r"bad\.yaml:\d+:\d+ arrows\[6\]\.op: unknown op 'l2grad'\. Did you mean 'l2_grad'\?", r.stdout), r.stdout


def test_sinusoid_example(tmp_path):
    out = tmp_path / "out"
    r = run_example("sinusoid.py", "--quick", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert re.search(r"graph mplp_1-8-1_relu_l2_gru: 7 groups, 14 arrows, [\d,]+ learner parameters", r.stdout), r.stdout
    assert len(re.findall(r"^meta-step +\d+ +meta-loss [\d.]+ +cv [\d.]+", r.stdout, flags=re.MULTILINE)) == 3, r.stdout
    rows = re.findall(r"^(MPLP, untrained|MPLP, 3 meta-steps|Adam\(0\.01\)) +((?:[\d.]+ *){6})$", r.stdout, flags=re.MULTILINE)
    assert [name for name, _ in rows] == ["MPLP, untrained", "MPLP, 3 meta-steps", "Adam(0.01)"], r.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["runs"] == 4 and results["meta_steps"] == 3 and len(results["meta_loss"]) == 3
    for name, printed in rows:
        curve = results["eval_mean"][name]
        assert len(curve) == 6 and all(math.isfinite(v) and 0 < v < 1 for v in curve), (name, curve)
        assert finite_numbers(printed) == pytest.approx(curve, abs=1e-4)
    assert (out / "sinusoid.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_mnist_example(tmp_path):
    from mplp_graph.tasks.mnist import DataError, load_mnist

    try:
        load_mnist()
    except DataError as e:
        pytest.skip(f"MNIST is not available: {e}")
    out = tmp_path / "out"
    r = run_example("mnist.py", "--quick", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "MNIST: 60,000 training and 10,000 test images, 144 inputs each" in r.stdout, r.stdout
    results = json.loads((out / "results.json").read_text())
    assert (results["runs"], results["steps"]) == (2, 3)
    assert results["learner"].startswith("published") == (REPO.parent / "shared" / "reference-weights" / "mnist_weights_00005000.npy").exists()
    for name in ("mplp", "adam"):
        acc = results[name]["acc_mean"]
        assert len(acc) == 3 and all(0.0 <= a <= 100.0 for a in acc), (name, acc)
        label = "MPLP" if name == "mplp" else r"Adam\(0\.01\)"
        line = re.search(rf"^{label} .*acc@3 ([\d.]+) \+- ([\d.]+)$", r.stdout, flags=re.MULTILINE)
        assert float(line.group(1)) == pytest.approx(results[name]["acc_last_mean"], abs=0.01), r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_mnist_example_without_data_exits_3(tmp_path):
    r = run_example("mnist.py", "--quick", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "MNIST is not available" in r.stdout and "nowhere does not exist" in r.stdout


# ---------------------------------------------------------------------------------------------
# documentation code blocks


@dataclass(frozen=True)
class Block:
    lang: str  # python or bash
    code: str
    line: int  # 1-based line of the opening fence in the page
    expected: str | None  # the ```text block right after it, if any
    needs: tuple[str, ...] = ()  # words after the language: needs-mnist, needs-weights


FENCE = re.compile(r"^```([\w-]*)([^\n]*)\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
SHARED = REPO.parent / "shared"  # the published weights live in ../shared/reference-weights
WEIGHTS = SHARED / "reference-weights"


def missing_requirements() -> set[str]:
    """The ``needs-*`` tags whose requirement this machine lacks."""
    from mplp_graph.tasks.mnist import DataError, load_mnist

    missing = set()
    try:
        load_mnist()
    except DataError:
        missing.add("needs-mnist")
    if not (WEIGHTS / "sinusoid_weights_00035869.npy").exists():
        missing.add("needs-weights")
    return missing


def doc_blocks(text: str) -> list[Block]:
    """The python and bash blocks of a markdown page, each with the text block that follows it."""
    fences = list(FENCE.finditer(text))
    blocks = []
    for k, m in enumerate(fences):
        if m.group(1) not in ("python", "bash"):
            continue
        expected = None
        nxt = fences[k + 1] if k + 1 < len(fences) else None
        if nxt is not None and nxt.group(1) == "text" and not text[m.end() : nxt.start()].strip():
            expected = nxt.group(3)
        needs = tuple(m.group(2).split())
        blocks.append(Block(m.group(1), m.group(3), text.count("\n", 0, m.start()) + 1, expected, needs))
    return blocks


def _driver_source() -> str:
    return "\n".join(
        [
            "import json, subprocess, sys",
            "from mplp_graph.cache import enable_compilation_cache",
            "enable_compilation_cache()  # as the test session does (tests/conftest.py)",
            "blocks = json.load(open(sys.argv[1]))",
            "ns = {'__name__': '__doc__'}",
            "for k, b in enumerate(blocks):",
            "    if b['lang'] == 'python':",
            "        exec(compile(b['code'], b['page'] + ':' + str(b['line']), 'exec'), ns)",
            "    else:",
            "        r = subprocess.run(b['code'], shell=True, executable='/bin/bash', stdout=subprocess.PIPE,",
            "                           stderr=subprocess.STDOUT, text=True)",
            "        sys.stdout.write(r.stdout)",
            "        if r.returncode:",
            "            print('[exit status %d]' % r.returncode)",
            f"    print({MARK!r}.format(k), flush=True)",
        ]
    )


def run_page(page: str, tmp: Path, skip: set[str]) -> tuple[list[Block], list[str], subprocess.CompletedProcess]:
    """Run the blocks of ``page`` (but those tagged with a word in ``skip``) in a folder under
    ``tmp`` laid out like the repository (``graphs``, ``examples``, and ``../shared``); returns
    the blocks run, each block's output, and the process (its stderr holds a traceback naming
    ``page:line`` if a block raised)."""
    blocks = [b for b in doc_blocks((REPO / page).read_text()) if not set(b.needs) & skip]
    workdir = tmp / "repo"
    workdir.mkdir(exist_ok=True)
    links = {workdir / "graphs": REPO / "graphs", workdir / "examples": EXAMPLES, tmp / "shared": SHARED}
    for link, target in links.items():
        if not link.exists() and target.exists():
            link.symlink_to(target)
    spec = workdir / "_blocks.json"
    spec.write_text(json.dumps([{"lang": b.lang, "code": b.code, "line": b.line, "page": page} for b in blocks]))
    driver = workdir / "_driver.py"
    driver.write_text(_driver_source())
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", MPLGBACKEND="Agg")
    proc = subprocess.run([sys.executable, str(driver), str(spec)], check=False, cwd=workdir, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    outputs, rest = [], proc.stdout
    for k in range(len(blocks)):
        mark = MARK.format(k) + "\n"
        if mark not in rest:
            break
        head, rest = rest.split(mark, 1)
        outputs.append(head)
    return blocks, outputs, proc


def _line_matches(expected: str, actual: str) -> bool:
    if NUMBER.sub("#", expected.rstrip()) != NUMBER.sub("#", actual.rstrip()):
        return False
    for e, a in zip(NUMBER.findall(expected), NUMBER.findall(actual)):
        if "." in e or "e" in e.lower():
            if not math.isclose(float(e), float(a), rel_tol=FLOAT_REL, abs_tol=FLOAT_ABS):
                return False
        elif e != a:  # integers (shapes, counts, line numbers) must be exact
            return False
    return True


def output_matches(expected: str, actual: str) -> bool:
    """``expected`` (with ``...`` lines matching any lines) against ``actual``, line by line."""
    exp = expected.rstrip("\n").split("\n")
    act = actual.rstrip("\n").split("\n") if actual.strip() else []
    segments: list[list[str]] = [[]]
    for line in exp:
        if line.strip() == "...":
            segments.append([])
        else:
            segments[-1].append(line)
    pos = 0
    for k, seg in enumerate(segments):
        anchored_start = k == 0
        anchored_end = k == len(segments) - 1
        starts = [pos] if anchored_start else range(pos, len(act) - len(seg) + 1)
        found = None
        for s in starts:
            if s + len(seg) > len(act) or (anchored_end and s + len(seg) != len(act)):
                continue
            if all(_line_matches(e, a) for e, a in zip(seg, act[s : s + len(seg)])):
                found = s
                break
        if found is None:
            return False
        pos = found + len(seg)
    return True


@pytest.mark.parametrize("page", DOC_PAGES)
def test_doc_code_blocks_run_and_print_what_the_page_says(page, tmp_path):
    blocks, outputs, proc = run_page(page, tmp_path, missing_requirements())
    assert blocks, f"{page} has no code blocks"
    assert proc.returncode == 0 and len(outputs) == len(blocks), (
        f"{page}: block {len(outputs) + 1} of {len(blocks)} failed (at line {blocks[len(outputs)].line if len(outputs) < len(blocks) else '?'})\n"
        + proc.stderr[-4000:]
    )
    checked = 0
    for b, out in zip(blocks, outputs):
        if b.expected is None:
            continue
        assert output_matches(b.expected, out), f"{page}:{b.line}: the block printed\n{out}\nbut the page says\n{b.expected}"
        checked += 1
    assert checked > 0, f"{page}: no block has an expected output"


def test_custom_graph_page_shows_the_example_file():
    """docs/custom-graph.md shows examples/custom_graph.yaml in full, as it is."""
    text = (REPO / "docs" / "custom-graph.md").read_text()
    yaml_blocks = [m.group(3) for m in FENCE.finditer(text) if m.group(1) == "yaml"]
    assert (EXAMPLES / "custom_graph.yaml").read_text() in yaml_blocks


def test_output_matching_rules():
    """The matcher the doc test relies on: numbers within 2%, integers exact, ``...`` gaps."""
    assert output_matches("loss 0.1000\n", "loss 0.1010\n")
    assert not output_matches("loss 0.1000\n", "loss 0.1100\n")
    assert not output_matches("shape (8, 4)\n", "shape (8, 5)\n")
    assert output_matches("a\n...\nd\n", "a\nb\nc\nd\n")
    assert not output_matches("a\nd\n", "a\nb\nc\nd\n")
    assert output_matches("...\nc\n...\n", "a\nb\nc\nd\n")
    assert not output_matches("a\n...\nx\n", "a\nb\nc\nd\n")
    blocks = doc_blocks("```python\nprint(1)\n```\n\n```text\n1\n```\n\n```python needs-mnist\nx = 2\n```\ntext\n```text\n2\n```\n")
    assert [(b.lang, b.expected, b.needs) for b in blocks] == [("python", "1\n", ()), ("python", None, ("needs-mnist",))]


def test_api_page_lists_every_public_name():
    import mplp_graph as mg

    text = (REPO / "docs" / "api.md").read_text()
    missing = [name for name in mg.__all__ if f"mg.{name}" not in text]
    assert not missing, f"docs/api.md does not document {missing}"
