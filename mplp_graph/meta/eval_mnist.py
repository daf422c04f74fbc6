"""The MNIST evaluation protocol (reference-notes 5.6), all runs vmapped in one jit.

Each run starts from a fresh random prior and takes ``steps`` updates, each on a block of
``batch`` consecutive training images (blocks drawn at random, as the reference's shuffled
``batch(8)`` iterator); after every update, the accuracy on the next 100 test images, taken in
order and cycling through the test set across runs and steps (the reference shares one test
iterator, so 100 runs x 20 steps see 2,000 different slices). "Accuracy@20" is the mean +- std
over runs of the accuracy after the last step, in percent.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mplp_graph import xla
from mplp_graph.runtime.program import Program
from mplp_graph.meta import batching
from mplp_graph.meta.evaluate import point_losses
from mplp_graph.runtime.state import agent_params, with_agent_params, zeros_state

TEST_SLICE = 100


def protocol_data(data: dict[str, np.ndarray], key: Any, runs: int, steps: int, batch: int) -> dict[str, np.ndarray]:
    """Per run: training blocks ``(steps, batch, d)`` and test slices ``(steps, 100, d)``."""
    n_blocks = data["train_x"].shape[0] // batch
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key) if hasattr(jax.random, "key_data") else key).ravel()[-1])
    blocks = np.stack([rng.choice(n_blocks, steps, replace=False) for _ in range(runs)])  # (runs, steps)
    idx = blocks[..., None] * batch + np.arange(batch)  # (runs, steps, batch)
    n_test = data["test_x"].shape[0]
    starts = (np.arange(runs * steps).reshape(runs, steps) * TEST_SLICE) % n_test
    tidx = (starts[..., None] + np.arange(TEST_SLICE)) % n_test  # (runs, steps, 100)
    return {
        "xt": data["train_x"][idx], "yt": data["train_y"][idx],
        "xs": data["test_x"][tidx], "ys": data["test_y"][tidx],
    }


def accuracy(fwd: Program, net: Any, x: Any, y: Any) -> Any:
    _, pred = point_losses(fwd, {}, net, x, y)
    return 100.0 * jnp.mean(jnp.argmax(pred, -1) == jnp.argmax(y, -1))


def _run(fwd: Program, init: Any, update: Callable, net_of: Callable, d: dict[str, Any]) -> Any:
    def body(carry, i):
        carry = update(carry, d["xt"][i], d["yt"][i])
        return carry, accuracy(fwd, net_of(carry), d["xs"][i], d["ys"][i])

    _, acc = jax.lax.scan(body, init, jnp.arange(d["xt"].shape[0]))
    return acc  # (steps,)


def _in_chunks(run: Callable, params: Any, keys: Any, d: dict[str, np.ndarray], chunk: int | None) -> np.ndarray:
    """``run(params, keys, data)`` (a jitted vmap over runs), ``chunk`` runs at a time (big nets:
    bounded memory)."""
    n = keys.shape[0]
    chunk = chunk or n
    parts = [np.asarray(run(params, keys[i : i + chunk], {k: v[i : i + chunk] for k, v in d.items()})) for i in range(0, n, chunk)]
    return np.concatenate(parts)


@functools.lru_cache(maxsize=16)
def _mplp_runner(prog: Program, fwd: Program, batch: int, mode: str = "auto") -> Callable:
    """The jitted protocol for ``prog`` over runs, vmapped or one run after another (``mode``,
    :mod:`mplp_graph.meta.batching`; cached: learner parameters are an argument, so evaluating
    several learners or checkpoints compiles once)."""

    def one(params, k, dr):
        net = agent_params(prog.spec, prog.init(k, 1))  # fresh random prior
        carry = prog.carry_of(with_agent_params(zeros_state(prog.spec, batch), net))

        def update(c, x, y):
            return prog.step_carry(params, c, {"x": x, "y": y})[0]

        return _run(fwd, carry, update, lambda c: agent_params(prog.spec, c), dr)

    return xla.jit(lambda params, keys, d: batching.over_leading_axis(lambda k, dr: one(params, k, dr), (keys, d), mode))


def evaluate_mplp_mnist(prog: Program, fwd: Program, params: Any, data: dict[str, np.ndarray], key: Any, runs: int = 100, steps: int = 20, batch: int = 8,
                        chunk: int | None = None, mode: str = "auto") -> np.ndarray:
    """Accuracy after each step, ``(runs, steps)``, for the learned protocol ``params``; the runs
    vmapped or one after another (``mode``: "auto" = a loop on the CPU; :mod:`mplp_graph.meta.batching`)."""
    d = protocol_data(data, key, runs, steps, batch)
    keys = jax.random.split(jax.random.fold_in(key, 1), runs)
    return _in_chunks(_mplp_runner(prog, fwd, batch, mode), params, keys, d, chunk)


def evaluate_optax_mnist(fwd: Program, optimizer: optax.GradientTransformation, data: dict[str, np.ndarray], key: Any, runs: int = 100, steps: int = 20, batch: int = 8) -> np.ndarray:
    """A gradient baseline with the standard cross-entropy (summed over classes, batch mean)."""
    d = protocol_data(data, key, runs, steps, batch)
    keys = jax.random.split(jax.random.fold_in(key, 1), runs)

    def loss(net, x, y):
        return jnp.mean(jnp.sum(point_losses(fwd, {}, net, x, y)[0], -1))

    def one(k, dr):
        net = agent_params(fwd.spec, fwd.init(k, 1))

        def update(c, x, y):
            net, opt_state = c
            upd, opt_state = optimizer.update(jax.grad(loss)(net, x, y), opt_state, net)
            return optax.apply_updates(net, upd), opt_state

        return _run(fwd, (net, optimizer.init(net)), update, lambda c: c[0], dr)

    return np.asarray(xla.jit(jax.vmap(one))(keys, d))


def transfer_programs(graph: Any, sizes: tuple[int, ...], activation: str) -> tuple[Program, Program]:
    """(learned-protocol program, forward program) of the MNIST net ``sizes`` with ``activation``,
    learners as in ``graph`` (a :class:`mplp_graph.meta.config.GraphConfig`): the transfers of
    Table 1 (the step activation; (784, 100, 10) on 28 x 28 images) reuse one trained learner."""
    from mplp_graph.runtime.program import compile_graph
    from mplp_graph.templates.feedforward import feedforward
    from mplp_graph.templates.mplp import mplp_feedforward

    spec = mplp_feedforward(sizes, activation, "ce", learner=graph.learner, msg=graph.msg, hidden=graph.hidden, sharing=graph.sharing)
    fwd = feedforward(sizes, "relu" if activation == "step" else activation, "ce", protocol="none")
    if activation == "step":  # evaluate the trained net with its real (step) forward
        fwd = fwd.model_copy(update={"arrows": tuple(
            a.model_copy(update={"op": a.op.model_copy(update={"name": "step"})}) if a.op.name == "relu" else a for a in fwd.arrows
        )})
    return compile_graph(spec), compile_graph(fwd)


def table1(setup: Any, params: Any, data: dict[str, np.ndarray], key: Any, runs: int = 100, *, adam_lr: float = 0.01,
           sgd_lr: float = 0.1, transfers: bool = True, runs_784: int | None = None) -> tuple[dict, dict, dict]:
    """The paper's Table 1 for a learner (``setup``: :func:`mplp_graph.meta.run.build` of an MNIST
    config): MPLP, Adam, SGD, and with ``transfers`` MPLP on the step activation and on
    (784, 100, 10) with 28 x 28 images (``runs_784`` runs, default ``runs``; 0 skips it).
    Returns ``(metrics, curves, wall seconds)``."""
    import time

    t = setup.config.task
    metrics: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    wall: dict[str, float] = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        accuracy_metrics(metrics, curves, name, fn())
        wall[f"{name}_eval"] = round(time.perf_counter() - t0, 1)

    timed("mplp", lambda: evaluate_mplp_mnist(setup.prog, setup.fwd, params, data, key, runs, t.inner_steps, t.batch))
    timed("adam", lambda: evaluate_optax_mnist(setup.fwd, optax.adam(adam_lr), data, key, runs, t.inner_steps, t.batch))
    timed("sgd", lambda: evaluate_optax_mnist(setup.fwd, optax.sgd(sgd_lr), data, key, runs, t.inner_steps, t.batch))
    if not transfers:
        return metrics, curves, wall
    graph = setup.config.graph
    prog, fwd = transfer_programs(graph, tuple(graph.sizes), "step")
    timed("step", lambda: evaluate_mplp_mnist(prog, fwd, params, data, key, runs, t.inner_steps, t.batch))
    n784 = runs if runs_784 is None else runs_784
    if n784:
        from mplp_graph.tasks.mnist import load_mnist, preprocess

        data28 = preprocess(load_mnist(), size=None)
        prog, fwd = transfer_programs(graph, (784, 100, 10), graph.activation)
        timed("784", lambda: evaluate_mplp_mnist(prog, fwd, params, data28, key, n784, t.inner_steps, t.batch, chunk=10))
        metrics["784_runs"] = n784
    return metrics, curves, wall


def accuracy_metrics(metrics: dict, curves: dict, name: str, acc: np.ndarray) -> None:
    """Record ``acc`` (runs, steps): accuracy@last step mean/std, and mean/std curves."""
    metrics[f"{name}_acc20"] = float(acc[:, -1].mean())
    metrics[f"{name}_acc20_std"] = float(acc[:, -1].std())
    curves[f"{name}_acc_mean"] = acc.mean(0).tolist()
    curves[f"{name}_acc_std"] = acc.std(0).tolist()


def plot_accuracy(curves: dict, path: Any) -> None:
    """Like the paper's Fig. 4: mean test accuracy after each step, shaded +- std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = {"mplp": "MPLP (ours)", "step": "MPLP, step activation", "784": "MPLP, (784,100,10) 28x28", "adam": "Adam(0.01)", "sgd": "SGD(0.1)"}
    for name, label in labels.items():
        if f"{name}_acc_mean" not in curves:
            continue
        mu, sd = np.array(curves[f"{name}_acc_mean"]), np.array(curves[f"{name}_acc_std"])
        steps = np.arange(1, len(mu) + 1)
        ax.plot(steps, mu, marker=".", label=label)
        ax.fill_between(steps, mu - sd, mu + sd, alpha=0.15)
    ax.set_xlabel("inner step (batch of 8)")
    ax.set_ylabel("test accuracy (%), 100 images")
    ax.set_title("MNIST: accuracy after each step, mean +- std over runs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
