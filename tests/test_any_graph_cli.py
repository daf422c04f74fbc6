"""Any graph with learner arrows, from the command line: ``mplp-graph train`` and ``eval`` on a
graph file that is not a template (the docs' custom sparse/dense graph), a user's task family
given as ``module:callable``, and the located errors of configs that cannot work (exit 2,
nothing written to the run folder)."""

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mplp_graph.cli import main

ROOT = Path(__file__).resolve().parents[1]
GRAPH = ROOT / "graphs" / "sparse_dense_mplp.yaml"

TINY = """\
experiment: custom_tiny
graph:
  file: {graph}
task:
  family: {family}
  inner_steps: 3
  batch: 4
  cv_points: 8
  args: {args}
meta:
  steps: 3
  outer_batch: 2
  pool: 4
  lr: 1.0e-3
  checkpoint_every: 2
eval:
  runs: 4
  baselines: {{sgd: 0.1, adam: 0.01}}
"""


def _config(tmp_path: Path, name: str = "config.yaml", graph: Path = GRAPH, family: str = "linear", args: str = "{n_in: 4, n_out: 2}") -> Path:
    path = tmp_path / name
    path.write_text(TINY.format(graph=graph, family=family, args=args))
    return path


def test_train_and_eval_a_graph_file_from_the_command_line(tmp_path, capsys):
    config, run = _config(tmp_path), tmp_path / "run"
    assert main(["train", str(config), "--run-dir", str(run), "--no-progress"]) == 0
    assert {"config.yaml", "graph.yaml", "metrics.jsonl", "params.npz", "ckpt_00000003.npz"} <= {p.name for p in run.iterdir()}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and r["finite"] for r in rows) and {"hint", "cv"} <= set(rows[0])
    # the run folder stands on its own: eval reads its graph.yaml, not the original file
    assert main(["eval", str(run)]) == 0
    doc = json.loads((run / "results.json").read_text())
    m = doc["metrics"]
    assert doc["graph"] == "sparse_dense_mplp" and doc["runs"] == 4 and m["meta_steps"] == 3
    for method in ("mplp", "sgd", "adam"):
        assert np.isfinite(m[f"{method}_loss_final"]) and m[f"{method}_loss_final"] > 0
        assert len(doc["curves"][f"{method}_loss_mean"]) == 3 + 1  # before any update, then after each
    # SGD(0.1) on a linear teacher lowers the loss over the 3 steps (the baseline really trains)
    sgd = doc["curves"]["sgd_loss_mean"]
    assert sgd[-1] < sgd[0]
    assert (run / "eval.png").stat().st_size > 10_000
    # resume: 2 more steps continue from the checkpoint at step 3
    assert main(["train", str(config), "--run-dir", str(run), "--steps", "5", "--no-progress"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]


def test_a_user_task_family_as_module_callable(tmp_path):
    (tmp_path / "my_tasks.py").write_text(textwrap.dedent("""\
        from mplp_graph.tasks.linear import LinearTeacher

        def teachers(inner_steps=5, batch=8, scale=1.0):
            return LinearTeacher(n_in=4, n_out=2, inner_steps=inner_steps, batch=batch, cv_points=16, noise=0.01 * scale)
        """))
    config = _config(tmp_path, family="my_tasks:teachers", args="{scale: 2.0}")
    config.write_text(config.read_text().replace("  cv_points: 8\n", ""))  # the factory takes no cv_points
    run = tmp_path / "run"
    assert main(["train", str(config), "--run-dir", str(run), "--steps", "2", "--no-progress"]) == 0
    saved = (run / "config.yaml").read_text()
    assert "my_tasks:teachers" in saved and "scale: 2.0" in saved and "cv_points" not in saved
    # the run folder evaluates with the family its config made, from its own copy of the module
    assert (run / "my_tasks.py").read_text() == (tmp_path / "my_tasks.py").read_text()
    assert main(["eval", str(run), "--runs", "3"]) == 0
    assert json.loads((run / "results.json").read_text())["runs"] == 3


def _fails(capsys, tmp_path, config: Path, *needles: str) -> str:
    run = tmp_path / "never"
    assert main(["train", str(config), "--run-dir", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    assert not run.exists(), "a run folder was written for a config that cannot run"
    return err


def test_a_graph_without_learner_arrows_is_a_located_error(tmp_path, capsys):
    config = _config(tmp_path, graph=ROOT / "examples" / "custom_graph.yaml")
    _fails(capsys, tmp_path, config, f"{config}:3:", "graph.file", "no learner arrows", "docs/custom-graph.md")


def test_task_batches_that_do_not_fit_the_graph_are_a_located_error(tmp_path, capsys):
    config = _config(tmp_path, args="{n_in: 3, n_out: 2}")
    _fails(capsys, tmp_path, config, f"{config}:", "task", "xt have shape (3, 4, 3)", "x.value needs")


def test_a_learner_input_nothing_fills_is_a_located_error(tmp_path, capsys):
    text = GRAPH.read_text()
    text = text.replace("      w: {init: {kind: normal, std: 0.5}}\n      x: {batched: true}", "      w: {init: {kind: normal, std: 0.5}}\n      x: {batched: true}\n      extra: {batched: true}", 1)
    start = text.index("  - name: S.learn")
    text = text[:start] + text[start:].replace("inputs: [g, w, x]", "inputs: [g, w, extra]", 1)
    graph = tmp_path / "graph.yaml"
    graph.write_text(text)
    config = _config(tmp_path, graph=graph)
    _fails(capsys, tmp_path, config, f"{config}:3:", "learner arrow 'S.learn' reads S.extra", "always zero")


@pytest.mark.parametrize("family, args, needle, line", [
    ("no_such_module:make", "{}", "cannot import module 'no_such_module'", 5),
    ("mplp_graph.tasks.linear:NoSuchFamily", "{}", "has no callable 'NoSuchFamily'", 5),
    ("linear", "{n_in: 4, widht: 3}", "cannot be called with", 9),
    ("collections:OrderedDict", "{}", "needs an integer attribute 'inner_steps'", None),
])
def test_task_families_that_cannot_be_used_are_located_errors(tmp_path, capsys, family, args, needle, line):
    config = _config(tmp_path, family=family, args=args)
    err = _fails(capsys, tmp_path, config, needle)
    if line is not None:
        assert err.startswith(f"{config}:{line}:"), err


def test_a_missing_graph_file_and_both_file_and_template_keys_are_located_errors(tmp_path, capsys):
    config = _config(tmp_path, graph=tmp_path / "nowhere.yaml")
    _fails(capsys, tmp_path, config, f"{config}:3:", "no such graph file")
    both = tmp_path / "both.yaml"
    both.write_text(_config(tmp_path).read_text().replace("graph:\n", "graph:\n  sizes: [1, 4, 1]\n"))
    _fails(capsys, tmp_path, both, f"{both}:", "give either 'file'", "remove sizes")
