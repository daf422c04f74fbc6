"""MPLP learners, standardization, meta-gradients and checkpoints on tiny configs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mplp_graph as mg
from meta_checks import check_meta_gradient
from mplp_graph.learners.nets import gru_apply, gru_init, param_count
from mplp_graph.learners.standardize import channel_stats
from mplp_graph.meta.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from mplp_graph.meta.objectives import MetaLoss
from mplp_graph.meta.stats import init_statistics
from mplp_graph.meta.step import MetaStep, adam, make_pool, normalize_per_leaf, outer_update, trainable_mask
from mplp_graph.runtime.state import agent_params
from mplp_graph.tasks.sinusoid import SinusoidFamily
from mplp_graph.templates.mplp import mplp_feedforward

TINY = dict(sizes=(1, 4, 1), msg=2, hidden=3)
FAMILY = SinusoidFamily(inner_steps=2, batch=4, cv_points=6)


def test_reference_parameter_counts():
    """The engine's learners have exactly as many numbers as the published learner files
    (the authors' ``mplp/savedmodels/*.npy``): 115,081 (sinusoid), 46,829 (MNIST, shared W/b),
    64,422 (MAML, stateless)."""
    cases = [
        (dict(sizes=(1, 20, 20, 1)), 115_081),
        (dict(sizes=(144, 50, 10), activation="sigmoid", loss="ce", msg=4, hidden=7, sharing="layers"), 46_829),
        (dict(sizes=(1, 20, 20, 1), learner="mlp"), 64_422),
    ]
    for kw, expected in cases:
        prog = mg.compile_graph(mplp_feedforward(**kw))
        assert param_count(prog.init_params(jax.random.PRNGKey(0))) == expected


def test_gru_counts_and_gate_init():
    p = gru_init(jax.random.PRNGKey(0), 10, 24)
    assert param_count(p) == 12_984  # the authors' core.py GRUBlock(x 10, carry 24): the sinusoid weight learner
    assert np.all(p["b_update"] == -1.0) and np.all(p["b_reset"] == -1.0) and np.all(p["b_next"] == 0.0)
    assert "b3" not in p["next_x_net"] and "b3" not in p["next_c_net"]  # no bias on the last MLP layer


def test_gru_channels_equal_concatenation():
    """Splitting the first layer by channels equals running the GRU on the concatenated input."""
    key = jax.random.PRNGKey(1)
    p = gru_init(key, 4, 6)
    m = jax.random.normal(jax.random.fold_in(key, 1), (3, 1, 5, 2))  # (b, 1, out, msg) constant over i
    w = jax.random.normal(jax.random.fold_in(key, 2), (1, 7, 5, 1))  # (1, in, out, 1)
    x = jax.random.normal(jax.random.fold_in(key, 3), (3, 7, 1, 1))  # (b, in, 1, 1) constant over j
    c = jax.random.normal(jax.random.fold_in(key, 4), (3, 7, 5, 6))
    split = gru_apply(p, [m, w, x], c)
    full = jnp.concatenate([jnp.broadcast_to(v, (3, 7, 5, v.shape[-1])) for v in (m, w, x)], -1)
    np.testing.assert_allclose(split, gru_apply(p, [full], c), rtol=1e-5, atol=1e-6)
    assert split.shape == (3, 7, 5, 6)


def test_carry_layout_and_outputs():
    """Parameter agents carry [update | hidden | message]; the message is the last msg channels."""
    spec = mplp_feedforward(**TINY)
    prog = mg.compile_graph(spec)
    assert spec.groups["W0"].state["carry"].shape == (1 + 3 + 2,)
    assert spec.groups["a0"].state["carry"].shape == (3 + 2,)
    params = prog.init_params(jax.random.PRNGKey(0))
    state = prog.init(jax.random.PRNGKey(1), 4)
    assert state["W0"]["carry"].shape == (4, 1, 4, 6)  # one carry per agent per example slot
    x = jnp.linspace(-1, 1, 4)[:, None]
    new, _ = prog.step(params, state, {"x": x, "y": jnp.sin(x)})
    # b0's message to W0 is the last 2 channels of b0's new carry
    np.testing.assert_allclose(new["W0"]["m"][:, 0], new["b0"]["carry"][..., -2:], rtol=1e-6)
    # a0 receives W1's messages averaged over the fan-out (here 1 output)
    np.testing.assert_allclose(new["a0"]["m"], new["W1"]["carry"][:, :, 0, -2:], rtol=1e-6)
    # the weight update is the batch mean of (carry[0] - out_mean) * out_scale
    norm = params["W1->a0"]["norm"]
    delta = (new["W1"]["carry"][..., 0].mean(0) - norm["out_mean"]) * norm["out_scale"]
    np.testing.assert_allclose(new["W1"]["w"], state["W1"]["w"] + delta, rtol=1e-5, atol=1e-7)


def test_channel_stats_hand_computed():
    a = jnp.array([[1.0, 3.0], [5.0, 7.0]])  # mean 4, population std sqrt(5)
    const = jnp.full((3, 1), 2.0)  # std 0 -> norm 1
    mean, norm = channel_stats([a, const])
    np.testing.assert_allclose(mean, [4.0, 2.0])
    np.testing.assert_allclose(norm, [1 / np.sqrt(5.0), 1.0], rtol=1e-6)


def _sample_round(prog):
    def sample(k):
        kp, kt = jax.random.split(k)
        task = FAMILY.sample(kt)
        return agent_params(prog.spec, prog.init(kp, 1)), task["xt"], task["yt"]

    return sample


def test_init_statistics_mix_and_freeze():
    prog = mg.compile_graph(mplp_feedforward(**TINY))
    params = prog.init_params(jax.random.PRNGKey(0))
    half = init_statistics(prog, params, _sample_round(prog), jax.random.PRNGKey(3), rounds=1, mix=0.5)
    full = init_statistics(prog, params, _sample_round(prog), jax.random.PRNGKey(3), rounds=1, mix=1.0)
    for key in ("b0->W0", "W1->a0", "loss->b1"):
        h, f = half[key]["norm"], full[key]["norm"]
        np.testing.assert_allclose(h["in_mean"], 0.5 * f["in_mean"], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(h["in_norm"], 0.5 + 0.5 * f["in_norm"], rtol=1e-5)
        assert np.any(f["in_mean"] != 0)
    # the size-1 output bias never moves during init: its std is 0, so its norm stays 1
    assert float(full["b1->W1"]["norm"]["in_norm"][1]) == 1.0
    # statistics are frozen: their meta-gradient is masked out, out_scale is trained
    mask = trainable_mask(full)
    assert float(mask["b0->W0"]["norm"]["in_mean"].sum()) == 0 and float(mask["b0->W0"]["norm"]["out_scale"]) == 1


def test_per_leaf_normalization():
    g = {"a": jnp.array([3.0, 4.0]), "b": jnp.zeros(3)}
    n = normalize_per_leaf(g)
    np.testing.assert_allclose(n["a"], [0.6, 0.8], rtol=1e-6)
    assert np.all(n["b"] == 0)


@pytest.fixture(scope="module")
def tiny_meta():
    prog = mg.compile_graph(mplp_feedforward(**TINY))
    params = init_statistics(prog, prog.init_params(jax.random.PRNGKey(0)), _sample_round(prog), jax.random.PRNGKey(1))
    pool = make_pool(prog, jax.random.PRNGKey(2), 8)
    step = MetaStep(prog, FAMILY.sample, MetaLoss(), 2, adam(3e-3))
    return prog, params, pool, step


def test_meta_gradient_finite_nonzero_for_every_trainable_leaf(tiny_meta):
    prog, params, pool, step = tiny_meta
    priors = jax.tree_util.tree_map(lambda a: a[:2], pool)
    tasks = jax.vmap(FAMILY.sample)(jax.random.split(jax.random.PRNGKey(5), 2))
    grads = jax.grad(lambda p: step.batch_loss(p, {"priors": priors, "tasks": tasks})[0])(params)
    check_meta_gradient(grads, trainable_mask(params))


def test_meta_steps_lower_meta_loss(tiny_meta):
    """Fixed tasks and priors: a few meta-steps lower the meta-loss on them."""
    prog, params, pool, step = tiny_meta
    priors = jax.tree_util.tree_map(lambda a: a[:2], pool)
    tasks = jax.vmap(FAMILY.sample)(jax.random.split(jax.random.PRNGKey(5), 2))
    mask = trainable_mask(params)
    loss_fn = jax.jit(lambda p: step.batch_loss(p, {"priors": priors, "tasks": tasks})[0])

    @jax.jit
    def update(p, o):
        loss, g = jax.value_and_grad(loss_fn)(p)
        return outer_update(step.optimizer, p, o, mask, loss, g)[:2]

    before = float(loss_fn(params))
    p, o = params, step.init_opt_state(params)
    for _ in range(15):
        p, o = update(p, o)
    after = float(loss_fn(p))
    assert after < 0.9 * before, (before, after)


def test_meta_step_runs_and_checkpoint_roundtrip(tiny_meta, tmp_path):
    prog, params, pool, step = tiny_meta
    mask = trainable_mask(params)
    opt = step.init_opt_state(params)
    p2, o2, m = jax.jit(step.__call__)(params, opt, mask, pool, jax.random.PRNGKey(0))
    assert bool(m["finite"]) and np.isfinite(float(m["loss"]))
    # frozen statistics did not move, trained leaves did
    np.testing.assert_array_equal(p2["b0->W0"]["norm"]["in_mean"], params["b0->W0"]["norm"]["in_mean"])
    assert float(jnp.abs(p2["b0->W0"]["norm"]["out_scale"] - params["b0->W0"]["norm"]["out_scale"])) > 0
    save_checkpoint(tmp_path, 7, {"params": p2, "opt_state": o2}, {"note": "test"})
    ckpt = latest_checkpoint(tmp_path)
    trees, manifest = load_checkpoint(ckpt, {"params": params, "opt_state": opt})
    assert manifest["step"] == 7
    for a, b in zip(jax.tree_util.tree_leaves((p2, o2)), jax.tree_util.tree_leaves((trees["params"], trees["opt_state"]))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_resume_is_bitwise_identical(tiny_meta, tmp_path):
    """2 steps, stop, resume to 4 == 4 uninterrupted steps (keys are fold_in(key, step))."""
    from mplp_graph.meta.train import meta_train

    prog, params, pool, step = tiny_meta
    mask = trainable_mask(params)
    key = jax.random.PRNGKey(11)
    full, hist_full = meta_train(step, params, mask, pool, key, 4, tmp_path / "a", checkpoint_every=2, progress=False)
    meta_train(step, params, mask, pool, key, 2, tmp_path / "b", checkpoint_every=2, progress=False)
    resumed, hist_res = meta_train(step, params, mask, pool, key, 4, tmp_path / "b", checkpoint_every=2, progress=False)
    for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [h["loss"] for h in hist_full] == [h["loss"] for h in hist_res]
    assert [h["step"] for h in hist_res] == [1, 2, 3, 4]


def test_hint_on_the_next_batch():
    """``hint="next"``: after inner step i, the loss on batch i + 1 (k - 1 values); the nets are
    the same as with ``"current"``, whose hint after step i is the loss on batch i."""
    from mplp_graph.meta.objectives import inner_loop, predict_loss

    prog = mg.compile_graph(mplp_feedforward(**TINY))
    params = prog.init_params(jax.random.PRNGKey(0))
    prior = agent_params(prog.spec, prog.init(jax.random.PRNGKey(1), 1))
    family = SinusoidFamily(inner_steps=3, batch=4, cv_points=6)
    task = family.sample(jax.random.PRNGKey(2), None)
    xt, yt = task["xt"], task["yt"]
    state_c, cur = inner_loop(prog, params, prior, xt, yt, remat=False)
    state_n, nxt = inner_loop(prog, params, prior, xt, yt, remat=False, hint="next")
    assert cur.shape == (3,) and nxt.shape == (2,)
    for a, b in zip(jax.tree_util.tree_leaves(state_c), jax.tree_util.tree_leaves(state_n), strict=True):
        np.testing.assert_array_equal(a, b)
    # the nets after steps 1 and 2: rerun the loop on the first 1 and 2 batches
    for i in range(2):
        state_i, _ = inner_loop(prog, params, prior, xt[: i + 1], yt[: i + 1], remat=False)
        np.testing.assert_allclose(nxt[i], predict_loss(prog, params, state_i, xt[i + 1], yt[i + 1]), rtol=1e-6)
        np.testing.assert_allclose(cur[i], predict_loss(prog, params, state_i, xt[i], yt[i]), rtol=1e-6)
    assert not np.allclose(nxt, cur[:2])
    with pytest.raises(ValueError, match="at least 2 inner steps"):
        inner_loop(prog, params, prior, xt[:1], yt[:1], hint="next")
    with pytest.raises(ValueError, match="hint must be one of"):
        MetaLoss(hint="previous")
