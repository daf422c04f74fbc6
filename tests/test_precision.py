"""bfloat16 learner matmuls (``matmul: bfloat16``): operands rounded to bfloat16, float32 accumulation
and state. Checked against float32 on the same inputs and through a meta-gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mplp_graph as mg
from mplp_graph.learners.nets import dot, gru_apply, gru_init
from mplp_graph.meta.objectives import MetaLoss
from mplp_graph.meta.step import MetaStep, adam, make_pool
from mplp_graph.tasks.sinusoid import SinusoidFamily
from mplp_graph.templates.mplp import mplp_feedforward


def test_dot_rounds_operands_and_accumulates_in_float32():
    x = jnp.asarray([[1.0 + 2.0**-10, 1.0]], jnp.float32)  # 1 + 2^-10 is not a bfloat16 (8 bits of mantissa)
    k = jnp.ones((2, 1), jnp.float32)
    assert float(dot(x, k)[0, 0]) == pytest.approx(2.0 + 2.0**-10)
    out = dot(x, k, jnp.bfloat16)
    assert out.dtype == jnp.float32
    assert float(out[0, 0]) == 2.0  # the operand was rounded to bfloat16 before the product


def test_bfloat16_gru_close_to_float32_and_float32_state():
    key = jax.random.PRNGKey(3)
    p = gru_init(key, 6, 12)
    m = jax.random.normal(jax.random.fold_in(key, 1), (4, 1, 9, 4))
    w = jax.random.normal(jax.random.fold_in(key, 2), (1, 11, 9, 1))
    x = jax.random.normal(jax.random.fold_in(key, 3), (4, 11, 1, 1))
    c = 0.5 * jnp.tanh(jax.random.normal(jax.random.fold_in(key, 4), (4, 11, 9, 12)))
    f32 = gru_apply(p, [m, w, x], c)
    b16 = gru_apply(p, [m, w, x], c, jnp.bfloat16)
    assert b16.dtype == jnp.float32 and b16.shape == f32.shape
    err = float(jnp.max(jnp.abs(b16 - f32)))
    assert 1e-5 < err < 3e-2, err  # rounded (differs) but close: bfloat16 has ~3 significant digits


def _program(matmul):
    return mg.compile_graph(mplp_feedforward((1, 6, 1), msg=3, hidden=2, matmul=matmul))


def test_graph_option_meta_gradient_close_to_float32():
    family = SinusoidFamily(inner_steps=2, batch=4, cv_points=8)
    grads = {}
    for matmul in ("float32", "bfloat16"):
        prog = _program(matmul)
        params = prog.init_params(jax.random.PRNGKey(0))
        pool = make_pool(prog, jax.random.PRNGKey(1), 2)
        step = MetaStep(prog, family.sample, MetaLoss(), 2, adam(1e-3))
        tasks = jax.vmap(family.sample)(jax.random.split(jax.random.PRNGKey(2), 2))
        grads[matmul] = jax.grad(lambda p, step=step, pool=pool, tasks=tasks: step.batch_loss(p, {"priors": pool, "tasks": tasks})[0])(params)
    flat32 = jax.tree_util.tree_leaves(grads["float32"])
    flat16 = jax.tree_util.tree_leaves(grads["bfloat16"])
    g32 = np.concatenate([np.ravel(g) for g in flat32])
    g16 = np.concatenate([np.ravel(g) for g in flat16])
    assert np.all(np.isfinite(g16)) and not np.array_equal(g16, g32)
    cos = float(g16 @ g32 / (np.linalg.norm(g16) * np.linalg.norm(g32)))
    assert cos > 0.98, cos


def test_graph_records_the_option_and_rejects_unknown_types():
    spec = mplp_feedforward((1, 4, 1), msg=2, hidden=1, matmul="bfloat16")
    assert {a.op.args.get("matmul") for a in spec.arrows if a.op.name == "mplp_gru"} == {"bfloat16"}
    default = mplp_feedforward((1, 4, 1), msg=2, hidden=1)
    assert all("matmul" not in a.op.args for a in default.arrows)  # default left out: hashes unchanged
    bad = spec.model_copy(update={"arrows": tuple(
        a.model_copy(update={"op": a.op.model_copy(update={"args": {**a.op.args, "matmul": "float16"}})}) if a.op.name == "mplp_gru" else a
        for a in spec.arrows
    )})
    with pytest.raises(mg.MplpGraphError, match="matmul.*float16"):
        mg.compile_graph(bad)
