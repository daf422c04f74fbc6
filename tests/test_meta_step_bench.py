"""benchmarks/meta_step_bench.py: its hand-written MPLP meta-step computes what the engine's
``MetaStep`` does (small nets, so that they compile in seconds), with and without ``jax.checkpoint``
on its inner steps, and its agreement check stops on a hand-written step that differs."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import jax
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import meta_step_bench as msb  # noqa: E402

from mplp_graph import xla  # noqa: E402

SMALL = {
    "sinusoid": msb.MetaConfig("tiny_sinusoid", (1, 4, 1), "relu", "l2", 3, 4, "none", 2, 5, 2, 6, 1e-3, 4, "sinusoid"),
    "mnist": msb.MetaConfig("tiny_mnist", (6, 4, 3), "sigmoid", "ce", 2, 3, "layers", 3, 4, 1, 5, 1e-3, 3, "random_class"),
}


def _agreement(cfg, direct_remat: bool):
    b = msb.build(cfg, 0, direct_remat)
    steps = {"engine": xla.jit(b.engine.__call__), "direct": xla.jit(b.direct.__call__)}
    return b, msb.check_agreement(b, jax.random.PRNGKey(5), steps)


@pytest.mark.parametrize("name, direct_remat", [("sinusoid", True), ("mnist", False)])  # each compile costs seconds
def test_direct_meta_step_agrees_with_engine(name, direct_remat):
    b, agree = _agreement(SMALL[name], direct_remat)
    assert b.direct.remat is direct_remat
    assert agree["loss_engine"] > 1e-4  # a real loss, not a trivially equal zero
    assert agree["loss_rel_diff"] <= msb.LOSS_RTOL
    assert agree["grad_max_rel_diff"] <= msb.GRAD_TOL
    assert agree["step_param_max_diff"] <= 2 * SMALL[name].lr


def test_a_different_direct_step_is_caught():
    cfg = SMALL["sinusoid"]
    b = msb.build(cfg, 0)
    wrong = dataclasses.replace(b, direct=msb.DirectMetaStep(dataclasses.replace(cfg, hint_weight=0.5, cv_weight=0.5), b.family.sample))
    steps = {"engine": xla.jit(wrong.engine.__call__), "direct": xla.jit(wrong.direct.__call__)}
    with pytest.raises(SystemExit, match="disagree"):
        msb.check_agreement(wrong, jax.random.PRNGKey(5), steps)
