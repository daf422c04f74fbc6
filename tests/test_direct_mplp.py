"""tests/oracles/direct_mplp.py: the hand-written MPLP meta-step computes what the engine's
``MetaStep`` does (meta-loss and its parts, the normalized meta-gradient Adam is fed, the new
parameters), with and without ``jax.checkpoint`` on its inner steps, and the comparison catches a
step whose loss, meta-gradient or new parameters differ. Small nets and few inner steps, compiled without XLA's backend
optimizations (the same arithmetic, half the compile time): the paper's sizes are compared by the
benchmark cases (benchmarks/cases/meta_step.py) before they are timed."""

from __future__ import annotations

import jax
import pytest

from tests.oracles import direct_mplp as dm

SMALL = {
    "sinusoid": dm.MetaConfig("tiny_sinusoid", (1, 4, 1), "relu", "l2", 3, 4, "none", 2, 5, 2, 6, 1e-3, 4, "sinusoid"),
    "mnist": dm.MetaConfig("tiny_mnist", (6, 4, 3), "sigmoid", "ce", 2, 3, "layers", 3, 4, 1, 5, 1e-3, 3, "random_class"),
}
FAST_COMPILE = {"xla_backend_optimization_level": 0}
KEY = jax.random.PRNGKey(5)


def _run(step, b: dm.Bench, side: str):
    return jax.jit(step.__call__, compiler_options=FAST_COMPILE)(*b.args(side, KEY))


@pytest.fixture(scope="module")
def sinusoid():
    """The small sinusoid config with the direct version under remat, and the engine's step."""
    b = dm.build(SMALL["sinusoid"], 0, direct_remat=True, init="numpy")
    return b, _run(b.engine, b, "engine")


def _check(b, engine_out, direct_out):
    agree = dm.compare_steps(b, engine_out, direct_out)
    assert agree["loss_engine"] > 1e-4  # a real loss, not a trivially equal zero
    assert agree["loss_rel_diff"] <= dm.LOSS_RTOL and agree["grad_max_rel_diff"] <= dm.GRAD_TOL
    assert agree["param_max_diff"] <= 2 * b.cfg.lr
    assert float(engine_out[2]["loss"]) == pytest.approx(float(direct_out[2]["loss"]), rel=dm.LOSS_RTOL)


def test_direct_meta_step_with_remat_agrees_with_engine(sinusoid):
    b, engine_out = sinusoid
    assert b.direct.remat
    _check(b, engine_out, _run(b.direct, b, "direct"))


def test_direct_meta_step_agrees_with_engine_on_mnist_shapes():
    b = dm.build(SMALL["mnist"], 0, init="numpy")
    assert not b.direct.remat
    _check(b, _run(b.engine, b, "engine"), _run(b.direct, b, "direct"))


def _scaled_loss(out, f):
    return out[0], out[1], {**out[2], "loss": out[2]["loss"] * f, "hint": out[2]["hint"] * f}


def _moved_params(out, d):
    return jax.tree_util.tree_map(lambda x: x + d, out[0]), out[1], out[2]


def _other_gradient(out, _):
    """Adam's first moment of one leaf sign-flipped: a meta-gradient that differs in one leaf."""
    mu = dm.first_moment(out[1])
    flipped = mu.at[: max(1, mu.size // 50)].multiply(-1.0)
    return out[0], {**out[1], "mu": flipped}, out[2]


@pytest.mark.parametrize("change, amount, message", [
    (_scaled_loss, 1.0 + 1e-3, "loss_rel_diff"),
    (_moved_params, 3e-3, "parameters after one meta-step differ"),  # 3 lr
    (_other_gradient, None, "normalized meta-gradient differs"),
])
def test_a_different_direct_step_is_caught(sinusoid, change, amount, message):
    b, engine_out = sinusoid
    direct_out = engine_out[0], {"count": 1, "mu": dm.first_moment(engine_out[1])}, engine_out[2]  # the direct layout
    dm.compare_steps(b, engine_out, direct_out)  # equal to itself
    with pytest.raises(AssertionError, match="disagree: .*" + message):
        dm.compare_steps(b, engine_out, change(direct_out, amount))


def test_standardizer_statistics_differ_per_channel():
    b = dm.build(SMALL["mnist"], 0, init="numpy")
    norms = [p["norm"] for p in b.params.values() if "norm" in p]
    assert norms and all(len(set(map(float, n["in_norm"]))) == len(n["in_norm"]) for n in norms)
