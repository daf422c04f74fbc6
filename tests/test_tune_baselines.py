"""Tuned baselines (eval.tune, eval --tune): every rate of each optimizer on the validation split,
the best one chosen, only the chosen ones on the test split."""

import json
from pathlib import Path

import jax
import pytest

from mplp_graph.errors import ConfigError
from mplp_graph.meta.checkpoint import save_params_file
from mplp_graph.meta.config import load_experiment_config
from mplp_graph.meta.run import best_rate, evaluate, load_setup, write_results

TINY = """experiment: tiny
graph: {sizes: [1, 8, 1], learner: mlp}
task: {family: sinusoid, inner_steps: 2, batch: 5, cv_points: 10}
meta: {steps: 1, outer_batch: 2, pool: 4, stats_rounds: 0}
eval: {runs: 3, baselines: {adam: [0.1, 0.001], sgd: [0.5]}, EXTRA}
"""


def _config(tmp_path: Path, extra: str = "tune: true") -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.replace("EXTRA", extra))
    return path


def test_chosen_rates_are_the_validation_best_and_only_they_reach_the_test_split(tmp_path):
    setup = load_setup(_config(tmp_path))
    results = evaluate(setup, setup.prog.init_params(jax.random.PRNGKey(0)))
    doc = write_results(setup, results, tmp_path / "out", command="test", meta_steps=None, train_s=None)
    assert json.loads((tmp_path / "out" / "results.json").read_text())["tuning"] == doc["tuning"]
    tuning = doc["tuning"]
    assert tuning["split"] == "validation" and tuning["metric"] == "loss" and tuning["better"] == "lower" and tuning["runs"] == 3
    assert {o: [row["lr"] for row in rows] for o, rows in tuning["grid"].items()} == {"adam": [0.1, 0.001], "sgd": [0.5]}
    for optimizer, rows in tuning["grid"].items():  # the sinusoid's loss: lowest wins
        assert tuning["chosen"][optimizer] == min(rows, key=lambda r: r["loss_final"])["lr"]
    assert tuning["at_grid_edge"] == {"adam": True, "sgd": False}  # two rates: either is an edge; one rate: no grid
    # the test split: the learned protocol and one tuned rate per optimizer, no untuned rate
    assert set(results["keys"].values()) == {"mplp", "adam_tuned", "sgd_tuned"}
    assert set(results["keys"]) == {"MPLP", f"Adam({tuning['chosen']['adam']:g}), tuned", f"SGD({tuning['chosen']['sgd']:g}), tuned"}
    assert not any("_lr" in k for k in doc["metrics"]) and "adam_tuned_loss_final" in doc["metrics"]
    # the reported runs are not the runs that chose (validation seed eval.seed + 1)
    chosen_row = next(r for r in tuning["grid"]["adam"] if r["lr"] == tuning["chosen"]["adam"])
    assert tuning["seed"] == setup.config.eval.seed + 1
    assert doc["metrics"]["adam_tuned_loss_final"] != pytest.approx(chosen_row["loss_final"], rel=1e-6)


def test_best_rate_direction_and_diverged_rates():
    rows = [{"lr": 0.1, "accuracy_final": 40.0}, {"lr": 1.0, "accuracy_final": None}, {"lr": 0.3, "accuracy_final": 55.0}]
    assert best_rate(rows, "accuracy_final", lower=False) == 0.3
    assert best_rate(rows, "accuracy_final", lower=True) == 0.1  # None (diverged) is never the best
    assert best_rate([{"lr": 1.0, "loss_final": None}, {"lr": 2.0, "loss_final": 3.0}], "loss_final", lower=True) == 2.0


def test_tune_needs_a_grid_and_the_test_split(tmp_path):
    no_grid = tmp_path / "no_grid.yaml"
    no_grid.write_text(TINY.replace("baselines: {adam: [0.1, 0.001], sgd: [0.5]}, EXTRA", "tune: true"))
    with pytest.raises(ConfigError, match=r"no_grid.yaml:5:\d+ eval: .*tune: true chooses among each optimizer's rates"):
        load_experiment_config(no_grid)
    with pytest.raises(ConfigError, match=r"set split: test, or tune: false"):
        load_experiment_config(_config(tmp_path, "tune: true, split: validation"))
    setup = load_setup(_config(tmp_path))  # the API refuses a validation-split evaluation of a tuned config
    with pytest.raises(ConfigError, match=r"^eval.tune: true chooses .* asked for split 'validation'"):
        evaluate(setup, setup.prog.init_params(jax.random.PRNGKey(0)), split="validation")


def test_cli_tune_flag_refuses_the_validation_split(tmp_path, capsys):
    from mplp_graph.cli import main

    config = _config(tmp_path, "adam_lr: 0.01")
    setup = load_setup(config)
    learner = tmp_path / "learner.npz"
    save_params_file(learner, setup.prog.init_params(jax.random.PRNGKey(0)))
    args = ["eval", "--config", str(config), "--learner", str(learner), "--out", str(tmp_path / "out")]
    assert main(args + ["--tune", "--split", "validation"]) == 2
    assert "drop --split validation, or evaluate without tuning" in capsys.readouterr().err
    assert not (tmp_path / "out" / "results.json").exists()
    no_grid = tmp_path / "no_grid.yaml"
    no_grid.write_text(TINY.replace("baselines: {adam: [0.1, 0.001], sgd: [0.5]}, EXTRA", "adam_lr: 0.01"))
    assert main(["eval", "--config", str(no_grid), "--learner", str(learner), "--out", str(tmp_path / "out"), "--tune"]) == 2
    assert "--tune eval: tune: true chooses among each optimizer's rates: give them under baselines" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_accuracy_plot_names_tuned_baselines_and_the_data_set(monkeypatch, tmp_path):
    """plot_accuracy labels curves beyond the paper's (``adam_tuned``) by the given legend text and
    titles the figure with the data set (mplp-graph eval --transfers on Fashion-MNIST)."""
    import matplotlib.pyplot as plt

    from mplp_graph.meta.eval_mnist import plot_accuracy

    kept = []
    monkeypatch.setattr(plt, "close", kept.append)  # keep the figure to read it back
    curves = {f"{k}_acc_{s}": [10.0, 20.0] for k in ("mplp", "adam_tuned") for s in ("mean", "std")}
    plot_accuracy(curves, tmp_path / "a.png", labels={"adam_tuned": "Adam(0.03), tuned"}, data="Fashion-MNIST")
    (ax,) = kept[0].axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["MPLP (ours)", "Adam(0.03), tuned"]
    assert ax.get_title().startswith("Fashion-MNIST:") and (tmp_path / "a.png").exists()
