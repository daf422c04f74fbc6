"""The command line: exit statuses, located messages for user errors, the demo's table."""

from __future__ import annotations

import re

import pytest

from mplp_graph.cli import main


def test_demo_meta_trains_and_evaluates(tmp_path, capsys):
    assert main(["demo", "--meta-steps", "3", "--runs", "4", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "115,081 learner parameters" in out  # as many as the published sinusoid learner
    assert re.search(r"meta-trained 3 steps in \d+ s: meta-loss [\d.]+ \(first 1\) -> [\d.]+", out), out
    rows = re.findall(r"^(MPLP.*|Adam\(0\.01\))\s+((?:[\d.]+\s*){6})$", out, flags=re.M)
    assert any(r[0].startswith("Adam") for r in rows) and any(r[0].startswith("MPLP") for r in rows), out
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert (tmp_path / "run" / "metrics.jsonl").exists()


def test_backprop_demo_prints_a_loss_table(capsys):
    assert main(["backprop", "--steps", "20"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"step\s+engine loss\s+jax\.grad loss\s+ratio", out), out
    rows = re.findall(r"^\s*(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$", out, flags=re.M)
    assert [int(r[0]) for r in rows] == [1, 20], out
    # the backprop protocol is gradient descent: the engine's losses are jax.grad's
    for _, engine, direct, ratio in rows:
        assert float(engine) == pytest.approx(float(direct), rel=1e-4)
        assert float(ratio) == pytest.approx(1.0, abs=1e-3)


def test_validate_missing_file_names_it(capsys):
    assert main(["validate", "nonexistent.yaml"]) == 2
    err = capsys.readouterr().err
    assert "nonexistent.yaml" in err
    assert "Traceback" not in err


def test_validate_reports_every_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: g\ngroups: {}\narrows: [1]\n")
    assert main(["validate", str(bad), "nonexistent.yaml"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "nonexistent.yaml" in err
    assert "2 of 2 file(s) failed" in err


def test_inspect_missing_file(capsys):
    assert main(["inspect", "nonexistent.yaml"]) == 2
    assert "nonexistent.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["validate", "--help"], ["inspect", "--help"], ["demo", "--help"], ["backprop", "--help"]])
def test_help_exits_zero(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "usage: mplp-graph" in capsys.readouterr().out


def test_bad_arguments_exit_two(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["backprop", "--steps", "many"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    capsys.readouterr()
    for argv in (["backprop", "--steps", "0"], ["demo", "--meta-steps", "0"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert f"argument {argv[1]}: expected an integer >= 1, got 0" in capsys.readouterr().err


def test_draw_writes_png_and_dot(tmp_path, capsys):
    from pathlib import Path

    graph = str(Path(__file__).resolve().parents[1] / "graphs" / "skip_mlp.yaml")
    assert main(["draw", graph, "-o", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").stat().st_size > 5_000
    assert main(["draw", graph, "-o", str(tmp_path / "g.dot"), "--phase", "forward"]) == 0
    assert "digraph" in (tmp_path / "g.dot").read_text()
    assert main(["draw", graph, "-o", str(tmp_path / "g.txt")]) == 2
    assert "expected a .png" in capsys.readouterr().err


def test_train_and_eval_tiny_config(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "graph: {sizes: [1, 3, 1], msg: 2, hidden: 2}\n"
        "task: {inner_steps: 2, batch: 4, cv_points: 5}\n"
        "meta: {steps: 2, outer_batch: 2, pool: 4, checkpoint_every: 1}\n"
        "eval: {runs: 3}\n"
    )
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--run-dir", str(run), "--no-progress"]) == 0
    assert (run / "ckpt_00000002.npz").exists() and len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert main(["eval", str(run), "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert "mplp_loss_final" in out and "adam_loss_final" in out
    assert (tmp_path / "ev" / "results.json").exists() and (tmp_path / "ev" / "eval.png").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("meta: {steps: -1, stepz: 3}\n")
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "meta.steps" in err and "meta.stepz" in err


def test_train_and_eval_an_mnist_config(tmp_path, capsys):
    """`train` meta-trains an MNIST config (task family mnist, validation split) and `eval` runs
    the MNIST protocol (accuracy before and after each step) for MPLP and the config's baselines,
    Adam and SGD."""
    pytest.importorskip("zarr")
    cfg = tmp_path / "mnist_tiny.yaml"
    cfg.write_text(
        "experiment: mnist_tiny\n"
        "graph: {sizes: [144, 8, 10], activation: sigmoid, loss: ce, msg: 2, hidden: 3, sharing: layers}\n"
        "task: {family: mnist, inner_steps: 2, batch: 4, cv_points: 4, validation: 1000}\n"
        "meta: {steps: 1, outer_batch: 1, pool: 2, lr: 5.0e-4, stats_rounds: 1, checkpoint_every: 1}\n"
        "eval: {runs: 3, baselines: {adam: 0.01, sgd: 0.1}}\n"
    )
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--run-dir", str(run), "--no-progress"]) == 0
    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    import json

    doc = json.loads((run / "results.json").read_text())
    for name in ("mplp", "adam", "sgd"):
        acc = doc["curves"][f"{name}_accuracy_mean"]  # before any update, then after each of the 2
        assert len(acc) == 3 and all(0.0 <= a <= 100.0 for a in acc)
    assert doc["metrics"]["meta_steps"] == 1 and "mplp_accuracy_final" in out
    assert (run / "eval.png").stat().st_size > 10_000
    # the same learner saved alone (as experiments/mnist/learner.npz) reproduces the numbers
    # without the run folder, and --transfers adds the step and (784, 100, 10) rows of Table 1
    from mplp_graph.meta.checkpoint import save_params_file
    from mplp_graph.meta.run import load_trained

    save_params_file(tmp_path / "learner.npz", load_trained(run)[1])
    ev = tmp_path / "ev"
    assert main(["eval", "--config", str(cfg), "--learner", str(tmp_path / "learner.npz"), "--transfers", "--runs-784", "1", "--out", str(ev)]) == 0
    doc2 = json.loads((ev / "results.json").read_text())
    assert doc2["curves"]["mplp_acc_mean"] == doc["curves"]["mplp_accuracy_mean"][1:]  # Table 1: after each update
    assert (ev / "mnist.png").stat().st_size > 10_000
    assert len(doc2["curves"]["step_acc_mean"]) == 2 and doc2["metrics"]["784_runs"] == 1 and "784_acc20" in doc2["metrics"]
    capsys.readouterr()
    assert main(["eval", "--learner", str(tmp_path / "learner.npz"), "--out", str(ev)]) == 2
    assert "--config CONFIG.yaml --learner FILE.npz --out FOLDER" in capsys.readouterr().err
    other = tmp_path / "other.yaml"
    other.write_text(cfg.read_text().replace("msg: 2", "msg: 3"))
    assert main(["eval", "--config", str(other), "--learner", str(tmp_path / "learner.npz"), "--out", str(ev)]) == 2
    assert "saved for another graph" in capsys.readouterr().err


def test_bad_experiment_configs_name_file_line_and_key(tmp_path, capsys):
    cases = {
        "meta:\n  steps: -1\n": (":2:3 meta.steps", "greater than or equal to 1"),
        "meta:\n  stepz: 3\n": (":2:3 meta.stepz", "Did you mean 'steps'?"),
        "meta:\n  steps: 3\n  steps: 4\n": (":3:3", "duplicate key 'steps'"),
        "graph: {sizes: [1, 4, 1]\n": (":2:1", ""),  # unclosed flow mapping: a YAML syntax error
        "- 1\n- 2\n": (":1:1", "top level of an experiment config must be a mapping"),
    }
    for n, (text, (where, what)) in enumerate(cases.items()):
        path = tmp_path / f"bad{n}.yaml"
        path.write_text(text)
        assert main(["train", str(path), "--run-dir", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert f"{path}{where}" in err and what in err, err
        assert "Traceback" not in err


def test_config_overrides_are_validated_and_named():
    from mplp_graph.errors import ConfigError
    from mplp_graph.meta.config import ExperimentConfig, apply_overrides

    config = apply_overrides(ExperimentConfig(), {"meta.steps": 7, "meta.remat": "hidden"}, "--set")
    assert (config.meta.steps, config.meta.remat) == (7, "hidden")
    cases = {
        "meta.stepz": (3, "--set meta.stepz: unknown key 'stepz' in the 'meta' section. Did you mean 'steps'?"),
        "meta.steps": (0, "--set meta.steps: expected a value greater than or equal to 1, got 0"),
        "steps": (3, "--set steps: expected SECTION.KEY with SECTION one of graph, task, meta, eval"),
    }
    for key, (value, message) in cases.items():
        with pytest.raises(ConfigError) as e:
            apply_overrides(ExperimentConfig(), {key: value}, "--set")
        assert message in str(e.value), str(e.value)


def test_sweep_script_reports_bad_config_and_overrides(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "experiments" / "sweep.py"
    bad = tmp_path / "bad.yaml"
    bad.write_text("meta:\n  stepz: 3\n")
    runs = {
        (str(bad),): f"{bad}:2:3 meta.stepz: unknown key 'stepz'",
        ("experiments/sinusoid/config.yaml", "--set", "meta.remat=half"): "--set meta.remat: expected a boolean (true or false) or one of",
    }
    for (config, *extra), message in runs.items():
        out = subprocess.run([sys.executable, str(script), "--config", config, "--run-dir", str(tmp_path / "run"), *extra],
                             cwd=script.parents[1], capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not (tmp_path / "run").exists()  # nothing written for a bad config
