"""The learning layer's step functions and evaluation harness reproduce the values recorded
before they were restructured (tests/data/meta_golden.npz, recorded at f6576d1 by the scripts in
tests/data/meta_golden_recorder.txt): the meta-loss, its parts, the meta-gradient and the
parameters after one step of MetaStep on the sinusoid and MNIST experiment configs, JointStep
(MAML + MPLP) and MamlStep; and the evaluation outputs of the learned protocol, Adam and MAML's
SGD on the sinusoid and MNIST protocols."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import mplp_graph as mg
from mplp_graph.meta import run as R
from mplp_graph.meta.config import apply_overrides, load_experiment_config
from mplp_graph.meta.evaluate import evaluate_mplp, evaluate_optax
from mplp_graph.meta.maml import JointStep, MamlStep, evaluate_maml, initial_prior, joint_params, trace_mplp
from mplp_graph.meta.step import adam, make_pool, outer_update, trainable_mask
from mplp_graph.tasks.sinusoid import SinusoidFamily
from mplp_graph.templates.mplp import mplp_feedforward

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = dict(np.load(ROOT / "tests" / "data" / "meta_golden.npz"))
KEY = jax.random.PRNGKey(7)


def _mnist_available() -> bool:
    try:
        from mplp_graph.tasks.mnist import load_mnist

        load_mnist()
        return True
    except Exception:  # noqa: BLE001
        return False


def _check_step(name, step_fn, params, pool, data=None):
    mask = trainable_mask(params) if name != "maml" else jax.tree_util.tree_map(jnp.ones_like, params)
    np.testing.assert_array_equal(np.asarray(ravel_pytree(params)[0]), GOLDEN[f"{name}/params"])  # same starting point
    # the step's parts, compiled once: draw -> value_and_grad(batch_loss) -> outer update
    drawn = jax.jit(step_fn.draw)(params, pool, KEY, data)
    (loss, m), grads = jax.jit(jax.value_and_grad(step_fn.batch_loss, has_aux=True))(params, drawn)
    new, _, finite, _ = jax.jit(lambda *a: outer_update(step_fn.optimizer, *a))(params, step_fn.init_opt_state(params), mask, loss, grads)
    assert bool(finite)
    np.testing.assert_allclose(float(loss), GOLDEN[f"{name}/loss"], rtol=2e-6)
    np.testing.assert_allclose(float(m["cv"]), GOLDEN[f"{name}/cv"], rtol=2e-6)
    if "hint" in m:
        np.testing.assert_allclose(float(m["hint"]), GOLDEN[f"{name}/hint"], rtol=2e-6)
    g, want = np.asarray(ravel_pytree(grads)[0]), GOLDEN[f"{name}/grad"]
    scale = np.abs(want).max()
    np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(np.asarray(ravel_pytree(new)[0]), GOLDEN[f"{name}/new_params"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("exp", ["sinusoid", "mnist"])
def test_meta_step_on_the_experiment_configs_reproduces_the_recorded_values(exp):
    if exp == "mnist" and not _mnist_available():
        pytest.skip("MNIST not available")
    path = ROOT / "experiments" / exp / "config.yaml"
    config = load_experiment_config(path)
    if exp == "mnist":  # recorded with the paper's meta-loss; the config now measures the hint on the next batch, the CV on 128 images
        config = apply_overrides(config, {"meta.hint": "current", "task.cv_points": 8})
    setup = R.build(config, base_dir=path.parent)
    params = R.initial_params(setup)
    pool = make_pool(setup.prog, jax.random.PRNGKey(setup.config.meta.seed + 1), setup.config.meta.pool)
    _check_step(exp, R.meta_step(setup), params, pool, setup.data)


def test_joint_and_maml_steps_reproduce_the_recorded_values():
    family = SinusoidFamily(inner_steps=2, batch=10, cv_points=20)
    prog = mg.compile_graph(mplp_feedforward((1, 20, 20, 1), "relu", "l2", learner="mlp", msg=8, sharing="none"))
    fwd = mg.compile_graph(mg.feedforward((1, 20, 20, 1), "relu", "l2", protocol="none"))
    _check_step("joint", JointStep(prog, family.sample, 4, adam(1e-4)), joint_params(prog, family, jax.random.PRNGKey(0)), None)
    _check_step("maml", MamlStep(fwd, family.sample, 4, adam(1e-4), 0.05), initial_prior(prog, jax.random.PRNGKey(0)), None)


def test_evaluation_harness_reproduces_the_recorded_sinusoid_protocol():
    setup = R.load_setup(ROOT / "experiments" / "sinusoid" / "config.yaml")
    params = R.load_params_file(setup, ROOT / "experiments" / "sinusoid" / "learner.npz")
    key = jax.random.PRNGKey(12345)
    m = evaluate_mplp(setup.prog, setup.fwd, params, setup.family, key, 6)
    a = evaluate_optax(setup.fwd, optax.adam(0.01), setup.family, key, 6)
    for name, r in (("mplp", m), ("adam", a)):
        np.testing.assert_allclose(r["loss"], GOLDEN[f"eval_sinusoid_{name}/eval"], rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(r["seen_loss"][:, 1:], GOLDEN[f"eval_sinusoid_{name}/train"], rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(r["pred"][..., 0], GOLDEN[f"eval_sinusoid_{name}/pred"], rtol=1e-5, atol=1e-6)
    maml = evaluate_maml(setup.fwd, initial_prior(setup.prog, jax.random.PRNGKey(0)), setup.family, key, 6)
    np.testing.assert_allclose(maml["loss"], GOLDEN["eval_maml/eval"], rtol=1e-5, atol=1e-8)
    trace = trace_mplp(setup.prog, setup.fwd, params, setup.family, key, 3)
    np.testing.assert_allclose(trace["pred"], GOLDEN["trace_mplp/pred"], rtol=1e-5, atol=1e-6)


def test_evaluation_harness_reproduces_the_recorded_mnist_protocol():
    if not _mnist_available():
        pytest.skip("MNIST not available")
    setup = R.load_setup(ROOT / "experiments" / "mnist" / "config.yaml")
    params = R.load_params_file(setup, ROOT / "experiments" / "mnist" / "learner.npz")
    key = jax.random.PRNGKey(12345)
    m = evaluate_mplp(setup.prog, setup.fwd, params, setup.family, key, 4, data=setup.data)
    a = evaluate_optax(setup.fwd, optax.adam(0.01), setup.family, key, 4, data=setup.data)
    np.testing.assert_array_equal(m["accuracy"][:, 1:], GOLDEN["eval_mnist_mplp/acc"])
    np.testing.assert_array_equal(a["accuracy"][:, 1:], GOLDEN["eval_mnist_adam/acc"])
