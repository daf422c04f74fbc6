"""The authors' published learners (their ``mplp/savedmodels/*.npy``), loaded into the engine."""

from pathlib import Path

import jax
import numpy as np
import pytest

import mplp_graph as mg
from mplp_graph.meta.evaluate import evaluate_mplp
from mplp_graph.reference import ReferenceFormatError, load_reference_learner, load_reference_prior
from mplp_graph.tasks.sinusoid import SinusoidFamily
from mplp_graph.templates.mplp import mplp_feedforward

WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "reference-weights"
pytestmark = pytest.mark.skipif(not WEIGHTS.exists(), reason="shared/reference-weights not present")


def _out_scales(params):
    return {k: round(float(v["norm"]["out_scale"]), 3) for k, v in params.items() if "norm" in v and "out_scale" in v["norm"]}


def test_sinusoid_learner_reproduces_the_published_curve():
    prog = mg.compile_graph(mplp_feedforward((1, 20, 20, 1)))
    params = load_reference_learner(WEIGHTS / "sinusoid_weights_00035869.npy", prog)
    # the out_scale values stored in the file (all started at 0.01), dense layers in order, W then b
    assert _out_scales(params) == {"W0.learn": 0.065, "b0->W0": 0.14, "W1->a0": 0.194, "b1->W1": 0.137, "W2->a1": 0.46, "b2->W2": 0.311}
    assert float(params["b0->W0"]["net"]["b_update"].mean()) == pytest.approx(-1.0, abs=0.3)  # trained from -1
    fwd = mg.compile_graph(mg.feedforward((1, 20, 20, 1), "relu", "l2", protocol="none"))
    r = evaluate_mplp(prog, fwd, params, SinusoidFamily(), jax.random.PRNGKey(0), runs=50)
    ev = np.asarray(r["loss"]).mean(0)
    # reference (NumPy re-implementation, 100 runs): [0.0232, 0.0100, 0.0045, 0.0023, 0.0014, 0.0011]
    assert np.all(np.diff(ev) < 0), ev
    assert ev[5] < 0.0025 and ev[0] > 0.015, ev
    assert ev[2] == pytest.approx(0.0045, rel=0.4) and ev[5] == pytest.approx(0.0011, rel=0.5), ev


def test_mnist_and_maml_learners_load():
    prog = mg.compile_graph(mplp_feedforward((144, 50, 10), "sigmoid", "ce", msg=4, hidden=7, sharing="layers"))
    params = load_reference_learner(WEIGHTS / "mnist_weights_00005000.npy", prog)
    assert _out_scales(params) == {"W0.learn": 0.198, "b0->W0": 0.038, "W1->a0": 1.182, "b1->W1": 0.012}
    # the stored statistics of the CE targets: mean 0.1 * 31/32 (the MNIST notebook mixes in 5
    # statistics rounds with p = 0.5, so the initial value 0 keeps weight 1/32)
    assert float(params["loss->softmax"]["norm"]["in_mean"][2]) == pytest.approx(0.096875, abs=1e-6)
    stateless = mg.compile_graph(mplp_feedforward((1, 20, 20, 1), learner="mlp"))
    p = load_reference_learner(WEIGHTS / "maml_sin_net_weights_00258202.npy", stateless)
    # g never reached the optimizer in the reference (core.py MessageGenerator misspells
    # trainable_weights): every g bias is still 0
    assert all(float(np.abs(v["g"][b]).max()) == 0 for v in p.values() if "g" in v for b in ("b1", "b2", "b3"))
    assert any(float(np.abs(v["f"]["b1"]).max()) > 0 for v in p.values() if v.get("f"))
    prior = load_reference_prior(WEIGHTS / "maml_sin_prior_weights_00258202.npy", stateless)
    assert prior["W1"]["w"].shape == (20, 20) and prior["b2"]["b"].shape == (1,)


def test_mismatched_files_are_refused_with_sizes(tmp_path):
    prog = mg.compile_graph(mplp_feedforward((1, 20, 20, 1)))
    flat = np.load(WEIGHTS / "sinusoid_weights_00035869.npy")
    np.save(tmp_path / "short.npy", flat[:-10])
    with pytest.raises(ReferenceFormatError, match=r"the file ends at 115,071 floats.*loss->b2"):
        load_reference_learner(tmp_path / "short.npy", prog)
    np.save(tmp_path / "long.npy", np.concatenate([flat, np.zeros(3, np.float32)]))
    with pytest.raises(ReferenceFormatError, match=r"use 115,081 floats but the file has 115,084"):
        load_reference_learner(tmp_path / "long.npy", prog)
    other = mg.compile_graph(mplp_feedforward((1, 20, 20, 1), msg=4))
    with pytest.raises(ReferenceFormatError, match="different graph"):
        load_reference_learner(WEIGHTS / "sinusoid_weights_00035869.npy", other)


def test_one_step_with_the_mnist_learner_is_finite_and_moves_weights():
    prog = mg.compile_graph(mplp_feedforward((144, 50, 10), "sigmoid", "ce", msg=4, hidden=7, sharing="layers"))
    params = load_reference_learner(WEIGHTS / "mnist_weights_00005000.npy", prog)
    state = prog.init(jax.random.PRNGKey(0), 8)
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(8, 144)).astype(np.float32), "y": np.eye(10, dtype=np.float32)[rng.integers(0, 10, 8)]}
    new, out = jax.jit(prog.step)(params, state, batch)
    for g in ("W0", "W1"):
        assert np.all(np.isfinite(new[g]["w"])) and np.all(np.isfinite(new[g]["carry"]))
        assert float(np.abs(new[g]["w"] - state[g]["w"]).max()) > 1e-6
    assert np.all(np.isfinite(out["loss"]))


def test_cli_reference_command(tmp_path, capsys):
    from mplp_graph.cli import main

    out = tmp_path / "mnist.npz"
    assert main(["reference", str(WEIGHTS / "mnist_weights_00005000.npy"), "--graph", "mnist", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "46,829 numbers loaded" in text and "1.1825" in text and out.exists()
    assert main(["reference", str(WEIGHTS / "mnist_weights_00005000.npy"), "--graph", "sinusoid"]) == 2
    assert "different graph" in capsys.readouterr().err
