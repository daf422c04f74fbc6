"""A backprop training step written by hand in jax.numpy, the oracle of the engine's backprop
protocol (``mg.feedforward(..., protocol="backprop")``, one ``Program.step_carry``):

* :func:`manual_step`: forward, softmax, loss and a hand-written chain-rule backward that follows
  the engine's arrows (``ce_grad = -t / clip(p)``, softmax Jacobian ``p * (g - sum_k p_k g_k)``,
  update ``w -= lr * mean_b(x_i g_j)``, backward through the pre-update weights);
* :func:`jaxgrad_step`: ``jax.grad`` of the batch-mean loss followed by SGD.

Parameters are ``((W0, b0), (W1, b1), ...)`` with W (n_in, n_out), b (n_out,); :func:`engine_params`
reads them from the engine's state. Nets (:data:`NETS`): ``mnist_144_50_10`` ((144, 50, 10), sigmoid
hidden, softmax + CE, lr 0.1, batch 8; paper section 4.2) and ``sinusoid_1_20_20_1`` ((1, 20, 20, 1),
relu hidden, L2, lr 0.05, batch 10; paper section 4.1). tests/test_direct_backprop.py checks both
against the engine; benchmarks/cases/backprop_step.py times them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mplp_graph.ops.builtin import CE_CLIP


@dataclass(frozen=True)
class NetConfig:
    """A feedforward net trained by backprop: sizes, hidden activation, loss, SGD rate, batch."""

    name: str
    sizes: tuple[int, ...]
    activation: str
    loss: str
    lr: float
    batch: int


NETS = {
    "mnist": NetConfig("mnist_144_50_10", (144, 50, 10), "sigmoid", "ce", 0.1, 8),
    "sinusoid": NetConfig("sinusoid_1_20_20_1", (1, 20, 20, 1), "relu", "l2", 0.05, 10),
}


def make_batches(cfg: NetConfig, key: Any, n: int) -> dict[str, Any]:
    """``n`` batches stacked on a leading axis: x (n, B, n_in), y (n, B, n_out)."""
    kx, ky, ka, kp = jax.random.split(key, 4)
    n_in, n_out = cfg.sizes[0], cfg.sizes[-1]
    if cfg.loss == "ce":
        x = jax.random.normal(kx, (n, cfg.batch, n_in))  # standardized pixels
        labels = jax.random.randint(ky, (n, cfg.batch), 0, n_out)
        y = jax.nn.one_hot(labels, n_out)
    else:  # sinusoid tasks (paper section 4.1): A in [0.1, 0.5], phase in [0, pi], x in [-5, 5]
        x = jax.random.uniform(kx, (n, cfg.batch, n_in), minval=-5.0, maxval=5.0)
        amp = jax.random.uniform(ka, (n, 1, 1), minval=0.1, maxval=0.5)
        phase = jax.random.uniform(kp, (n, 1, 1), minval=0.0, maxval=np.pi)
        y = amp * jnp.sin(x + phase)
    return {"x": x.astype(jnp.float32), "y": y.astype(jnp.float32)}


_ACT = {"sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu, "tanh": jnp.tanh, "identity": lambda z: z}


def _act_grad(name: str, pre: Any, g: Any) -> Any:
    """g * act'(pre), written as the engine's ``*_grad`` ops are."""
    if name == "sigmoid":
        s = jax.nn.sigmoid(pre)
        return g * s * (1.0 - s)
    if name == "relu":
        return g * (pre > 0)
    if name == "tanh":
        return g * (1.0 - jnp.tanh(pre) ** 2)
    return g


def _softmax(z: Any) -> Any:  # (B, n) -> (B, n), the engine's stable form
    e = jnp.exp(z - jnp.max(z, axis=-1, keepdims=True))
    return e / jnp.sum(e, axis=-1, keepdims=True)


def _loss_elems(cfg: NetConfig, p: Any, t: Any) -> Any:  # (B, n_out) per-output losses
    if cfg.loss == "ce":
        return -t * jnp.log(jnp.clip(p, CE_CLIP, 1.0 - CE_CLIP))
    return 0.5 * (t - p) ** 2


def _forward(cfg: NetConfig, params, x):
    """Returns (pred, pre-activations of hidden layers, layer inputs)."""
    h = x
    pres, ins = [], []
    for k, (w, b) in enumerate(params):
        ins.append(h)
        z = h @ w + b  # (B, n_out)
        if k < len(params) - 1:
            pres.append(z)
            h = _ACT[cfg.activation](z)
        else:
            h = z
    pred = _softmax(h) if cfg.loss == "ce" else h
    return pred, pres, ins


def manual_step(cfg: NetConfig, params, x, y):
    """One step with the engine's chain rule written out by hand. Returns (params, (pred, loss))."""
    pred, pres, ins = _forward(cfg, params, x)
    loss = _loss_elems(cfg, pred, y)
    if cfg.loss == "ce":
        pc = jnp.clip(pred, CE_CLIP, 1.0 - CE_CLIP)
        g = jnp.where((pred > CE_CLIP) & (pred < 1.0 - CE_CLIP), -y / pc, 0.0)  # ce_grad
        pg = jnp.sum(pred * g, axis=-1, keepdims=True)  # softmax.pg (sum over outputs)
        g = pred * (g - pg)  # softmax_grad
    else:
        g = pred - y  # l2_grad
    inv_b = 1.0 / x.shape[0]
    new = [None] * len(params)
    for k in reversed(range(len(params))):
        w, b = params[k]
        # W.sgd: w - lr * mean_b(x_i g_j), as one matmul; b.sgd: b - lr * mean_b(g_j)
        new[k] = (w - cfg.lr * inv_b * (ins[k].T @ g), b - cfg.lr * jnp.mean(g, axis=0))
        if k > 0:
            g = _act_grad(cfg.activation, pres[k - 1], g @ w.T)  # W->a (pre-update w), a->b
    return tuple(new), (pred, loss)


def jaxgrad_step(cfg: NetConfig, params, x, y):
    """``jax.grad`` of the batch mean of the summed per-output loss, then SGD."""

    def objective(ps):
        pred, _, _ = _forward(cfg, ps, x)
        loss = _loss_elems(cfg, pred, y)
        return jnp.mean(jnp.sum(loss, axis=-1)), (pred, loss)

    grads, aux = jax.grad(objective, has_aux=True)(params)
    new = jax.tree_util.tree_map(lambda p, g: p - cfg.lr * g, params, grads)
    return new, aux


def engine_params(cfg: NetConfig, state) -> tuple:
    """The engine's weights and biases (a state or a carry) as ``((W0, b0), ...)``."""
    n = len(cfg.sizes) - 1
    return tuple((state[f"W{k}"]["w"], state[f"b{k}"]["b"]) for k in range(n))
