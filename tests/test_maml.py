"""MAML + MPLP (prior and learner meta-trained together) and the MAML baseline, on tiny configs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mplp_graph as mg
from mplp_graph.meta.maml import (
    JointStep,
    MamlStep,
    evaluate_maml,
    initial_prior,
    joint_params,
    maml_adapt,
    net_loss,
    sgd_step,
    trace_maml,
)
from mplp_graph.meta.step import adam, trainable_mask
from mplp_graph.meta.train import meta_train
from mplp_graph.tasks.sinusoid import SinusoidFamily
from mplp_graph.templates.mplp import mplp_feedforward

SIZES = (1, 4, 1)
FAMILY = SinusoidFamily(inner_steps=2, batch=4, cv_points=6)
KEY = jax.random.PRNGKey(3)  # a fixed key: the steps below see the same tasks every time


def _leaves(tree, pred):
    return [(jax.tree_util.keystr(p), v) for p, v in jax.tree_util.tree_leaves_with_path(tree) if pred(jax.tree_util.keystr(p))]


@pytest.fixture(scope="module")
def joint():
    prog = mg.compile_graph(mplp_feedforward(SIZES, learner="mlp", msg=2))
    params = joint_params(prog, FAMILY, jax.random.PRNGKey(0))
    step = JointStep(prog, FAMILY.sample, 2, adam(1e-2))
    return prog, params, step, jax.jit(step.__call__)


@pytest.fixture(scope="module")
def fwd():
    return mg.compile_graph(mg.feedforward(SIZES, "relu", "l2", protocol="none"))


def test_gradients_reach_prior_and_f_and_g_only_in_full_mode(joint):
    _, params, step, jstep = joint
    opt = step.init_opt_state(params)
    for train_g in (False, True):
        mask = trainable_mask(params, train_g=train_g)
        new, _, m = jstep(params, opt, mask, None, KEY)
        assert bool(m["finite"])
        moved = {k: bool(jnp.any(a != b)) for (k, a), (_, b) in zip(_leaves(new, bool), _leaves(params, bool))}
        prior = [k for k in moved if k.startswith("['prior']")]
        f = [k for k in moved if "['f']" in k]
        # every g whose message is read; the first layer's is computed and discarded (as in the authors' code)
        g = [k for k in moved if "['g']" in k and "W0.learn" not in k]
        stats = [k for k in moved if any(s in k for s in ("in_mean", "in_norm", "out_mean"))]
        assert len(prior) == 2 * (len(SIZES) - 1) and f and g and stats
        assert all(moved[k] for k in prior), "a prior leaf got no meta-gradient"
        assert all(moved[k] for k in f), "an f leaf got no meta-gradient"
        assert all(moved[k] for k in moved if "out_scale" in k)
        assert not any(moved[k] for k in stats), "frozen standardizer statistics moved"
        if train_g:
            assert all(moved[k] for k in g), "full mode: a g leaf got no meta-gradient"
        else:  # faithful: g stays bitwise at its random init (the authors' run; docs/experiments.md, MAML + MPLP)
            assert not any(moved[k] for k in g)
        assert not any(moved[k] for k in moved if "['W0.learn']['g']" in k)  # no gradient reaches it


def test_joint_meta_steps_lower_meta_loss(joint):
    _, params, step, jstep = joint
    mask = trainable_mask(params, train_g=False)
    p, o = params, step.init_opt_state(params)
    losses = []
    for _ in range(16):
        p, o, m = jstep(p, o, mask, None, KEY)  # loss of the params before the update
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.95 * losses[0], losses  # deterministic: fixed tasks; a tiny net fits little in 2 steps


def test_sgd_step_matches_hand_written_net(fwd):
    """MAML's inner step runs on the engine's forward program: check it against plain jax."""
    prior = initial_prior(fwd, jax.random.PRNGKey(1))
    prior["b0"]["b"] = 0.1 * jnp.arange(4.0)  # non-zero biases
    task = FAMILY.sample(jax.random.PRNGKey(2))
    x, y = task["xt"][0], task["yt"][0]

    def loss(ws):
        w0, b0, w1, b1 = ws
        return jnp.mean(0.5 * (y - (jax.nn.relu(x @ w0 + b0) @ w1 + b1)) ** 2)

    ws = (prior["W0"]["w"], prior["b0"]["b"], prior["W1"]["w"], prior["b1"]["b"])
    np.testing.assert_allclose(jax.jit(net_loss, static_argnums=0)(fwd, prior, x, y), loss(ws), rtol=1e-6)
    want = [w - 0.05 * g for w, g in zip(ws, jax.grad(loss)(ws))]
    got = jax.jit(sgd_step, static_argnums=(0, 4))(fwd, prior, x, y, 0.05)
    for w, (grp, fld) in zip(want, (("W0", "w"), ("b0", "b"), ("W1", "w"), ("b1", "b"))):
        np.testing.assert_allclose(got[grp][fld], w, rtol=1e-5, atol=1e-7)


def test_first_and_second_order_maml_differ(fwd):
    prior = initial_prior(fwd, jax.random.PRNGKey(1))
    tasks = jax.vmap(FAMILY.sample)(jax.random.split(KEY, 2))
    so = MamlStep(fwd, FAMILY.sample, 2, adam(1e-3))
    fo = MamlStep(fwd, FAMILY.sample, 2, adam(1e-3), first_order=True)
    drawn = {"priors": None, "tasks": tasks}
    g_so = jax.jit(jax.grad(so.batch_loss, has_aux=True))(prior, drawn)[0]
    g_fo = jax.jit(jax.grad(fo.batch_loss, has_aux=True))(prior, drawn)[0]
    l_so, parts = jax.jit(so.batch_loss)(prior, drawn)
    np.testing.assert_allclose(l_so, jax.jit(fo.batch_loss)(prior, drawn)[0], rtol=1e-6)  # same forward
    assert set(parts) == {"cv"} and float(parts["cv"]) == float(l_so)  # MAML's meta-loss is its CV loss

    # first order = the CV gradient taken at the adapted parameters, averaged over tasks
    def cv_grad_at_adapted(task):
        net = maml_adapt(fwd, prior, task["xt"], task["yt"])
        return jax.grad(net_loss, argnums=1)(fwd, net, task["xe"], task["ye"])

    want = jax.tree_util.tree_map(lambda a: a.mean(0), jax.jit(jax.vmap(cv_grad_at_adapted))(tasks))
    for a, b in zip(jax.tree_util.tree_leaves(g_fo), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)
    diff = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree_util.tree_leaves(g_so), jax.tree_util.tree_leaves(g_fo)))
    scale = max(float(jnp.abs(a).max()) for a in jax.tree_util.tree_leaves(g_so))
    assert diff > 1e-3 * scale, (diff, scale)


def test_maml_meta_steps_lower_meta_loss_and_resume(fwd, tmp_path):
    prior = initial_prior(fwd, jax.random.PRNGKey(1))
    mask = jax.tree_util.tree_map(jnp.ones_like, prior)
    step = MamlStep(fwd, FAMILY.sample, 2, adam(1e-2))
    jstep = jax.jit(step.__call__)
    p, o = prior, step.init_opt_state(prior)
    losses = []
    for _ in range(16):
        p, o, m = jstep(p, o, mask, None, KEY)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.95 * losses[0], losses  # deterministic: fixed tasks; a tiny net fits little in 2 steps
    # through meta_train: 2 steps, stop, resume to 4 == 4 uninterrupted steps
    key = jax.random.PRNGKey(11)
    full, _ = meta_train(step, prior, mask, None, key, 4, tmp_path / "a", checkpoint_every=2, progress=False)
    meta_train(step, prior, mask, None, key, 2, tmp_path / "b", checkpoint_every=2, progress=False)
    resumed, hist = meta_train(step, prior, mask, None, key, 4, tmp_path / "b", checkpoint_every=2, progress=False)
    assert [h["step"] for h in hist] == [1, 2, 3, 4]
    for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_maml_evaluation_and_trace_agree(fwd):
    prior = initial_prior(fwd, jax.random.PRNGKey(1))
    ev = evaluate_maml(fwd, prior, FAMILY, KEY, runs=3)
    tr = trace_maml(fwd, prior, FAMILY, KEY, runs=3)
    assert ev["loss"].shape == (3, 3) and tr["pred"].shape == (3, 3, FAMILY.eval_points)
    l2 = jnp.mean(0.5 * (tr["pred"] - tr["y"][:, None]) ** 2, -1)
    np.testing.assert_allclose(l2, ev["loss"], rtol=1e-4, atol=1e-7)
