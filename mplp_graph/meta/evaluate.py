"""Evaluation protocols (reference-notes 5.6), the whole set of runs vmapped in one jit.

Sinusoid: each run draws a task and a prior (fresh random, or a given learned one), then takes
one update per inner batch; ``eval[0]`` is the loss on 100 evenly spaced points before any
update and ``eval[i+1]`` after update i; ``train[i]`` is the loss on every point seen up to
update i. Losses are mean ``0.5 (y - yhat)^2``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from mplp_graph import xla
from mplp_graph.runtime.program import Program
from mplp_graph.meta import batching
from mplp_graph.runtime.state import agent_params, with_agent_params, zeros_state
from mplp_graph.tasks.sinusoid import SinusoidFamily

# update(carry, x, y) -> carry ; predict(carry, x, y) -> per-point loss (N, 1) and predictions
Update = Callable[[Any, Any, Any], Any]


def point_losses(prog: Program, params: Any, net: Any, x: Any, y: Any) -> tuple[Any, Any]:
    """Per-point loss and prediction of the net with agent parameters ``net``."""
    state = with_agent_params(zeros_state(prog.spec, x.shape[0]), net)
    _, out = prog.forward(params, state, {"x": x, "y": y})
    return out["loss"], out["pred"]


def _protocol(fwd: Program, family: SinusoidFamily, task: dict, init: Any, update: Update, net_of: Callable) -> dict:
    xg, yg = family.eval_grid(task)
    xt, yt = task["xt"], task["yt"]  # (K, B, 1)
    k, b = xt.shape[0], xt.shape[1]
    seen_x, seen_y = xt.reshape(k * b, -1), yt.reshape(k * b, -1)

    def measure(carry, i):
        net = net_of(carry)
        ev, _ = point_losses(fwd, {}, net, xg, yg)
        tr, _ = point_losses(fwd, {}, net, seen_x, seen_y)
        mask = (jnp.arange(k * b) < (i + 1) * b)[:, None]
        return jnp.mean(ev), jnp.sum(tr * mask) / jnp.sum(mask)

    def body(carry, i):
        carry = update(carry, xt[i], yt[i])
        return carry, measure(carry, i)

    ev0, _ = measure(init, 0)
    final, (ev, tr) = jax.lax.scan(body, init, jnp.arange(k))
    _, pred = point_losses(fwd, {}, net_of(final), xg, yg)
    return {"eval": jnp.concatenate([ev0[None], ev]), "train": tr, "pred": pred[:, 0], "x": xg[:, 0], "y": yg[:, 0]}


@functools.lru_cache(maxsize=16)
def _mplp_runner(prog: Program, fwd: Program, family: SinusoidFamily, learned_prior: bool, mode: str = "auto") -> Callable:
    """The jitted protocol over runs, vmapped or one run after another (``mode``,
    :mod:`mplp_graph.meta.batching`; cached: learner parameters and prior are arguments, so
    evaluating several learners compiles once)."""

    def one(params, prior, k):
        kp, kt = jax.random.split(k)
        net = prior if learned_prior else agent_params(prog.spec, prog.init(kp, 1))
        task = family.sample(kt)
        state = prog.carry_of(with_agent_params(zeros_state(prog.spec, family.batch), net))

        def update(state, x, y):
            return prog.step_carry(params, state, {"x": x, "y": y})[0]

        return _protocol(fwd, family, task, state, update, lambda s: agent_params(prog.spec, s))

    return xla.jit(lambda params, prior, keys: batching.over_leading_axis(lambda k: one(params, prior, k), (keys,), mode))


def evaluate_mplp(prog: Program, fwd: Program, params: Any, family: SinusoidFamily, key: Any, runs: int = 100, prior: Any = None,
                  mode: str = "auto") -> dict:
    """MPLP from fresh random priors (or ``prior``), ``runs`` runs in one jit: vmapped or one after
    another (``mode``: "auto" = a loop on the CPU, vmap elsewhere; :mod:`mplp_graph.meta.batching`)."""
    run = _mplp_runner(prog, fwd, family, prior is not None, mode)
    return run(params, prior, jax.random.split(key, runs))


def evaluate_optax(fwd: Program, optimizer: optax.GradientTransformation, family: SinusoidFamily, key: Any, runs: int = 100) -> dict:
    """A gradient baseline (e.g. Adam(0.01)) through the same protocol, on the forward graph."""

    def loss(net, x, y):
        return jnp.mean(point_losses(fwd, {}, net, x, y)[0])

    def one(k):
        kp, kt = jax.random.split(k)
        net = agent_params(fwd.spec, fwd.init(kp, 1))
        task = family.sample(kt)

        def update(carry, x, y):
            net, opt_state = carry
            grads = jax.grad(loss)(net, x, y)
            upd, opt_state = optimizer.update(grads, opt_state, net)
            return optax.apply_updates(net, upd), opt_state

        return _protocol(fwd, family, task, (net, optimizer.init(net)), update, lambda c: c[0])

    return xla.jit(jax.vmap(one))(jax.random.split(key, runs))


def plot_eval_curves(curves: dict[str, tuple[Any, Any]], title: str, path: Any) -> None:
    """Mean +- std eval loss after each inner step, one line per method (``curves[name] =
    (mean, std)``, each ``(steps + 1,)``, e.g. of ``evaluate_*(...)["eval"]`` over runs), log
    scale, saved to ``path``."""
    import textwrap
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (mu, sd) in curves.items():
        mu, sd = np.asarray(mu), np.asarray(sd)
        steps = np.arange(len(mu))
        ax.plot(steps, mu, marker="o", label=name)
        ax.fill_between(steps, np.maximum(mu - sd, 1e-6), mu + sd, alpha=0.15)
    ax.set_yscale("log")
    ax.set_xlabel("inner step")
    ax.set_ylabel("eval L2 (100 points on the domain)")
    ax.set_title("\n".join(textwrap.wrap(title, 60)), fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
