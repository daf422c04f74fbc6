"""Set-ups several benchmark cases share: an experiment's config built the way ``mplp-graph
train`` builds it."""

from __future__ import annotations

from typing import Any

from benchmarks.harness import ROOT


def experiment_setup(name: str, **overrides: Any) -> tuple[Any, Any]:
    """``(setup, untrained learner params)`` for experiments/<name>/config.yaml with one
    statistics round and ``overrides`` (dotted keys, e.g. ``{"graph.first_layer": "rows"}``);
    ``setup.family`` and ``setup.data`` are the task family and its arrays (MNIST: loaded here,
    :mod:`mplp_graph.tasks.mnist`)."""
    from mplp_graph.meta.config import apply_overrides, load_experiment_config
    from mplp_graph.meta.run import build, initial_params

    config = load_experiment_config(ROOT / "experiments" / name / "config.yaml")
    config = apply_overrides(config, {"meta.stats_rounds": 1, **overrides}, "benchmark")
    setup = build(config)
    return setup, initial_params(setup)
