"""The meta-steps' outer update on raveled parameters (mplp_graph.meta.step.outer_update) equals
the per-leaf update it replaces, keeps the guard's and the mask's guarantees, refuses a per-leaf
optimizer state, and old checkpoints (per-leaf Adam moments) still resume."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from mplp_graph.meta.checkpoint import CheckpointError, latest_checkpoint, save_checkpoint
from mplp_graph.meta.step import adam, init_opt_state, normalize_per_leaf, outer_update, trainable_mask
from mplp_graph.meta.train import restore_train_state


def _tree(key, scale=1.0):
    k = jax.random.split(key, 5)
    return {
        "W0": {"net": {"k1": scale * jax.random.normal(k[0], (3, 8)), "b1": scale * jax.random.normal(k[1], (8,))},
               "norm": {"in_mean": scale * jax.random.normal(k[2], (4,)), "out_scale": scale * jax.random.normal(k[3], ())}},
        "b0": {"net": {"k1": scale * jax.random.normal(k[4], (5, 2))}},
    }


PARAMS = _tree(jax.random.PRNGKey(0))
MASK = jax.tree_util.tree_map(jnp.ones_like, PARAMS)
MASK["W0"]["norm"]["in_mean"] = jnp.zeros((4,))  # a frozen leaf


def _per_leaf(optimizer, params, opt_state, mask, grads):
    """The update as it was written before: leaf by leaf."""
    g = normalize_per_leaf(jax.tree_util.tree_map(jnp.multiply, grads, mask))
    updates, opt_state = optimizer.update(g, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def test_raveled_update_equals_the_per_leaf_one():
    optimizer = adam(1e-2)
    p_ref, s_ref = PARAMS, optimizer.init(PARAMS)
    p, s = PARAMS, init_opt_state(optimizer, PARAMS)
    step = jax.jit(lambda p, s, g: outer_update(optimizer, p, s, MASK, jnp.float32(1.0), g))
    for i in range(4):
        grads = _tree(jax.random.PRNGKey(10 + i), scale=10.0 ** (i - 2))
        p_ref, s_ref = _per_leaf(optimizer, p_ref, s_ref, MASK, grads)
        p, s, finite, _ = step(p, s, grads)
        assert bool(finite)
    for a, b in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(p_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    adam_state = s[0]
    np.testing.assert_allclose(adam_state.mu, ravel_pytree(s_ref[0].mu)[0], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(adam_state.nu, ravel_pytree(s_ref[0].nu)[0], rtol=1e-5, atol=1e-12)
    assert int(adam_state.count) == 4
    # the frozen leaf did not move at all; every other leaf did
    np.testing.assert_array_equal(p["W0"]["norm"]["in_mean"], PARAMS["W0"]["norm"]["in_mean"])
    assert float(jnp.abs(p["b0"]["net"]["k1"] - PARAMS["b0"]["net"]["k1"]).min()) > 0


def test_nonfinite_gradient_or_loss_changes_nothing():
    optimizer = adam(1e-2)
    s0 = init_opt_state(optimizer, PARAMS)
    grads = _tree(jax.random.PRNGKey(3))
    bad = jax.tree_util.tree_map(lambda g: g, grads)
    bad["b0"]["net"]["k1"] = bad["b0"]["net"]["k1"].at[1, 1].set(jnp.nan)
    for loss, g in ((jnp.float32(1.0), bad), (jnp.float32(jnp.inf), grads)):
        p, s, finite, _ = outer_update(optimizer, PARAMS, s0, MASK, loss, g)
        assert not bool(finite)
        for a, b in zip(jax.tree_util.tree_leaves((p, s)), jax.tree_util.tree_leaves((PARAMS, s0)), strict=True):
            np.testing.assert_array_equal(a, b)


def test_per_leaf_optimizer_state_is_refused_with_the_fix():
    optimizer = adam(1e-2)
    with pytest.raises(TypeError, match=r"init_opt_state\(optimizer, params\)"):
        outer_update(optimizer, PARAMS, optimizer.init(PARAMS), MASK, jnp.float32(1.0), PARAMS)


def test_float64_or_integer_parameters_are_named():
    with pytest.raises(TypeError, match="int32"):
        init_opt_state(adam(1e-2), {"a": jnp.zeros((2,)), "n": jnp.zeros((2,), jnp.int32)})


@pytest.mark.parametrize("runs", [False, True])
def test_old_checkpoints_with_per_leaf_moments_resume(tmp_path, runs):
    """A checkpoint written before the update was raveled (Adam's moments one array per leaf)
    restores into the raveled state: the same moments, in ravel order."""
    optimizer = adam(1e-2)
    params = jax.tree_util.tree_map(lambda a: jnp.stack([a, 2 * a]), PARAMS) if runs else PARAMS
    per_leaf_init = jax.vmap(optimizer.init) if runs else optimizer.init
    p_old, s_old = params, per_leaf_init(params)
    for i in range(2):
        grads = jax.tree_util.tree_map(lambda a: jnp.sin(a + i), params)
        update = lambda p, s, g: _per_leaf(optimizer, p, s, MASK, g)  # noqa: E731
        p_old, s_old = (jax.vmap(update) if runs else update)(p_old, s_old, grads)
    save_checkpoint(tmp_path, 2, {"params": p_old, "opt_state": s_old}, {})
    template = (jax.vmap(lambda p: init_opt_state(optimizer, p)) if runs else (lambda p: init_opt_state(optimizer, p)))(params)
    trees, manifest = restore_train_state(latest_checkpoint(tmp_path), optimizer, params, template, runs=runs)
    assert manifest["step"] == 2
    ravel = jax.vmap(lambda t: ravel_pytree(t)[0]) if runs else (lambda t: ravel_pytree(t)[0])
    np.testing.assert_array_equal(trees["opt_state"][0].mu, ravel(s_old[0].mu))
    np.testing.assert_array_equal(trees["opt_state"][0].nu, ravel(s_old[0].nu))
    np.testing.assert_array_equal(trees["opt_state"][0].count, s_old[0].count)
    for a, b in zip(jax.tree_util.tree_leaves(trees["params"]), jax.tree_util.tree_leaves(p_old), strict=True):
        np.testing.assert_array_equal(a, b)
    assert jax.tree_util.tree_structure(trees["opt_state"]) == jax.tree_util.tree_structure(template)


def test_a_checkpoint_of_other_parameters_still_names_the_mismatch(tmp_path):
    optimizer = adam(1e-2)
    other = {"W0": PARAMS["W0"]}
    save_checkpoint(tmp_path, 1, {"params": other, "opt_state": optimizer.init(other)}, {})
    with pytest.raises(CheckpointError, match="expected an array \"params\\['b0'\\]"):
        restore_train_state(latest_checkpoint(tmp_path), optimizer, PARAMS, init_opt_state(optimizer, PARAMS))


def test_grad_norm_and_the_normalizations():
    """``grad_norm`` is the masked gradient's norm; ``global`` scales the whole gradient to unit
    norm and ``none`` leaves it: against optax's Adam on those gradients."""
    grads = _tree(jax.random.PRNGKey(7), scale=3.0)
    flat_mask = ravel_pytree(MASK)[0]
    g = ravel_pytree(grads)[0] * flat_mask
    norm = float(jnp.linalg.norm(g))
    for mode, want in (("global", g / (norm + 1e-8)), ("none", g)):
        optimizer = adam(1e-2)
        s0 = init_opt_state(optimizer, PARAMS)
        p, _, finite, grad_norm = outer_update(optimizer, PARAMS, s0, MASK, jnp.float32(1.0), grads, mode)
        np.testing.assert_allclose(float(grad_norm), norm, rtol=1e-6)
        updates, _ = optimizer.update(want, s0, ravel_pytree(PARAMS)[0])
        np.testing.assert_allclose(ravel_pytree(p)[0], ravel_pytree(PARAMS)[0] + updates, rtol=1e-6, atol=1e-8)
        assert bool(finite)
    with pytest.raises(ValueError, match="normalize must be one of"):
        outer_update(adam(1e-2), PARAMS, init_opt_state(adam(1e-2), PARAMS), MASK, jnp.float32(1.0), grads, "layer")


def test_warmup_rises_linearly_to_the_rate():
    """Adam's first step moves an entry with a consistent gradient by about the learning rate:
    with a warm-up of 4 steps the moves are lr/4, 2lr/4, 3lr/4, lr, lr."""
    lr, x = 1e-2, {"w": jnp.zeros((3,), jnp.float32)}
    opt = adam(lr, warmup=4)
    state = opt.init(x)
    moves = []
    for _ in range(5):
        u, state = opt.update({"w": jnp.ones((3,), jnp.float32)}, state, x)
        moves.append(-float(u["w"][0]))
    np.testing.assert_allclose(moves, [lr / 4, lr / 2, 3 * lr / 4, lr, lr], rtol=1e-4)


def test_freeze_masks_named_leaves_and_names_unknown_ones():
    mask = trainable_mask(PARAMS, freeze=("out_scale",))
    assert float(mask["W0"]["norm"]["out_scale"]) == 0.0 and float(mask["W0"]["norm"]["in_mean"].sum()) == 0.0  # a statistic: always frozen
    assert float(mask["W0"]["net"]["k1"].min()) == 1.0 and float(mask["b0"]["net"]["k1"].min()) == 1.0
    with pytest.raises(ValueError, match=r"no parameter is named 'out_scal'.*out_scale"):
        trainable_mask(PARAMS, freeze=("out_scal",))


def test_a_bad_freeze_name_is_a_located_config_error(tmp_path):
    from mplp_graph.errors import ConfigError
    from mplp_graph.meta.config import apply_overrides, load_experiment_config
    from mplp_graph.meta.run import build

    config = apply_overrides(load_experiment_config("experiments/sinusoid/config.yaml"), {"meta.freeze": ["out_scal"]})
    with pytest.raises(ConfigError, match=r"meta\.freeze.*no parameter is named 'out_scal'"):
        build(config)
