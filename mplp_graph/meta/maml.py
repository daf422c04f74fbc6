"""Learning a prior (MAML) and the protocol together (paper 4.1.2, Fig. 3; the authors'
``mplp_MAML_sinusoid_2x10.ipynb``), and the plain MAML baseline of the same notebook.

Both are :class:`mplp_graph.meta.step.StepFunction` s, so :func:`mplp_graph.meta.train.meta_train`
trains them with its checkpoints, exact resume and NaN guard. ``pool`` is unused (pass
``None``): every task starts from the one learned prior (the reference's ``same_pfw=True``).

* :class:`JointStep`: params ``{"learner": <MPLP learner params>, "prior": <agent params>}``. The
  meta-loss is the CV loss only (no hint loss) after ``k`` MPLP steps from the prior. With
  ``trainable_mask(params, train_g=False)`` the message MLPs g stay at their random init, as in the
  authors' run (their ``core.py`` ``MessageGenerator`` misspells ``trainable_weights``, so g never
  reached their meta-optimizer); the prior leaves ``W*/w``, ``b*/b`` are never masked.
* :class:`MamlStep`: params = the prior alone. Inner SGD ``p -= lr * grad(mean 0.5 (y - yhat)^2)``,
  one batch per step; second-order meta-gradient, or first-order with ``first_order=True``
  (the inner gradients are treated as constants, ``stop_gradient``).

Both apply the reference's outer update: per-leaf gradient normalization, then Adam (paper 3.1.1,
"Outer batches"; the authors' notebooks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mplp_graph.runtime.program import Program
from mplp_graph.ir.spec import GraphSpec
from mplp_graph.meta import batching
from mplp_graph.meta.evaluate import LearnedProtocol, Optimizer, evaluate, point_losses
from mplp_graph.meta.objectives import MetaLoss, task_loss
from mplp_graph.meta.stats import init_statistics
from mplp_graph.meta.step import StepFunction
from mplp_graph.runtime.state import agent_params
from mplp_graph.tasks.base import TaskFamily

CV_ONLY = MetaLoss(hint_weight=0.0, cv_weight=1.0)  # CV only: the MAML notebook's TrainingRegime has hint_loss_ratio=None
MAML_INNER_LR = 0.05  # the inner SGD rate of the authors' mplp_MAML_sinusoid_2x10.ipynb


def random_prior(prog: Program, key: Any) -> dict[str, dict[str, Any]]:
    """A random prior for ``prog``'s net (W ~ N(0, 0.05), b = 0; paper footnote 4)."""
    return agent_params(prog.spec, prog.init(key, 1))


# ---------------------------------------------------------------------------------------------
# MAML + MPLP


@dataclass(frozen=True)
class JointStep(StepFunction):
    """One meta-step of the learner and the prior together; ``outer_batch`` tasks, vmapped or one
    after another (``outer_batch_mode``, :mod:`mplp_graph.meta.batching`). Parameters
    ``{"learner": ..., "prior": ...}``."""

    prog: Program
    sample_task: Callable[[Any, Any], dict[str, Any]]  # family.sample: (key, data) -> task
    outer_batch: int
    optimizer: optax.GradientTransformation
    objective: MetaLoss = CV_ONLY
    outer_batch_mode: str = "auto"

    def __post_init__(self):
        batching.resolve(self.outer_batch_mode)  # a known mode, checked when the step is built

    @property
    def graph(self) -> GraphSpec:
        return self.prog.spec

    def draw(self, params: Any, pool: Any, key: Any, data: Any) -> dict[str, Any]:
        return {"priors": None, "tasks": self.sample_tasks(self.sample_task, key, data)}  # the prior is in params

    def batch_loss(self, params: Any, drawn: dict[str, Any]) -> tuple[Any, dict]:
        """Mean over tasks of the meta-loss, every task adapted from ``params["prior"]``."""

        def one(task):
            return task_loss(self.prog, self.objective, params["learner"], params["prior"], task)

        losses, parts = batching.over_leading_axis(one, (drawn["tasks"],), self.outer_batch_mode)
        return jnp.mean(losses), jax.tree_util.tree_map(jnp.mean, parts)

    def inner(self, params: Any, drawn: dict[str, Any]) -> tuple[Program, Any, Any]:
        n = self.outer_batch
        return self.prog, params["learner"], jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (n, *a.shape)), params["prior"])


def initial_prior(prog: Program, key: Any) -> dict[str, dict[str, Any]]:
    """The random prior :func:`joint_params` starts from for ``key`` (MAML can start from it too)."""
    return random_prior(prog, jax.random.fold_in(key, 1))


def joint_params(prog: Program, family: TaskFamily, key: Any, stats_rounds: int = 1, stats_mix: float = 1.0) -> dict[str, Any]:
    """``{"learner", "prior"}`` at init: a random prior, and learner statistics from ``stats_rounds``
    rollouts of ``family.inner_steps`` steps run on that prior (J=1, K=2, p=1 in the MAML notebook;
    :mod:`mplp_graph.meta.stats`)."""
    prior = initial_prior(prog, key)
    learner = prog.init_params(jax.random.fold_in(key, 0))
    k_stats = jax.random.fold_in(key, 2)

    data = family.load()

    def sample_round(k):
        task = family.sample(k, data)
        return prior, task["xt"], task["yt"]

    if stats_rounds:
        learner = init_statistics(prog, learner, sample_round, k_stats, stats_rounds, stats_mix)
    return {"learner": learner, "prior": prior}


# ---------------------------------------------------------------------------------------------
# MAML baseline on the forward-only program


def net_loss(fwd: Program, net: Any, x: Any, y: Any) -> Any:
    """Mean ``0.5 (y - yhat)^2`` of the net with agent parameters ``net``."""
    return jnp.mean(point_losses(fwd, {}, net, x, y)[0])


def sgd_step(fwd: Program, net: Any, x: Any, y: Any, lr: float, first_order: bool = False) -> Any:
    """One inner SGD step. ``first_order``: the gradient enters the meta-gradient as a constant."""
    grads = jax.grad(net_loss, argnums=1)(fwd, net, x, y)
    if first_order:
        grads = jax.lax.stop_gradient(grads)
    return jax.tree_util.tree_map(lambda p, g: p - lr * g, net, grads)


def maml_adapt(fwd: Program, prior: Any, xt: Any, yt: Any, lr: float = MAML_INNER_LR, first_order: bool = False) -> Any:
    """``k`` SGD steps from ``prior``, one per inner batch ``xt[i]`` (K, B, 1)."""
    net = prior
    for i in range(xt.shape[0]):  # k = 2: unrolled
        net = sgd_step(fwd, net, xt[i], yt[i], lr, first_order)
    return net


@dataclass(frozen=True)
class MamlStep(StepFunction):
    """One MAML meta-step on the prior: CV loss after the inner SGD steps, mean over tasks."""

    fwd: Program
    sample_task: Callable[[Any, Any], dict[str, Any]]  # family.sample: (key, data) -> task
    outer_batch: int
    optimizer: optax.GradientTransformation
    inner_lr: float = MAML_INNER_LR
    first_order: bool = False

    @property
    def graph(self) -> GraphSpec:
        return self.fwd.spec

    def draw(self, params: Any, pool: Any, key: Any, data: Any) -> dict[str, Any]:
        return {"priors": None, "tasks": self.sample_tasks(self.sample_task, key, data)}

    def batch_loss(self, prior: Any, drawn: dict[str, Any]) -> tuple[Any, dict]:
        def one(task):
            net = maml_adapt(self.fwd, prior, task["xt"], task["yt"], self.inner_lr, self.first_order)
            return net_loss(self.fwd, net, task["xe"], task["ye"])

        loss = jnp.mean(jax.vmap(one)(drawn["tasks"]))
        return loss, {"cv": loss}  # the CV loss is the meta-loss: MAML has no hint loss


def evaluate_maml(fwd: Program, prior: Any, family: TaskFamily, key: Any, runs: int = 100, lr: float = MAML_INNER_LR, **kw: Any) -> dict:
    """MAML's evaluation (the MAML notebook's baseline; docs/mplp.md, "The evaluation protocol"):
    SGD(``lr``) from ``prior``, one step per inner batch, through
    :func:`mplp_graph.meta.evaluate.evaluate` (the tasks of ``evaluate_mplp`` with the same key)."""
    return evaluate(Optimizer(fwd, optax.sgd(lr)), {"prior": prior}, family, fwd, key, runs, **kw)


# ---------------------------------------------------------------------------------------------
# fits after every step (Fig. 3)


def _fits(result: dict, family: TaskFamily, key: Any, runs: int) -> dict:
    tasks, _ = family.eval_tasks(key, runs, family.load())
    xs, ys = np.asarray(tasks["xs"][:, 0]), np.asarray(tasks["ys"][:, 0])
    return {"x": xs[..., 0], "y": ys[..., 0], "pred": result["preds"][..., 0],
            "xt": np.asarray(tasks["xt"])[..., 0], "yt": np.asarray(tasks["yt"])[..., 0]}


def trace_mplp(prog: Program, fwd: Program, params: Any, family: TaskFamily, key: Any, runs: int, prior: Any = None) -> dict:
    """Predictions on the evaluation grid before and after every MPLP step: ``pred`` (runs, k+1,
    N). The runs draw the same tasks (and random priors) as ``evaluate_mplp`` with the same key."""
    result = evaluate(LearnedProtocol(prog), {"learner": params, "prior": prior}, family, fwd, key, runs, trace=True)
    return _fits(result, family, key, runs)


def trace_maml(fwd: Program, prior: Any, family: TaskFamily, key: Any, runs: int, lr: float = MAML_INNER_LR) -> dict:
    """Like :func:`trace_mplp` for MAML's SGD steps from ``prior`` (the tasks of ``evaluate_maml``)."""
    result = evaluate(Optimizer(fwd, optax.sgd(lr)), {"prior": prior}, family, fwd, key, runs, trace=True)
    return _fits(result, family, key, runs)


def shape_correlation(trace: dict) -> Any:
    """Pearson correlation of prediction and target over the eval grid: (runs, k+1). Near 1 when
    the fit has the sinusoid's shape whatever its scale; a constant prediction counts as 0."""
    p = trace["pred"] - trace["pred"].mean(-1, keepdims=True)
    y = (trace["y"] - trace["y"].mean(-1, keepdims=True))[:, None, :]
    num = (p * y).sum(-1)
    den = np.sqrt((p * p).sum(-1) * (y * y).sum(-1))
    return np.where(den > 1e-12, num / np.maximum(den, 1e-12), 0.0)
