"""Learned cellular automata (graphs/growing_nca.yaml, mplp_graph/meta/rollout.py): the graph's
step equals the Growing NCA step written by hand, and rollout training through meta_train
carries the sample pool through checkpoints (exact resume)."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mplp_graph as mg
from mplp_graph.meta.config import ExperimentConfig
from mplp_graph.meta.rollout import disc_masks, rollout_data, rollout_step
from mplp_graph.meta.run import Setup
from mplp_graph.meta.step import adam, trainable_mask
from mplp_graph.meta.train import meta_train

ROOT = Path(__file__).resolve().parents[1]
SIDE = 12


def small_prog(fire=True):
    text = (ROOT / "graphs" / "growing_nca.yaml").read_text().replace("shape: [72, 72]", f"shape: [{SIDE}, {SIDE}]")
    if not fire:
        text = text.replace("fire: 0.5", "fire: 1.0")
    return mg.compile_graph(mg.loads_graph(text))


def by_hand(p, x):
    """One Growing NCA step (every cell fires), as the article writes it."""
    sx = np.outer([1, 2, 1], [-1, 0, 1]) / 8.0
    h, w = x.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    gx = sum(sx[i, j] * xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3))
    gy = sum(sx.T[i, j] * xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3))

    def alive(x):
        a = jnp.pad(x[..., 3:4], ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
        return jnp.max(jnp.stack([a[:, i:i + h, j:j + w] for i in range(3) for j in range(3)]), 0) > 0.1

    pre = alive(x)
    x = x + jax.nn.relu(jnp.concatenate([x, gx, gy], -1) @ p["w1"] + p["b1"]) @ p["w2"]
    return x * (pre & alive(x))


def test_graph_step_equals_the_hand_written_step():
    prog = small_prog(fire=False)
    params = prog.init_params(jax.random.PRNGKey(0))
    params = {"rule": {**params["rule"], "w2": 0.1 * jax.random.normal(jax.random.PRNGKey(1), (128, 16))}}
    x = jax.random.uniform(jax.random.PRNGKey(2), (2, SIDE, SIDE, 16)) * (jax.random.uniform(jax.random.PRNGKey(3), (2, SIDE, SIDE, 1)) > 0.5)
    state = prog.init(jax.random.PRNGKey(0), 2)
    state["cell"]["s"] = x
    new, _ = prog.step(params, state, {})
    np.testing.assert_allclose(new["cell"]["s"], by_hand(params["rule"], x), atol=1e-5)
    assert float(jnp.abs(new["cell"]["s"] - x).max()) > 1e-2  # the step changed something


def test_random_update_keeps_the_unfired_cells():
    prog = small_prog()
    params = {"rule": {**prog.init_params(jax.random.PRNGKey(0))["rule"], "w2": jnp.ones((128, 16)) * 0.01}}
    state = prog.init(jax.random.PRNGKey(0), 1)
    state["cell"]["s"] = jnp.ones((1, SIDE, SIDE, 16))
    new, _ = prog.step(params, state, {})
    changed = np.asarray(jnp.any(new["cell"]["s"] != 1.0, axis=-1))[0]
    assert 0.25 < changed.mean() < 0.75  # about half of the cells fired


def test_disc_masks_erase_a_disc():
    m = np.asarray(disc_masks(jax.random.PRNGKey(0), 3, (32, 32)))
    assert m.shape == (3, 32, 32) and set(np.unique(m)) == {0.0, 1.0}
    assert ((m == 0).mean(axis=(1, 2)) > 0.005).all() and ((m == 0).mean(axis=(1, 2)) < 0.6).all()


def test_rollout_training_carries_the_pool_and_resumes_exactly(tmp_path):
    prog = small_prog()
    config = ExperimentConfig.model_validate({
        "experiment": "nca_small", "graph": {"file": "x.yaml"},
        "rollout": {"size": 8, "padding": 2, "steps": [6, 8], "pool": 8, "damage": 1, "image": "ring"},
        "meta": {"steps": 12, "outer_batch": 4, "lr": 2e-3, "checkpoint_every": 6},
    })
    loc = lambda path: mg.Location(file="config", path=path)  # noqa: E731
    setup = Setup(config, prog, prog, None, rollout_data(config, prog, None, loc))
    step = rollout_step(setup, adam(2e-3))
    params = prog.init_params(jax.random.PRNGKey(0))
    pool = step.init_pool(setup.data["seed"], 8)
    out, history = meta_train(step, params, trainable_mask(params), pool, jax.random.PRNGKey(1), 12, tmp_path / "run",
                              checkpoint_every=6, progress=False, data=setup.data)
    losses = [h["loss"] for h in history]
    assert all(np.isfinite(losses)) and len(losses) == 12
    # resumed from the checkpoint at step 6 (parameters, optimizer state and pool), the run is the same
    meta_train(step, params, trainable_mask(params), pool, jax.random.PRNGKey(1), 6, tmp_path / "resumed",
               checkpoint_every=6, progress=False, data=setup.data)
    again, rest = meta_train(step, params, trainable_mask(params), pool, jax.random.PRNGKey(1), 12, tmp_path / "resumed",
                             checkpoint_every=6, progress=False, data=setup.data)
    assert [h["loss"] for h in rest] == losses
    for x, y in zip(jax.tree_util.tree_leaves(again), jax.tree_util.tree_leaves(out)):
        np.testing.assert_array_equal(x, y)
    from mplp_graph.meta.checkpoint import latest_checkpoint, load_checkpoint

    trees, _ = load_checkpoint(latest_checkpoint(tmp_path / "run"), {"pool": pool})
    stored = trees["pool"]["cell"]["s"]
    assert not np.allclose(stored, np.asarray(pool["cell"]["s"]))  # the pool holds grown states, not only seeds


def test_config_errors_are_located():
    with pytest.raises(Exception, match="remove the task section"):
        ExperimentConfig.model_validate({"graph": {"file": "g.yaml"}, "task": {"family": "sinusoid"}, "rollout": {}})
    prog = small_prog()
    config = ExperimentConfig.model_validate({"graph": {"file": "g.yaml"}, "rollout": {"size": 40}, "meta": {"outer_batch": 8}})
    with pytest.raises(mg.ConfigError, match="must fill group 'cell'"):
        rollout_data(config, prog, None, lambda p: mg.Location(file="c.yaml", path=p))


def test_a_batched_counter_gives_each_example_its_own_draws():
    """``clock.t`` batched: each example fires the cells its own counter draws, as the same graph
    with a shared counter at that value would; equal to the reference interpreter."""
    from mplp_graph.runtime.interpret import interpret_step

    text = (ROOT / "graphs" / "growing_nca.yaml").read_text().replace("shape: [72, 72]", "shape: [6, 6]")
    per_example = mg.compile_graph(mg.loads_graph(text))
    assert per_example.spec.groups["clock"].state["t"].batched
    shared = mg.compile_graph(mg.loads_graph(text.replace("t: {dtype: int32, batched: true}", "t: {dtype: int32}")))
    params = {"rule": {**shared.init_params(jax.random.PRNGKey(0))["rule"], "w2": 0.1 * jax.random.normal(jax.random.PRNGKey(1), (128, 16))}}
    s = jnp.broadcast_to(jax.random.uniform(jax.random.PRNGKey(2), (1, 6, 6, 16)), (3, 6, 6, 16))
    state = per_example.init(jax.random.PRNGKey(0), 3)
    assert state["clock"]["t"].shape == (3,)
    state["cell"]["s"], state["clock"]["t"] = s, jnp.array([5, 9, 5], jnp.int32)
    new, _ = per_example.step(params, state, {})
    got = np.asarray(new["cell"]["s"])
    np.testing.assert_array_equal(new["clock"]["t"], [6, 10, 6])
    np.testing.assert_array_equal(got[0], got[2])  # same counter, same draws
    assert np.abs(got[0] - got[1]).max() > 1e-3  # another counter, other cells fired
    for b, t in ((0, 5), (1, 9)):
        one = shared.init(jax.random.PRNGKey(0), 1)
        one["cell"]["s"], one["clock"]["t"] = s[:1], jnp.int32(t)
        np.testing.assert_allclose(got[b], np.asarray(shared.step(params, one, {})[0]["cell"]["s"])[0], atol=1e-6)
    want, _ = interpret_step(per_example.spec, params, jax.device_get(state), {})
    np.testing.assert_allclose(got, want["cell"]["s"], atol=1e-5)


def test_rollout_with_a_batched_counter_equals_the_vmapped_examples():
    """The rollout trainer runs a graph with a batched counter as one batch, one with a shared
    counter as one example at a time under vmap: the same draws, the same final states."""
    import optax

    from mplp_graph.meta.rollout import RolloutStep

    text = (ROOT / "graphs" / "growing_nca.yaml").read_text().replace("shape: [72, 72]", "shape: [8, 8]")
    shared = mg.compile_graph(mg.loads_graph(text.replace("t: {dtype: int32, batched: true}", "t: {dtype: int32}")))
    batched = mg.compile_graph(mg.loads_graph(text))
    params = {"rule": {**shared.init_params(jax.random.PRNGKey(0))["rule"], "w2": 0.1 * jax.random.normal(jax.random.PRNGKey(1), (128, 16))}}
    drawn = {"x": jax.random.uniform(jax.random.PRNGKey(2), (3, 1, 8, 8, 16)), "n": jnp.asarray(5), "counters": jnp.array([3, 70, 12345], jnp.int32)}
    out = {}
    for name, prog in (("shared", shared), ("batched", batched)):
        step = RolloutStep(prog, ("cell", "s"), 4, (4, 6), 3, optax.identity())
        assert step.per_example_counter == (name == "batched")
        out[name] = np.asarray(jax.jit(step.final_states)(params, drawn))
    assert out["batched"].shape == (3, 1, 8, 8, 16)
    np.testing.assert_allclose(out["batched"], out["shared"], atol=1e-5)
    assert np.abs(out["batched"][0] - out["batched"][1]).max() > 1e-3


def test_a_batched_counter_refuses_draws_shared_by_the_batch():
    text = (ROOT / "graphs" / "growing_nca.yaml").read_text()
    assert "t: {dtype: int32, batched: true}" in text
    shuffled = text.replace("      fire: 0.5", "      fire: 0.5\n      order: shuffle")
    with pytest.raises(mg.GraphSpecError, match=r"shuffles its stages, one order for the whole batch, but the counter clock.t is batched"):
        mg.loads_graph(shuffled)
    unbatched = text.replace("s: {batched: true, shape: [16]}", "s: {shape: [16]}")
    with pytest.raises(mg.GraphSpecError, match=r"writes fields shared by the batch: \['cell.s'\]"):
        mg.loads_graph(unbatched)
