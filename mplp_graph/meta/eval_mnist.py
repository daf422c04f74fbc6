"""The paper's MNIST table (paper section 4.2, Table 1, Fig. 4; the protocol in docs/mplp.md) through the evaluation harness
(:func:`mplp_graph.meta.evaluate.evaluate`, :class:`mplp_graph.tasks.mnist.MnistFamily`'s
protocol): the learned protocol, the gradient baselines, and the transfers of one trained learner
to the step activation and to (784, 100, 10) on 28 x 28 images. "Accuracy@20" is the mean +- std
over runs of the test accuracy after the last step, in percent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import optax

from mplp_graph.runtime.program import Program
from mplp_graph.meta.evaluate import evaluate_mplp, evaluate_optax


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


def table1(setup: Any, params: Any, key: Any, runs: int = 100, *, baselines: dict[str, optax.GradientTransformation] | None = None,
           transfers: bool = True, runs_784: int | None = None, split: str = "test") -> tuple[dict, dict, dict]:
    """The paper's Table 1 for a learner (``setup``: :func:`mplp_graph.meta.run.build` of an MNIST
    config): MPLP, the baselines (default Adam(0.01) and SGD(0.1), keys ``adam``, ``sgd``), and
    with ``transfers`` MPLP on the step activation and on (784, 100, 10) with 28 x 28 images
    (``runs_784`` runs, default ``runs``; 0 skips it). Returns ``(metrics, curves, wall seconds)``
    with metrics ``{name}_acc20`` (after the last step) and ``_acc20_std``."""
    import dataclasses
    import time

    metrics: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    wall: dict[str, float] = {}
    family, data = setup.family, setup.data
    kw = dict(data=data, split=split)

    def timed(name, fn):
        t0 = time.perf_counter()
        accuracy_metrics(metrics, curves, name, fn()["accuracy"][:, 1:])  # after each update (the paper's curves)
        wall[f"{name}_eval"] = round(time.perf_counter() - t0, 1)

    timed("mplp", lambda: evaluate_mplp(setup.prog, setup.fwd, params, family, key, runs, **kw))
    if baselines is None:
        baselines = {"adam": optax.adam(0.01), "sgd": optax.sgd(0.1)}
    for name, opt in baselines.items():
        timed(name, lambda opt=opt: evaluate_optax(setup.fwd, opt, family, key, runs, **kw))
    if not transfers:
        return metrics, curves, wall
    graph = setup.config.graph
    prog, fwd = transfer_programs(graph, tuple(graph.sizes), "step")
    timed("step", lambda: evaluate_mplp(prog, fwd, params, family, key, runs, **kw))
    n784 = runs if runs_784 is None else runs_784
    if n784:
        family28 = dataclasses.replace(family, image_size=28)
        prog, fwd = transfer_programs(graph, (784, 100, 10), graph.activation)
        timed("784", lambda: evaluate_mplp(prog, fwd, params, family28, key, n784, data=family28.load(), split=split, chunk=10))
        metrics["784_runs"] = n784
    return metrics, curves, wall


def accuracy_metrics(metrics: dict, curves: dict, name: str, acc: np.ndarray) -> None:
    """Record ``acc`` (runs, steps): accuracy@last step mean/std, and mean/std curves."""
    metrics[f"{name}_acc20"] = float(acc[:, -1].mean())
    metrics[f"{name}_acc20_std"] = float(acc[:, -1].std())
    curves[f"{name}_acc_mean"] = acc.mean(0).tolist()
    curves[f"{name}_acc_std"] = acc.std(0).tolist()


def plot_accuracy(curves: dict, path: Any, *, labels: dict[str, str] | None = None, data: str = "MNIST") -> None:
    """Like the paper's Fig. 4: mean test accuracy after each step, shaded +- std. ``labels``
    names curves beyond the paper's (a metric key such as ``adam_tuned`` -> its legend text);
    ``data`` is the data set in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = {"mplp": "MPLP (ours)", "step": "MPLP, step activation", "784": "MPLP, (784,100,10) 28x28", "adam": "Adam(0.01)", "sgd": "SGD(0.1)",
              **(labels or {})}
    names = [k[: -len("_acc_mean")] for k in curves if k.endswith("_acc_mean")]
    for name in names:
        mu, sd = np.array(curves[f"{name}_acc_mean"]), np.array(curves[f"{name}_acc_std"])
        steps = np.arange(1, len(mu) + 1)
        ax.plot(steps, mu, marker=".", label=labels.get(name, name))
        ax.fill_between(steps, mu - sd, mu + sd, alpha=0.15)
    ax.set_xlabel("inner step (batch of 8)")
    ax.set_ylabel("test accuracy (%), 100 images")
    ax.set_title(f"{data}: accuracy after each step, mean +- std over runs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
