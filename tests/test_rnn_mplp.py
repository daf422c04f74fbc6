"""An Elman RNN trained by a learned protocol through time (templates/mplp_recurrent.py) and the
sequence task family it learns (tasks/sequence.py): the family's interface and numbers, the
graph file, one inner step, and the meta-gradient through the inner loop."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mplp_graph as mg
from mplp_graph import xla
from mplp_graph.meta.objectives import MetaLoss, task_loss
from mplp_graph.meta.stats import init_statistics
from mplp_graph.meta.step import adam, init_opt_state, outer_update, trainable_mask
from meta_checks import check_meta_gradient
from mplp_graph.runtime.state import agent_params
from mplp_graph.tasks.base import check_family
from mplp_graph.tasks.sequence import SineContinuation
from mplp_graph.templates.mplp_recurrent import mplp_rnn

ROOT = Path(__file__).resolve().parents[1]
FAMILY = SineContinuation(inner_steps=3, batch=4, cv_points=5, window=6)
FILE_ARGS = dict(n_in=1, hidden=8, n_out=1, steps=6, activation="tanh", name="rnn_mplp")  # make_graphs.py
# the tests' programs are compiled without XLA's backend optimizations: 11.5 instead of 19 s of
# CPU for the meta-gradient below; they run a few times only
QUICK = (("xla_backend_optimization_level", 0),)


def quick_jit(fn):
    return xla.jit(fn, QUICK)


# ---------------------------------------------------------------------------------------------
# the task family


def test_family_follows_the_interface():
    assert check_family(SineContinuation()) == []
    assert check_family(FAMILY) == []
    assert FAMILY.load() is None and FAMILY.metrics == ("loss",)


def test_sample_and_eval_task_shapes():
    K, B, N, T = 3, 4, 5, 6
    task = FAMILY.sample(jax.random.PRNGKey(0), None)
    assert task["xt"].shape == (K, B, T, 1) and task["yt"].shape == (K, B, 1)
    assert task["xe"].shape == (N, T, 1) and task["ye"].shape == (N, 1)
    both = quick_jit(lambda k: (FAMILY.eval_tasks(k, 7, None), FAMILY.eval_tasks(k, 7, None, "validation")))
    (tasks, prior_keys), (val, val_keys) = both(jax.random.PRNGKey(1))
    assert tasks["xt"].shape == (7, K, B, T, 1) and tasks["yt"].shape == (7, K, B, 1)
    assert tasks["xs"].shape == (7, K + 1, N, T, 1) and tasks["ys"].shape == (7, K + 1, N, 1)
    assert prior_keys.shape == (7, 2)
    # keys = split(key, runs); per run kp, kt = split(k): prior key kp, task from kt
    k3 = jax.random.split(jax.random.PRNGKey(1), 7)[3]
    kp, kt = jax.random.split(k3)
    np.testing.assert_array_equal(prior_keys[3], kp)
    np.testing.assert_allclose(tasks["xt"][3], FAMILY.sample(kt, None)["xt"], rtol=1e-6, atol=1e-7)  # jitted vs eager
    for i in range(K + 1):  # the same evaluation windows after every inner step
        np.testing.assert_array_equal(tasks["xs"][:, i], tasks["xe"])
        np.testing.assert_array_equal(tasks["ys"][:, i], tasks["ye"])
    np.testing.assert_array_equal(val["xs"], tasks["xs"])  # no separate validation tasks: drawn alike
    np.testing.assert_array_equal(val_keys, prior_keys)
    with pytest.raises(ValueError, match="split"):
        FAMILY.eval_tasks(jax.random.PRNGKey(1), 2, None, "train")


def test_targets_continue_the_window():
    """Samples ``dt`` apart of ``A sin(theta)`` with ``theta`` advancing by ``d = omega dt``:
    ``s_{k+1} = 2 cos(d) s_k - s_{k-1}`` and ``A^2 = s_k^2 + ((s_{k+1} - s_k cos d) / sin d)^2``;
    the target obeys both as the window's next sample."""
    for seed in range(5):
        task = jax.device_get(FAMILY.sample(jax.random.PRNGKey(seed), None))
        d = float(task["freq"]) * FAMILY.dt
        seq = np.concatenate([task["xt"][..., 0], task["yt"]], axis=-1).astype(np.float64)  # (K, B, T + 1)
        np.testing.assert_allclose(seq[..., 2:], 2 * np.cos(d) * seq[..., 1:-1] - seq[..., :-2], atol=2e-6)
        amp2 = seq[..., :-1] ** 2 + ((seq[..., 1:] - seq[..., :-1] * np.cos(d)) / np.sin(d)) ** 2
        np.testing.assert_allclose(amp2, float(task["amp"]) ** 2, rtol=1e-4)
        assert FAMILY.amp[0] <= task["amp"] <= FAMILY.amp[1] and FAMILY.freq[0] <= task["freq"] <= FAMILY.freq[1]
        # the windows start at different places: not all examples are the same window
        assert np.std(task["xt"][:, :, 0, 0]) > 0.01


def test_sample_vmaps():
    keys = jax.random.split(jax.random.PRNGKey(3), 4)
    tasks = quick_jit(jax.vmap(lambda k: FAMILY.sample(k, None)))(keys)
    assert tasks["xt"].shape == (4, 3, 4, 6, 1) and tasks["ye"].shape == (4, 5, 1)
    np.testing.assert_allclose(tasks["yt"][2], FAMILY.sample(keys[2], None)["yt"], rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# the graph


def _make_graphs():
    loader = importlib.util.spec_from_file_location("make_graphs", ROOT / "experiments" / "beyond" / "make_graphs.py")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module.graphs()


def test_graph_file_equals_its_template():
    spec = mg.load_graph(ROOT / "graphs" / "rnn_mplp.yaml")
    assert spec == _make_graphs()["rnn_mplp"][0] == mplp_rnn(**FILE_ARGS)
    assert mg.loads_graph(mg.dump_graph(spec)) == spec
    # the family's default windows fit the graph's inputs: x [B, T, n_in], y [B, n_out]
    fam = SineContinuation()
    assert spec.groups["x"].shape == (fam.window, 1) and spec.groups["loss"].shape == (1,)


def test_one_learner_per_tensor_shared_through_time_and_one_update_per_step():
    spec = mplp_rnn(1, 3, 1, 4, msg=2, learner_hidden=3)
    learners = [a for a in spec.arrows if a.op.name == "mplp_gru"]
    share = {a.name: a.share for a in learners}
    assert {k for k, v in share.items() if v is None} == {"loss->bo", "bo->Wo", "Wo->h"}
    for key, n in (("h", 4), ("b", 4), ("Wx", 4), ("Wh", 3)):
        assert sum(v == key for v in share.values()) == n
    writers = {(a.src, f): a.name for a in learners for f, o in a.updates.items() if o == "param"}
    assert writers == {("bo", "b"): "bo->Wo", ("Wo", "w"): "Wo->h", ("b", "b"): "b.learn@0", ("Wx", "w"): "Wx.learn@0", ("Wh", "w"): "Wh->h@1"}
    prog = mg.compile_graph(spec)
    assert set(jax.eval_shape(prog.init_params, jax.random.PRNGKey(0))) == {"loss->bo", "bo->Wo", "Wo->h", "h", "b", "Wx", "Wh"}
    back = [n for stage in prog.schedule.phases["backward"] for n in stage]
    # messages travel back through time: h@3 ... h@0, each after the recurrent answer that feeds it
    assert [n for n in back if n.startswith("h->b@")] == ["h->b@3", "h->b@2", "h->b@1", "h->b@0"]
    for t in (3, 2, 1):
        assert back.index(f"Wh->h@{t}") < back.index(f"h->b@{t - 1}")
    assert ("Wx", "carry") in prog.persistent and ("h", "carry") in prog.persistent
    mg.compile_graph(mplp_rnn(1, 3, 1, 3, learner="mlp", msg=2))  # the stateless variant verifies too
    mg.compile_graph(mplp_rnn(2, 3, 2, 1, msg=2, learner_hidden=3))  # a single step: no recurrent learner


def test_one_inner_step_updates_every_parameter_once_from_its_last_carry():
    """One step of the file's graph with random learners: every weight and bias moves, by the
    batch mean of the update channel of the carry its last message left (paper eq. 4)."""
    prog = mg.compile_graph(mg.load_graph(ROOT / "graphs" / "rnn_mplp.yaml"))
    params = quick_jit(prog.init_params)(jax.random.PRNGKey(0))
    task = SineContinuation(inner_steps=1, batch=5).sample(jax.random.PRNGKey(1), None)
    carry = prog.carry_of(prog.init(jax.random.PRNGKey(2), 5))
    new, out = quick_jit(prog.step_carry)(params, carry, {"x": task["xt"][0], "y": task["yt"][0]})
    assert out["loss"].shape == (5, 1) and np.all(np.isfinite(out["loss"]))
    for group, field, key in (("Wx", "w", "Wx"), ("Wh", "w", "Wh"), ("b", "b", "b"), ("Wo", "w", "Wo->h"), ("bo", "b", "bo->Wo")):
        old_p, new_p = np.asarray(carry[group][field]), np.asarray(new[group][field])
        assert np.all(np.isfinite(new_p)) and np.abs(new_p - old_p).max() > 1e-6, f"{group}.{field} did not move"
        norm = params[key]["norm"]
        delta = (np.asarray(new[group]["carry"])[..., 0] - float(norm["out_mean"])) * float(norm["out_scale"])
        np.testing.assert_allclose(new_p, old_p + delta.mean(axis=0), rtol=1e-5, atol=1e-7, err_msg=f"{group}.{field}")
    for group in ("h", "b", "Wx", "Wh", "loss"):
        assert np.abs(np.asarray(new[group]["carry"])).max() > 1e-3, f"{group}.carry"


# ---------------------------------------------------------------------------------------------
# the learning signal: meta-gradient through the inner loop, a few meta-steps


TINY = dict(n_in=1, hidden=3, n_out=1, steps=3, msg=2, learner_hidden=3)
# two inner steps: with one, the readout's learners (which run once per step) would see only their
# zero initial carry, and the weights acting on it would get no meta-gradient
TINY_FAMILY = SineContinuation(inner_steps=2, batch=4, cv_points=6, window=3)


@pytest.fixture(scope="module")
def tiny_meta():
    prog = mg.compile_graph(mplp_rnn(**TINY))

    def sample_round(k):
        kp, kt = jax.random.split(k)
        task = TINY_FAMILY.sample(kt, None)
        return agent_params(prog.spec, prog.init(kp, 1)), task["xt"], task["yt"]

    params = init_statistics(prog, quick_jit(prog.init_params)(jax.random.PRNGKey(0)), sample_round, jax.random.PRNGKey(1))
    prior = agent_params(prog.spec, prog.init(jax.random.PRNGKey(2), 1))
    task = TINY_FAMILY.sample(jax.random.PRNGKey(3), None)
    loss_and_grad = quick_jit(jax.value_and_grad(lambda p: task_loss(prog, MetaLoss(), p, prior, task)[0]))
    return params, loss_and_grad


def test_statistics_come_from_the_rollout_through_time(tiny_meta):
    params, _ = tiny_meta
    for key in ("h", "b", "Wx", "Wh", "loss->bo"):  # measured, pooled over the arrows of every time step
        norm = params[key]["norm"]
        assert np.any(np.asarray(norm["in_mean"]) != 0) and np.all(np.isfinite(norm["in_norm"])), key


def test_meta_gradient_reaches_every_trainable_leaf(tiny_meta):
    """With the stateful learner every trainable leaf gets a meta-gradient (143 leaves; the frozen
    standardizer statistics are masked): the input synapses' dropped message still feeds their
    own carry. Exceptions there would be: with ``learner="mlp"``, the input synapses' message MLP
    ``params["Wx"]["g"]`` (its message is dropped and an MLP has no carry); with a single inner
    step, the carry-side GRU weights of the readout's learners (their carry is still zero then)."""
    params, loss_and_grad = tiny_meta
    loss, grads = loss_and_grad(params)
    assert np.isfinite(float(loss)) and float(loss) > 0
    check_meta_gradient(grads, trainable_mask(params))


def test_meta_steps_lower_the_meta_loss(tiny_meta):
    """A fixed task and prior: 20 Adam steps on the normalized meta-gradient lower its meta-loss."""
    params, loss_and_grad = tiny_meta
    opt = adam(3e-3)
    mask = trainable_mask(params)
    update = quick_jit(lambda p, o, loss, g: outer_update(opt, p, o, mask, loss, g)[:2])
    p, o = params, init_opt_state(opt, params)
    before = float(loss_and_grad(params)[0])
    for _ in range(20):
        loss, g = loss_and_grad(p)
        p, o = update(p, o, loss, g)
    after = float(loss_and_grad(p)[0])
    assert after < 0.9 * before, (before, after)
