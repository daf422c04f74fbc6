"""Runs trained together (vmapped sweeps: ``meta_train(..., runs=K)``), the MNIST task family, and
cached evaluation programs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mplp_graph as mg
from mplp_graph import xla
from mplp_graph.meta.evaluate import evaluate_mplp
from mplp_graph.meta.objectives import MetaLoss
from mplp_graph.meta.stats import init_statistics
from mplp_graph.meta.step import MetaStep, adam, make_pool, trainable_mask
from mplp_graph.meta.sweep import load_stacked_params, stack, sweep_checkpoints, unstack
from mplp_graph.meta.train import _jitted_runs, meta_train
from mplp_graph.runtime.state import agent_params
from mplp_graph.tasks.mnist import MnistFamily, meta_splits
from mplp_graph.tasks.sinusoid import SinusoidFamily
from mplp_graph.templates.feedforward import feedforward
from mplp_graph.templates.mplp import mplp_feedforward

FAMILY = SinusoidFamily(inner_steps=2, batch=4, cv_points=6)


@pytest.fixture(scope="module")
def setup():
    prog = mg.compile_graph(mplp_feedforward((1, 4, 1), msg=2, hidden=3))

    def sample_round(k):
        kp, kt = jax.random.split(k)
        task = FAMILY.sample(kt)
        return agent_params(prog.spec, prog.init(kp, 1)), task["xt"], task["yt"]

    runs = [init_statistics(prog, prog.init_params(jax.random.PRNGKey(s)), sample_round, jax.random.PRNGKey(10 + s)) for s in (0, 1)]
    pools = [make_pool(prog, jax.random.PRNGKey(20 + s), 4) for s in (0, 1)]
    step = MetaStep(prog, FAMILY.sample, MetaLoss(), 2, adam(3e-3))
    return prog, runs, pools, step


def test_runs_step_equals_separate_runs(setup):
    """Two runs vmapped in one program == each run's own meta-step (lr multiplier 1 and 2:
    Adam's first step moves each entry by lr * sign-ish, so run 1 moves twice as far)."""
    _, runs, pools, step = setup
    mask = trainable_mask(runs[0])
    keys = [jax.random.PRNGKey(30), jax.random.PRNGKey(31)]
    opts = [step.init_opt_state(p) for p in runs]
    run = _jitted_runs(step)  # meta_train's step for runs=K
    new, _, m = run(stack(runs), stack(opts), jnp.array([1.0, 2.0]), mask, stack(pools), stack(keys), jnp.int32(3), None)
    for i, mult in enumerate((1.0, 2.0)):
        ref, _, m_ref = xla.jit(step.__call__)(runs[i], opts[i], mask, pools[i], jax.random.fold_in(keys[i], 3))  # as _jitted_runs
        np.testing.assert_allclose(float(m["loss"][i]), float(m_ref["loss"]), rtol=1e-5)
        for a, b, o in zip(jax.tree_util.tree_leaves(unstack(new, i)), jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(runs[i])):
            np.testing.assert_allclose(np.asarray(a), np.asarray(o) + mult * (np.asarray(b) - np.asarray(o)), rtol=1e-4, atol=1e-6)
    moved = [float(jnp.abs(unstack(new, i)["b0->W0"]["norm"]["out_scale"] - runs[i]["b0->W0"]["norm"]["out_scale"]).max()) for i in (0, 1)]
    assert moved[0] > 0 and moved[1] > 1.5 * moved[0]


def test_sweep_training_resume_and_params_file(setup, tmp_path):
    _, runs, pools, step = setup
    mask = trainable_mask(runs[0])
    keys = stack([jax.random.PRNGKey(40), jax.random.PRNGKey(41)])
    full, hist = meta_train(step, stack(runs), mask, stack(pools), keys, 4, tmp_path / "a", runs=2, lr_mult=[1.0, 1.0],
                            checkpoint_every=2, log_every=1, progress=False)
    done = hist[-1]["step"]
    assert done == 4 and [h["step"] for h in hist] == [1, 2, 3, 4] and len(hist[0]["loss"]) == 2
    meta_train(step, stack(runs), mask, stack(pools), keys, 2, tmp_path / "b", runs=2, lr_mult=[1.0, 1.0], checkpoint_every=2, log_every=1,
               progress=False)
    resumed, hist_b = meta_train(step, stack(runs), mask, stack(pools), keys, 4, tmp_path / "b", runs=2, lr_mult=[1.0, 1.0],
                                 checkpoint_every=2, log_every=1, progress=False)
    for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [h["loss"] for h in hist] == [h["loss"] for h in hist_b]
    loaded = load_stacked_params(runs[0], tmp_path / "a" / "params.npz")
    for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(loaded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="another graph"):
        other = mg.compile_graph(mplp_feedforward((1, 4, 1), msg=3, hidden=3))  # learner shapes depend on msg
        load_stacked_params(other.init_params(jax.random.PRNGKey(0)), tmp_path / "a" / "params.npz")


def test_sweep_keeps_every_checkpoint_for_selection(setup, tmp_path):
    """``keep`` large: every checkpoint stays, and ``sweep_checkpoints`` returns each one's
    learners (the last equal to params.npz; earlier ones differ), for early stopping."""
    _, runs, pools, step = setup
    mask = trainable_mask(runs[0])
    keys = stack([jax.random.PRNGKey(40), jax.random.PRNGKey(41)])
    final, _ = meta_train(step, stack(runs), mask, stack(pools), keys, 3, tmp_path, runs=2, lr_mult=[1.0, 1.0],
                          checkpoint_every=1, log_every=1, keep=10, progress=False)
    found = sweep_checkpoints(tmp_path, runs[0])
    assert [s for s, _ in found] == [1, 2, 3]
    for a, b in zip(jax.tree_util.tree_leaves(found[-1][1]), jax.tree_util.tree_leaves(final)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    first = found[0][1]["b0->W0"]["norm"]["out_scale"]
    assert first.shape[0] == 2 and float(jnp.abs(first - final["b0->W0"]["norm"]["out_scale"]).max()) > 0
    meta_train(step, stack(runs), mask, stack(pools), keys, 3, tmp_path / "k1", runs=2, lr_mult=[1.0, 1.0],
               checkpoint_every=1, log_every=1, keep=1, progress=False)
    assert [s for s, _ in sweep_checkpoints(tmp_path / "k1", runs[0])] == [3]


def test_cached_evaluation_uses_the_given_learner(setup):
    """The evaluation program is compiled once per graph; different learners still give
    different results (parameters are arguments, not baked-in constants)."""
    prog, runs, _, _ = setup
    fwd = mg.compile_graph(feedforward((1, 4, 1), "relu", "l2", protocol="none"))
    key = jax.random.PRNGKey(0)
    a = np.asarray(evaluate_mplp(prog, fwd, runs[0], FAMILY, key, 4)["loss"])
    b = np.asarray(evaluate_mplp(prog, fwd, runs[1], FAMILY, key, 4)["loss"])
    a2 = np.asarray(evaluate_mplp(prog, fwd, runs[0], FAMILY, key, 4)["loss"])
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(a[:, 0], b[:, 0])  # same tasks and priors before any update
    assert np.abs(a[:, 1:] - b[:, 1:]).max() > 0


def test_mnist_family_blocks_and_splits():
    n, d = 400, 6
    x = np.arange(n * d, dtype=np.float32).reshape(n, d)
    y = np.eye(10, dtype=np.float32)[np.arange(n) % 10]
    splits = meta_splits({"train_x": x, "train_y": y}, validation=80)
    assert splits["train_x"].shape == (320, d) and splits["val_x"].shape == (80, d)
    np.testing.assert_array_equal(splits["val_x"][0], x[320])
    fam = MnistFamily(inner_steps=3, batch=4, cv_points=5)
    data = {k: jnp.asarray(v) for k, v in splits.items()}
    starts = set()
    for s in range(20):
        t = jax.jit(fam.sample)(jax.random.PRNGKey(s), data)
        assert t["xt"].shape == (3, 4, d) and t["yt"].shape == (3, 4, 10) and t["xe"].shape == (5, d)
        rows = np.asarray(t["xt"]).reshape(12, d)[:, 0] / d  # image indices
        np.testing.assert_array_equal(rows, rows[0] + np.arange(12))  # one block of consecutive images
        assert rows[0] % 12 == 0 and rows[-1] < 320  # block-aligned, inside the meta-training split
        cv = np.asarray(t["xe"])[:, 0] / d
        assert cv[0] >= 320 and np.all(np.diff(cv) == 1)  # consecutive validation images
        np.testing.assert_array_equal(np.argmax(t["yt"].reshape(12, 10), -1), rows.astype(int) % 10)
        starts.add(rows[0])
    assert len(starts) > 5
    with pytest.raises(ValueError, match="validation"):
        meta_splits({"train_x": x, "train_y": y}, validation=n)


def test_sweep_script_resumed_keeps_commands_and_time(tmp_path):
    """``experiments/sweep.py`` run twice on one folder: the second run resumes from the first's
    checkpoint, and ``sweep.json`` lists both commands and sums both runs' training time."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / "sweep.py"
    spec = importlib.util.spec_from_file_location("sweep_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    tiny = ["--config", str(path.parent / "sinusoid" / "config.yaml"), "--run-dir", str(tmp_path), "--seeds", "0",
            "--no-progress", "--log-every", "1", "--set", "graph.sizes=[1, 2, 1]", "graph.msg=2", "graph.hidden=2", "meta.outer_batch=1",
            "meta.pool=1", "meta.checkpoint_every=1", "meta.stats_rounds=1", "meta.remat=false", "task.inner_steps=1"]
    assert script.main(tiny + ["--steps", "1"]) == 0
    first = json.loads((tmp_path / "sweep.json").read_text())
    assert first["steps_done"] == 1 and len(first["commands"]) == 1
    assert script.main(tiny + ["--steps", "2"]) == 0
    second = json.loads((tmp_path / "sweep.json").read_text())
    assert second["steps_done"] == 2 and second["commands"] == first["commands"] + [second["command"]]
    assert "--steps 1" in second["commands"][0] and "--steps 2" in second["commands"][1]
    assert second["train_wall_s"] > first["train_wall_s"] > 0
    rows = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2]  # the second run went on from step 1, not from the start
