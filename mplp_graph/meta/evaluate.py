"""The evaluation harness: one inner loop with per-step metrics for every way a net can learn a
task (a learned protocol, an optax optimizer, SGD from a learned prior as in MAML) and every task
family (paper sections 4.1 and 4.2 for the paper's protocols; docs/mplp.md).

A run draws its task from the family's :meth:`eval_tasks <mplp_graph.tasks.base.TaskFamily>`
and its prior from its own key (or starts from a given prior), takes one update per inner batch,
and is measured before any update and after each one on the family's evaluation set for that
step, with the metrics the family declares (``loss``, ``accuracy``, ``seen_loss``;
:data:`mplp_graph.tasks.base.METRICS`). The measuring net is a forward program (``fwd``) that
reads the learner's net (its agent parameters): the forward-only graph of the same net, or a
different forward graph (the step activation of the paper's transfer).

The runs are one jitted program, vmapped or one run after another (``mode``:
:mod:`mplp_graph.meta.batching`), compiled once per learner kind, forward program, family and
mode: learner parameters and priors are arguments, so evaluating several checkpoints compiles once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mplp_graph import xla
from mplp_graph.runtime.program import Program
from mplp_graph.meta import batching
from mplp_graph.runtime.state import agent_params, with_agent_params, zeros_state
from mplp_graph.tasks.base import METRICS, TaskFamily


def point_losses(prog: Program, params: Any, net: Any, x: Any, y: Any) -> tuple[Any, Any]:
    """Per-point loss and prediction of the net with agent parameters ``net``."""
    state = with_agent_params(zeros_state(prog.spec, x.shape[0]), net)
    _, out = prog.forward(params, state, {"x": x, "y": y})
    return out["loss"], out["pred"]


def batch_loss(fwd: Program, net: Any, x: Any, y: Any) -> Any:
    """The training loss of a gradient baseline: the loss summed over a point's output units,
    averaged over the batch (cross-entropy summed over classes; for one output, the mean L2)."""
    loss = point_losses(fwd, {}, net, x, y)[0]
    return jnp.mean(jnp.sum(loss.reshape(loss.shape[0], -1), axis=-1))


# ---------------------------------------------------------------------------------------------
# learners: how a net learns inside one task. ``theta`` holds what is meta-learned (learner
# parameters, a prior); ``init(theta, key, task) -> carry``, ``update(theta, carry, x, y) ->
# carry``, ``net(carry) -> agent parameters`` of the forward program.


@dataclass(frozen=True)
class LearnedProtocol:
    """The graph's learned protocol (``prog``'s backward phase). ``theta = {"learner": params,
    "prior": agent params or None}``: ``None`` draws a fresh random prior from the run's key."""

    prog: Program

    def init(self, theta: Any, key: Any, task: dict[str, Any]) -> Any:
        prior = theta["prior"]
        net = agent_params(self.prog.spec, self.prog.init(key, 1)) if prior is None else prior
        return self.prog.carry_of(with_agent_params(zeros_state(self.prog.spec, task["xt"].shape[1]), net))

    def update(self, theta: Any, carry: Any, x: Any, y: Any) -> Any:
        return self.prog.step_carry(theta["learner"], carry, {"x": x, "y": y})[0]

    def net(self, carry: Any) -> Any:
        return agent_params(self.prog.spec, carry)


@dataclass(frozen=True)
class Optimizer:
    """Gradient descent on ``fwd``'s net with an optax optimizer (:func:`batch_loss`; Adam,
    SGD...; MAML's inner SGD from its learned prior). ``theta = {"prior": agent params or None}``."""

    fwd: Program
    optimizer: optax.GradientTransformation

    def init(self, theta: Any, key: Any, task: dict[str, Any]) -> Any:
        prior = theta["prior"]
        net = agent_params(self.fwd.spec, self.fwd.init(key, 1)) if prior is None else prior
        return net, self.optimizer.init(net)

    def update(self, theta: Any, carry: Any, x: Any, y: Any) -> Any:
        net, opt_state = carry
        grads = jax.grad(lambda n: batch_loss(self.fwd, n, x, y))(net)
        updates, opt_state = self.optimizer.update(grads, opt_state, net)
        return optax.apply_updates(net, updates), opt_state

    def net(self, carry: Any) -> Any:
        return carry[0]


# ---------------------------------------------------------------------------------------------
# one run, all runs


def measure(fwd: Program, metrics: tuple[str, ...], net: Any, task: dict[str, Any], i: Any) -> tuple[dict[str, Any], Any]:
    """The ``metrics`` of the net ``net`` on the task's evaluation set ``i`` (taken after ``i``
    updates), and its predictions there."""
    loss, pred = point_losses(fwd, {}, net, task["xs"][i], task["ys"][i])
    out = {}
    if "loss" in metrics:
        out["loss"] = jnp.mean(loss)
    if "accuracy" in metrics:
        out["accuracy"] = 100.0 * jnp.mean(jnp.argmax(pred, -1) == jnp.argmax(task["ys"][i], -1))
    if "seen_loss" in metrics:
        k, b = task["xt"].shape[:2]
        seen, _ = point_losses(fwd, {}, net, task["xt"].reshape(k * b, *task["xt"].shape[2:]), task["yt"].reshape(k * b, *task["yt"].shape[2:]))
        mask = (jnp.arange(k * b) < jnp.maximum(i, 1) * b).reshape(k * b, *([1] * (seen.ndim - 1)))
        out["seen_loss"] = jnp.sum(seen * mask) / (jnp.sum(mask) * (seen.size // (k * b)))
    return out, pred


def run_one(learner: Any, fwd: Program, metrics: tuple[str, ...], theta: Any, key: Any, task: dict[str, Any], trace: bool = False) -> dict[str, Any]:
    """One run: ``{metric: (K + 1,)}``, ``pred`` (the predictions on the last evaluation set
    after the last update) and with ``trace`` ``preds`` ``(K + 1, N, ...)`` (after every update)."""
    k = task["xt"].shape[0]
    carry = learner.init(theta, key, task)
    first, pred0 = measure(fwd, metrics, learner.net(carry), task, 0)

    def body(c, i):
        carry, _ = c
        carry = learner.update(theta, carry, task["xt"][i], task["yt"][i])
        m, pred = measure(fwd, metrics, learner.net(carry), task, i + 1)
        return (carry, pred), (m, pred if trace else None)

    (_, pred), (rest, preds) = jax.lax.scan(body, (carry, pred0), jnp.arange(k))
    out = {name: jnp.concatenate([first[name][None], rest[name]]) for name in metrics}
    out["pred"] = pred
    if trace:
        out["preds"] = jnp.concatenate([pred0[None], preds])
    return out


@functools.lru_cache(maxsize=32)
def _runner(learner: Any, fwd: Program, metrics: tuple[str, ...], mode: str, trace: bool) -> Callable:
    def one(theta, key, task):
        return run_one(learner, fwd, metrics, theta, key, task, trace)

    return xla.jit(lambda theta, keys, tasks: batching.over_leading_axis(lambda k, t: one(theta, k, t), (keys, tasks), mode))


def evaluate(
    learner: Any,
    theta: Any,
    family: TaskFamily,
    fwd: Program,
    key: Any,
    runs: int = 100,
    *,
    data: Any = None,
    split: str = "test",
    mode: str = "auto",
    chunk: int | None = None,
    trace: bool = False,
) -> dict[str, np.ndarray]:
    """Evaluate ``learner`` (:class:`LearnedProtocol`, :class:`Optimizer`) with meta-learned
    ``theta`` on ``runs`` tasks of ``family`` (its arrays ``data``, from ``family.load()``).

    Returns ``{metric: (runs, K + 1)}`` for each of ``family.metrics`` (index ``i``: after ``i``
    updates), ``pred`` ``(runs, N, ...)``: each run's predictions on its last evaluation set, and
    with ``trace`` ``preds`` ``(runs, K + 1, N, ...)``; ``example_x``, ``example_y``: run 0's
    last evaluation set (to draw its fit beside ``pred[0]``). ``chunk``: runs per compiled call (big
    nets: bounded memory)."""
    unknown = [m for m in family.metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {sorted(METRICS)}")
    tasks, keys = family.eval_tasks(key, runs, data, split)
    run = _runner(learner, fwd, tuple(family.metrics), mode, trace)
    chunk = chunk or runs
    parts = [jax.device_get(run(theta, keys[i : i + chunk], jax.tree_util.tree_map(lambda a: a[i : i + chunk], tasks)))
             for i in range(0, runs, chunk)]
    out = {name: np.concatenate([np.asarray(p[name]) for p in parts]) for name in parts[0]}
    out["example_x"], out["example_y"] = np.asarray(tasks["xs"][0, -1]), np.asarray(tasks["ys"][0, -1])  # run 0's last evaluation set
    return out


def evaluate_mplp(prog: Program, fwd: Program, params: Any, family: TaskFamily, key: Any, runs: int = 100, prior: Any = None, **kw: Any) -> dict:
    """:func:`evaluate` of ``prog``'s learned protocol with learner parameters ``params``, from
    fresh random priors or from ``prior``."""
    return evaluate(LearnedProtocol(prog), {"learner": params, "prior": prior}, family, fwd, key, runs, **kw)


def evaluate_optax(fwd: Program, optimizer: optax.GradientTransformation, family: TaskFamily, key: Any, runs: int = 100, prior: Any = None,
                   **kw: Any) -> dict:
    """:func:`evaluate` of a gradient baseline (e.g. Adam(0.01)) on the forward graph, from
    fresh random priors (the runs of :func:`evaluate_mplp` with the same key) or ``prior``."""
    return evaluate(Optimizer(fwd, optimizer), {"prior": prior}, family, fwd, key, runs, **kw)


def plot_eval_curves(curves: dict[str, tuple[Any, Any]], title: str, path: Any, *, ylabel: str = "eval loss", log: bool = True) -> None:
    """Mean +- std of a metric after each inner step, one line per method (``curves[name] =
    (mean, std)``, each ``(steps + 1,)``), saved to ``path``."""
    import textwrap
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (mu, sd) in curves.items():
        mu, sd = np.asarray(mu), np.asarray(sd)
        steps = np.arange(len(mu))
        ax.plot(steps, mu, marker="o", label=name)
        ax.fill_between(steps, np.maximum(mu - sd, 1e-6) if log else mu - sd, mu + sd, alpha=0.15)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("inner step")
    ax.set_ylabel(ylabel)
    ax.set_title("\n".join(textwrap.wrap(title, 60)), fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
