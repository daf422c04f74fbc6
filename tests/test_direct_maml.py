"""tests/oracles/direct_maml.py: the hand-written MAML meta-step agrees with the engine's
``MamlStep`` (small net, so that it compiles in seconds; one meta-step of each: loss, the
normalized meta-gradient, the new parameters), and the agreement check fails on a wrong one."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from tests.oracles import direct_maml as dmaml


FAST_COMPILE = {"xla_backend_optimization_level": 0}  # the same arithmetic, a shorter compile


@pytest.fixture(scope="module")
def small():
    run = dmaml.load_experiment()
    s = run.Settings(sizes=(1, 8, 1), outer_batch=2)
    c, family = dmaml.build(s, ("maml", "maml_direct"))
    return s, c, family


def test_direct_maml_agrees_with_engine(small):
    s, c, family = small
    # the engine's prior read as plain arrays, in the layout the direct step trains
    assert sorted(c["maml_direct"].params) == ["W0", "W1", "b0", "b1"]
    np.testing.assert_array_equal(c["maml_direct"].params["W1"], c["maml"].params["W1"]["w"])
    agree = dmaml.check_agreement(s, c, family, jax.random.PRNGKey(7), FAST_COMPILE)
    assert agree["loss_engine"] > 1e-4  # a real loss, not a trivially equal zero
    assert agree["loss_rel_diff"] <= 1e-5
    assert agree["grad_max_rel_diff"] <= 1e-4
    assert agree["param_max_diff"] <= 2 * 1e-4
    assert agree["param_tol"] == pytest.approx(2e-4)


def test_agreement_check_catches_a_different_computation(small):
    s, c, family = small
    wrong = dict(c)
    d = c["maml_direct"]
    wrong["maml_direct"] = dataclasses.replace(d, step=dataclasses.replace(d.step, inner_lr=2 * s.maml_inner_lr))
    with pytest.raises(AssertionError, match="disagree"):
        dmaml.check_agreement(s, wrong, family, jax.random.PRNGKey(7), FAST_COMPILE)
