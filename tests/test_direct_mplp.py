"""tests/oracles/direct_mplp.py: the hand-written MPLP meta-step computes what the engine's
``MetaStep`` does (meta-loss and its parts, the normalized meta-gradient Adam is fed, the new
parameters), and the comparison catches a step whose loss, meta-gradient or new parameters
differ. One small MNIST-shaped net (softmax + CE, sigmoid hidden units, W and b learners shared
across layers, the hand-written inner steps under ``jax.checkpoint``) and few inner steps,
compiled without XLA's backend optimizations (the same arithmetic, half the compile time): two
compiles in all. The benchmark cases (benchmarks/cases/meta_step.py) run the same comparison on
the paper's sinusoid (L2, relu, a learner per tensor) and MNIST configs before timing them."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from tests.oracles import direct_mplp as dm

SMALL = dm.MetaConfig("tiny_mnist", (6, 4, 3), "sigmoid", "ce", 2, 3, "layers", 3, 4, 1, 5, 1e-3, 3, "random_class")
FAST_COMPILE = {"xla_backend_optimization_level": 0}
KEY = jax.random.PRNGKey(5)


def _run(step, b: dm.Bench, side: str):
    return jax.jit(step.__call__, compiler_options=FAST_COMPILE)(*b.args(side, KEY))


@pytest.fixture(scope="module")
def steps():
    """The small config, the hand-written version under remat, and one meta-step of each side."""
    b = dm.build(SMALL, 0, direct_remat=True, init="numpy")
    return b, _run(b.engine, b, "engine"), _run(b.direct, b, "direct")


def test_direct_meta_step_agrees_with_engine(steps):
    b, engine_out, direct_out = steps
    assert b.direct.remat
    agree = dm.compare_steps(b, engine_out, direct_out)
    assert agree["loss_engine"] > 1e-4  # a real loss, not a trivially equal zero
    assert agree["loss_rel_diff"] <= dm.LOSS_RTOL and agree["grad_max_rel_diff"] <= dm.GRAD_TOL
    assert agree["param_max_diff"] <= 2 * b.cfg.lr
    assert float(engine_out[2]["loss"]) == pytest.approx(float(direct_out[2]["loss"]), rel=dm.LOSS_RTOL)


def _scaled_loss(out, f):
    return out[0], out[1], {**out[2], "loss": out[2]["loss"] * f, "hint": out[2]["hint"] * f}


def _moved_params(out, d):
    return jax.tree_util.tree_map(lambda x: np.asarray(x) + d, out[0]), out[1], out[2]


def _other_gradient(out, _):
    """Adam's first moment of the first leaves sign-flipped: a meta-gradient that differs there."""
    mu = dm.first_moment(out[1])
    return out[0], {**out[1], "mu": mu.at[: max(1, mu.size // 50)].multiply(-1.0)}, out[2]


@pytest.mark.parametrize("change, amount, message", [
    (_scaled_loss, 1.0 + 1e-3, "loss_rel_diff"),
    (_moved_params, 3e-3, "parameters after one meta-step differ"),  # 3 lr
    (_other_gradient, None, "normalized meta-gradient differs"),
])
def test_a_different_direct_step_is_caught(steps, change, amount, message):
    b, engine_out, direct_out = steps
    dm.compare_steps(b, engine_out, direct_out)  # as computed: equal
    with pytest.raises(AssertionError, match="disagree: .*" + message):
        dm.compare_steps(b, engine_out, change(direct_out, amount))


def test_standardizer_statistics_differ_per_channel(steps):
    b = steps[0]
    norms = [p["norm"] for p in b.params.values() if "norm" in p]
    assert norms and all(len(set(map(float, n["in_norm"]))) == len(n["in_norm"]) for n in norms)
