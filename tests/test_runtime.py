"""Runtime: liveness (step_carry), init, feeding errors."""

import jax
import numpy as np
import pytest

import mplp_graph as mg
from mplp_graph.templates.mplp import mplp_feedforward


def test_persistent_fields_of_templates():
    prog = mg.compile_graph(mg.feedforward((3, 4, 2), "tanh", "l2"))
    assert prog.persistent == {("W0", "w"), ("W1", "w"), ("b0", "b"), ("b1", "b")}
    prog = mg.compile_graph(mplp_feedforward((1, 3, 1), msg=2, hidden=2))
    assert ("W0", "carry") in prog.persistent and ("a0", "carry") in prog.persistent
    assert ("W0", "x") not in prog.persistent and ("b0", "m") not in prog.persistent  # overwritten every step


@pytest.mark.parametrize("which", ["backprop", "mplp"])
def test_step_carry_equals_step(which):
    spec = mg.feedforward((3, 4, 2), "sigmoid", "ce") if which == "backprop" else mplp_feedforward((2, 3, 1), msg=2, hidden=2)
    prog = mg.compile_graph(spec)
    params = prog.init_params(jax.random.PRNGKey(0))
    state = prog.init(jax.random.PRNGKey(1), 4)
    carry = prog.carry_of(state)
    rng = np.random.default_rng(0)
    for _ in range(3):
        batch = {"x": rng.normal(size=(4, spec.groups["x"].shape[0])).astype(np.float32),
                 "y": rng.random(size=(4, spec.groups["loss"].shape[0])).astype(np.float32)}
        state, out = jax.jit(prog.step)(params, state, batch)
        carry, out_c = jax.jit(prog.step_carry)(params, carry, batch)
        np.testing.assert_allclose(out["loss"], out_c["loss"], rtol=1e-6, atol=1e-7)
    for g, fs in carry.items():
        for f, v in fs.items():
            np.testing.assert_allclose(v, state[g][f], rtol=1e-6, atol=1e-7)


def test_bad_batch_is_a_clear_error():
    prog = mg.compile_graph(mg.feedforward((3, 2), "relu", "l2"))
    state = prog.init(jax.random.PRNGKey(0), 4)
    with pytest.raises(mg.CompileError, match=r"batch\['x'\] has shape \[4, 5\] but field x.value needs \[4, 3\]"):
        prog.step({}, state, {"x": np.zeros((4, 5), np.float32), "y": np.zeros((4, 2), np.float32)})
    with pytest.raises(mg.CompileError, match="expects batch keys"):
        prog.step({}, state, {"x": np.zeros((4, 3), np.float32)})
    with pytest.raises(mg.CompileError, match="has no phase 'sideways'"):
        prog.run_phase("sideways", {}, state)


def test_init_is_deterministic_and_follows_field_specs():
    prog = mg.compile_graph(mg.feedforward((3, 5, 2), "relu", "l2"))
    a, b = prog.init(jax.random.PRNGKey(7), 2), prog.init(jax.random.PRNGKey(7), 2)
    np.testing.assert_array_equal(a["W0"]["w"], b["W0"]["w"])
    assert a["W0"]["x"].shape == (2, 3, 1)  # constant along j: stored once per i
    assert a["W0"]["w"].shape == (3, 5) and float(np.abs(a["b0"]["b"]).max()) == 0.0
    assert 0.02 < float(np.std(prog.init(jax.random.PRNGKey(1), 1)["W0"]["w"])) < 0.09  # N(0, 0.05)


@pytest.mark.parametrize("sizes", [(1, 20, 20, 1), (16, 8, 10)])
def test_pool_drawn_in_one_program_is_the_op_by_op_pool(sizes):
    """make_pool runs as one compiled program; its normal draws (an erf_inv polynomial that XLA
    compiles differently inside a larger program) are within a few float32 ulps of the ops run
    one by one, and every leaf keeps its key, shape and dtype."""
    from mplp_graph.meta.step import make_pool

    prog = mg.compile_graph(mplp_feedforward(sizes, loss="l2" if sizes[-1] == 1 else "ce"))
    key = jax.random.PRNGKey(7)
    compiled = make_pool(prog, key, 4)
    with jax.disable_jit():
        op_by_op = make_pool(prog, key, 4)
    a = jax.tree_util.tree_leaves_with_path(compiled)
    b = jax.tree_util.tree_leaves_with_path(op_by_op)
    assert [p for p, _ in a] == [p for p, _ in b] and len(a) > 3
    for (path, x), (_, y) in zip(a, b):
        x, y = np.asarray(x), np.asarray(y)
        assert x.shape == y.shape and x.dtype == y.dtype and x.shape[0] == 4, jax.tree_util.keystr(path)
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=0, err_msg=jax.tree_util.keystr(path))
    assert float(np.std(np.asarray(compiled["W0"]["w"]))) > 0
