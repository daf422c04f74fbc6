"""The hand-written Growing NCA of the benchmarks (benchmarks/nca_direct.py, the layout the
engine's and CAX's variants are compared with) and the hand-written Life of
benchmarks/cases/grids.py: perception equals a depthwise convolution, alive masking, the fire
mask, a training step on a tiny grid, Life by jnp.roll equals the engine's grid template. No
CAX here (it needs Python >= 3.12; benchmarks/cax_env.sh)."""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import nca_direct as nd
from benchmarks.cases.grids import life_board, life_direct_step, life_engine_program
from mplp_graph.tasks.images import target_image

RNG = np.random.RandomState(0)


def test_perception_is_a_depthwise_convolution_channel_major():
    x = jnp.asarray(RNG.randn(2, 7, 5, nd.CHANNELS).astype(np.float32))
    k = nd.perception_kernels()  # [kernel, dr, dc]
    rhs = np.tile(k.transpose(1, 2, 0), (1, 1, nd.CHANNELS))[:, :, None, :]  # HWIO, output c * 3 + k
    want = jax.lax.conv_general_dilated(x, jnp.asarray(rhs), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=nd.CHANNELS)
    got = nd.perceive(x)
    assert got.shape == (2, 7, 5, nd.PERCEPTION)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # the layout written in the module docstring: p[..., c * 3 + k], k = identity, sobel_x, sobel_y
    np.testing.assert_array_equal(got[..., 5 * 3 + 0], x[..., 5])
    gx = np.asarray(got[0, 3, 2, 7 * 3 + 1])
    pad = np.pad(np.asarray(x[0, :, :, 7]), 1)
    np.testing.assert_allclose(gx, (pad[3:6, 4] * [1, 2, 1]).sum() / 8 - (pad[3:6, 2] * [1, 2, 1]).sum() / 8, rtol=1e-5)


def test_alive_mask_is_a_3x3_max_of_alpha_above_threshold():
    x = np.zeros((1, 6, 6, nd.CHANNELS), np.float32)
    x[0, 2, 2, nd.ALPHA] = 0.5
    x[0, 5, 5, nd.ALPHA] = 0.1  # not above the threshold
    x[0, 0, 0, 0] = 9.0  # colour does not count
    got = np.asarray(nd.alive(jnp.asarray(x)))[0, :, :, 0]
    want = np.zeros((6, 6), bool)
    want[1:4, 1:4] = True
    np.testing.assert_array_equal(got, want)


def test_fire_mask_is_per_cell_and_example_and_about_half():
    m = np.asarray(nd.fire_mask(jax.random.PRNGKey(3), 5, (4, 32, 32, nd.CHANNELS)))
    assert m.shape == (4, 32, 32, 1) and m.dtype == bool
    assert 0.45 < m.mean() < 0.55 and not np.array_equal(m[0], m[1])
    assert not np.array_equal(m, np.asarray(nd.fire_mask(jax.random.PRNGKey(3), 6, (4, 32, 32, nd.CHANNELS))))


def test_nca_step_by_hand_on_a_tiny_grid():
    """One step from a seed: only the cells of the fire mask change, by relu(p w1 + b1) w2, and
    cells outside the alive neighbourhood stay 0."""
    params = nd.init_params(jax.random.PRNGKey(0))
    params["w2"] = 0.1 * jax.random.normal(jax.random.PRNGKey(1), params["w2"].shape)
    x = nd.seed_states(1, 7, 7)
    fire = nd.fire_mask(jax.random.PRNGKey(2), 0, x.shape)
    got = np.asarray(nd.nca_step(params, x, fire))
    p = np.asarray(nd.perceive(x)).reshape(-1, nd.PERCEPTION)
    dx = (np.maximum(p @ np.asarray(params["w1"]) + np.asarray(params["b1"]), 0) @ np.asarray(params["w2"])).reshape(x.shape)
    y = np.asarray(x) + dx * np.asarray(fire)
    keep = np.zeros((1, 7, 7, 1), bool)
    keep[:, 2:5, 2:5] = True  # alive before (around the seed) and, here, after
    keep &= np.asarray(nd.alive(jnp.asarray(y)))
    np.testing.assert_allclose(got, y * keep, rtol=1e-5, atol=1e-6)
    assert np.all(got[:, :2] == 0) and np.any(got[:, 2:5, 2:5] != np.asarray(x)[:, 2:5, 2:5])


def test_train_step_reduces_the_loss_on_a_small_target():
    target = jnp.asarray(target_image("face", 12, 4))
    x0 = nd.seed_states(2, *target.shape[:2])
    params = nd.init_params(jax.random.PRNGKey(0))
    opt = nd.make_optimizer()
    state = opt.init(params)
    step = jax.jit(nd.make_train_step(steps=12))
    losses = []
    for i in range(25):
        params, state, loss, grads, x = step(params, state, x0, target, jax.random.PRNGKey(i))
        losses.append(float(loss))
    assert x.shape == x0.shape and set(grads) == {"w1", "b1", "w2"}
    assert np.mean(losses[-5:]) < 0.8 * losses[0], losses


def test_face_target_is_deterministic_premultiplied_rgba():
    t = target_image("face", 40, 16)
    assert t.shape == (72, 72, 4) and t.dtype == np.float32
    np.testing.assert_array_equal(t, target_image("face", 40, 16))
    assert np.all(t[..., :3] <= t[..., 3:] + 1e-6) and t[..., 3].max() == 1.0
    assert np.all(t[:16] == 0) and np.all(t[:, -16:] == 0) and 0 < t[..., 3].mean() < 0.5


def test_life_by_roll_equals_the_engine_grid():
    board = life_board(2, size=12, seed=1)
    prog = life_engine_program(12)
    carry = {"cell": {"s": jnp.asarray(board)}}
    x = jnp.asarray(board)
    for _ in range(10):
        carry, _ = prog.step_carry({}, carry, {})
        x = life_direct_step(x)
    np.testing.assert_array_equal(np.asarray(carry["cell"]["s"]), np.asarray(x))
    assert 0 < float(x.sum()) < x.size


def test_life_case_pieces_through_the_harness_at_small_size():
    from benchmarks.cases.grids import life_cax, life_check, life_direct, life_engine
    from benchmarks.harness import Case, Variant, run_case

    board = life_board(2, size=16, seed=2)
    case = Case("life_small", (Variant("engine", lambda: life_engine(board, 20)), Variant("direct", lambda: life_direct(board, 20)),
                               Variant("cax", lambda: life_cax(board, 20))), check=life_check, rounds=1)
    row = run_case(case)
    assert {"direct", "engine"} <= set(row["check"]["boards_equal"])
    if importlib.util.find_spec("cax") is None:  # the main environment: CAX's variant is skipped, not an error
        assert "cax" in row["skipped"] and row["cax_ms"] is None
    different = {"engine": board[0], "direct": 1 - board[0]}
    with pytest.raises(AssertionError, match="differs"):
        life_check(different)


def test_nca_check_finds_a_different_gradient():
    from benchmarks.cases.grids import nca_check

    g = {"w1": np.ones((48, 128)), "b1": np.ones(128), "w2": np.ones((128, 16))}
    out = {"loss": 0.5, "grads": g, "params": g, "x": np.zeros((1, 4, 4, 16))}
    assert nca_check({"direct": out, "cax": dict(out)})["cax_loss_rel_diff"] == 0.0
    bad = dict(out, grads={**g, "w2": g["w2"] * 1.01})
    with pytest.raises(AssertionError, match=r"grads\[w2\]"):
        nca_check({"direct": out, "cax": bad})


def test_engine_training_step_equals_the_direct_model_with_the_engines_draws():
    """benchmarks/nca_engine.py (graphs/growing_nca.yaml through the rollout trainer) against
    nca_direct on a 14 x 14 grid, 6 steps: equal loss, gradients and final states when the direct
    model fires the engine's cells; different when it draws its own."""
    import functools

    from benchmarks import nca_engine
    from benchmarks.cases.grids import nca_start

    params = nd.init_params(jax.random.PRNGKey(0))
    params["w2"] = 0.05 * jax.random.normal(jax.random.PRNGKey(1), params["w2"].shape)
    x0, target = nca_start(3, 14, 14, radius=5), jnp.asarray(target_image("face", 10, 2))
    key = jax.random.PRNGKey(4)

    def run(loss):
        return jax.value_and_grad(loss, has_aux=True)(params, x0, target, key, 6)

    (l_e, x_e), g_e = run(nca_engine.loss_and_states)
    (l_d, x_d), g_d = run(functools.partial(nd.loss_and_states, fire=nca_engine.engine_fire))
    np.testing.assert_allclose(l_e, l_d, rtol=1e-5)
    np.testing.assert_allclose(x_e, x_d, atol=2e-5)
    for k in g_d:
        np.testing.assert_allclose(g_e[k], g_d[k], atol=1e-5 * float(jnp.abs(g_d[k]).max()) + 1e-7)
    assert float(jnp.abs(g_d["w1"]).max()) > 1e-4 and float(jnp.abs(x_d - x0).max()) > 1e-2
    fired = nca_engine.engine_fire(key, 0, x0.shape)
    assert fired.shape == (3, 14, 14, 1) and 0.3 < float(fired.mean()) < 0.7
    (l_own, x_own), _ = run(nd.loss_and_states)  # the direct model's own draws: other cells fire
    assert float(jnp.abs(x_own - x_e).max()) > 1e-3
