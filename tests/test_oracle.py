"""The backprop oracle (:mod:`mplp_graph.runtime.oracle`): a protocol whose backward arrows send
exact chain-rule gradients with sum aggregation and update ``p -= lr * grad`` reproduces
``jax.grad`` + SGD.

Two references: a dense net written directly in jax.numpy (independent of the engine), and, for
any graph (the skip-connection graph from YAML), ``jax.grad`` through the graph's forward phase.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mplp_graph as mg

ROOT = Path(__file__).resolve().parents[1]
LR = 0.1
ACTS = {"relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh, "identity": lambda h: h}


def direct_loss(Ws, bs, x, y, act, loss):
    h = x
    for l, (W, b) in enumerate(zip(Ws, bs)):
        h = h @ W + b
        if l < len(Ws) - 1:
            h = ACTS[act](h)
    if loss == "l2":
        return jnp.mean(jnp.sum(0.5 * (y - h) ** 2, -1))
    p = jax.nn.softmax(h)
    return jnp.mean(jnp.sum(-y * jnp.log(jnp.clip(p, 1e-7, 1 - 1e-7)), -1))


def _data(rng, batch, sizes, loss):
    x = rng.normal(size=(batch, sizes[0])).astype(np.float32)
    if loss == "l2":
        return x, rng.normal(size=(batch, sizes[-1])).astype(np.float32)
    return x, np.eye(sizes[-1], dtype=np.float32)[rng.integers(0, sizes[-1], batch)]


CASES = [
    ((1, 20, 20, 1), "relu", "l2", 10),
    ((3, 5), "identity", "l2", 4),
    ((5, 7, 3), "sigmoid", "ce", 6),
    ((4, 6, 5, 3), "tanh", "l2", 3),
    ((6, 3, 4, 2, 5), "sigmoid", "l2", 2),
    ((144, 50, 10), "sigmoid", "ce", 8),
    ((2, 9, 9, 9, 4), "relu", "ce", 5),
]


@pytest.mark.parametrize("sizes,act,loss,batch", CASES, ids=[f"{'-'.join(map(str, c[0]))}-{c[1]}-{c[2]}" for c in CASES])
def test_backprop_protocol_equals_jax_grad_sgd(sizes, act, loss, batch):
    prog = mg.compile_graph(mg.feedforward(sizes, act, loss, lr=LR))
    n = len(sizes) - 1
    rng = np.random.default_rng(sum(sizes))
    state = prog.init(jax.random.PRNGKey(len(sizes)), batch)
    for l in range(n):  # non-zero biases so that bias wiring is tested too
        state[f"b{l}"]["b"] = jnp.asarray(rng.normal(scale=0.1, size=sizes[l + 1]), jnp.float32)
    Ws = [state[f"W{l}"]["w"] for l in range(n)]
    bs = [state[f"b{l}"]["b"] for l in range(n)]
    step = jax.jit(prog.step)
    grad = jax.jit(jax.grad(direct_loss, (0, 1)), static_argnums=(4, 5))
    for _ in range(3):
        x, y = _data(rng, batch, sizes, loss)
        gW, gb = grad(Ws, bs, x, y, act, loss)
        Ws = [W - LR * g for W, g in zip(Ws, gW)]
        bs = [b - LR * g for b, g in zip(bs, gb)]
        state, out = step({}, state, {"x": x, "y": y})
    for l in range(n):
        np.testing.assert_allclose(state[f"W{l}"]["w"], Ws[l], atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(state[f"b{l}"]["b"], bs[l], atol=1e-5, rtol=1e-5)
    assert float(jnp.abs(state["W0"]["w"] - prog.init(jax.random.PRNGKey(len(sizes)), batch)["W0"]["w"]).max()) > 1e-6


def forward_oracle(prog: mg.Program, fwd: mg.Program, state, batches, lr, updated):
    """jax.grad of the batch-mean summed loss through the forward phase, then SGD on ``updated``."""
    params = {g: dict(state[g]) for g in state}

    def loss_fn(p, batch):
        s = {g: {**state[g], **p.get(g, {})} for g in state}
        _, out = fwd.forward({}, s, batch)
        return jnp.mean(jnp.sum(out["loss"], -1))

    p = {g: {f: params[g][f] for f in fs} for g, fs in updated.items()}
    for batch in batches:
        grads = jax.grad(loss_fn)(p, batch)
        p = jax.tree_util.tree_map(lambda v, gr: v - lr * gr, p, grads)
    return p


def test_backprop_protocol_on_skip_graph_from_yaml():
    spec = mg.load_graph(ROOT / "graphs" / "skip_mlp.yaml")
    prog = mg.compile_graph(spec)
    assert len(spec.groups["b1"].state) and sum(a.into == "z" and a.dst == "b1" for a in spec.arrows) == 2
    rng = np.random.default_rng(0)
    batch_size = 5
    state = prog.init(jax.random.PRNGKey(3), batch_size)
    state["b0"]["b"] = jnp.asarray(rng.normal(scale=0.1, size=6), jnp.float32)
    batches = [{"x": rng.normal(size=(batch_size, 4)).astype(np.float32), "y": rng.normal(size=(batch_size, 3)).astype(np.float32)} for _ in range(3)]
    updated = {"W0": ["w"], "Ws": ["w"], "W1": ["w"], "b0": ["b"], "b1": ["b"]}
    want = forward_oracle(prog, prog, state, batches, 0.1, updated)
    step = jax.jit(prog.step)
    for batch in batches:
        state, _ = step({}, state, batch)
    for g, fs in updated.items():
        for f in fs:
            np.testing.assert_allclose(state[g][f], want[g][f], atol=1e-5, rtol=1e-5)


def test_backprop_through_step_activation_is_refused():
    with pytest.raises(mg.NotDifferentiableError, match="has no gradient"):
        mg.feedforward((2, 3, 1), "step", "l2")
