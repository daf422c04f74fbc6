"""Learning a prior (MAML) and the protocol together (paper 4.1.2, Fig. 3; reference-notes 5.4),
and the plain MAML baseline of the same notebook.

Both meta-steps follow the calling convention of :func:`mplp_graph.meta.train.meta_train`,
``step(params, opt_state, mask, pool, key) -> (params, opt_state, metrics)``, so they train with its
atomic checkpoints and resume (an optional last argument ``data`` is handed to the task sampler,
as ``MetaStep`` does). ``pool`` is unused (pass ``None``): every task starts from the one
learned prior (the reference's ``same_pfw=True``).

* :class:`JointStep`: params ``{"learner": <MPLP learner params>, "prior": <agent params>}``. The
  meta-loss is the CV loss only (no hint loss) after ``k`` MPLP steps from the prior. With
  ``trainable_mask(params, train_g=False)`` the message MLPs g stay at their random init, as in the
  authors' run (notes 2.3, 7.2); the prior leaves ``W*/w``, ``b*/b`` are never masked.
* :class:`MamlStep`: params = the prior alone. Inner SGD ``p -= lr * grad(mean 0.5 (y - yhat)^2)``,
  one batch per step; second-order meta-gradient, or first-order with ``first_order=True``
  (the inner gradients are treated as constants, ``stop_gradient``).

Both apply the reference's outer update: per-leaf gradient normalization, then Adam (notes 5.2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax

from mplp_graph import xla
from mplp_graph.runtime.program import Program
from mplp_graph.meta import batching
from mplp_graph.meta.evaluate import _protocol, point_losses
from mplp_graph.meta.objectives import MetaLoss, task_loss
from mplp_graph.meta.stats import init_statistics
from mplp_graph.meta.train import RaveledOptState, outer_update
from mplp_graph.runtime.state import agent_params, with_agent_params, zeros_state
from mplp_graph.tasks.sinusoid import SinusoidFamily

CV_ONLY = MetaLoss(hint_weight=0.0, cv_weight=1.0)  # h = None in the reference (notes 5.1)
MAML_INNER_LR = 0.05  # the notebook's inner SGD rate (notes 5.4)


def random_prior(prog: Program, key: Any) -> dict[str, dict[str, Any]]:
    """A random prior for ``prog``'s net (W ~ N(0, 0.05), b = 0; paper footnote 4)."""
    return agent_params(prog.spec, prog.init(key, 1))


def sample_tasks(sample_task: Callable, key: Any, n: int, data: Any = None) -> dict[str, Any]:
    """``n`` tasks, stacked. ``data`` (the family's arrays, as in ``MetaStep``): passed to
    ``sample_task(key, data)`` when given."""
    sample = sample_task if data is None else (lambda k: sample_task(k, data))
    return jax.vmap(sample)(jax.random.split(key, n))


# ---------------------------------------------------------------------------------------------
# MAML + MPLP


@dataclass(frozen=True)
class JointStep(RaveledOptState):
    """One meta-step of the learner and the prior together; ``outer_batch`` tasks, vmapped or one
    after another (``outer_batch_mode``, :mod:`mplp_graph.meta.batching`)."""

    prog: Program
    sample_task: Callable[[Any], dict[str, Any]]
    outer_batch: int
    optimizer: optax.GradientTransformation
    objective: MetaLoss = CV_ONLY
    outer_batch_mode: str = "auto"

    def __post_init__(self):
        batching.resolve(self.outer_batch_mode)  # a known mode, checked when the step is built

    def batch_loss(self, params: Any, tasks: dict[str, Any]) -> tuple[Any, dict]:
        """Mean over tasks of the meta-loss, every task adapted from ``params["prior"]``."""

        def one(task):
            return task_loss(self.prog, self.objective, params["learner"], params["prior"], task)

        losses, parts = batching.over_leading_axis(one, (tasks,), self.outer_batch_mode)
        return jnp.mean(losses), jax.tree_util.tree_map(jnp.mean, parts)

    def __call__(self, params: Any, opt_state: Any, mask: Any, pool: Any, key: Any, data: Any = None):
        tasks = sample_tasks(self.sample_task, key, self.outer_batch, data)
        (loss, parts), grads = jax.value_and_grad(self.batch_loss, has_aux=True)(params, tasks)
        params, opt_state, finite = outer_update(self.optimizer, params, opt_state, mask, loss, grads)
        return params, opt_state, {"loss": loss, **parts, "finite": finite}


def initial_prior(prog: Program, key: Any) -> dict[str, dict[str, Any]]:
    """The random prior :func:`joint_params` starts from for ``key`` (MAML can start from it too)."""
    return random_prior(prog, jax.random.fold_in(key, 1))


def joint_params(prog: Program, family: SinusoidFamily, key: Any, stats_rounds: int = 1, stats_mix: float = 1.0) -> dict[str, Any]:
    """``{"learner", "prior"}`` at init: a random prior, and learner statistics from ``stats_rounds``
    rollouts of ``family.inner_steps`` steps run on that prior (J=1, K=2, p=1; notes 3.3, 5.4)."""
    prior = initial_prior(prog, key)
    learner = prog.init_params(jax.random.fold_in(key, 0))
    k_stats = jax.random.fold_in(key, 2)

    def sample_round(k):
        task = family.sample(k)
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
class MamlStep(RaveledOptState):
    """One MAML meta-step on the prior: CV loss after the inner SGD steps, mean over tasks."""

    fwd: Program
    sample_task: Callable[[Any], dict[str, Any]]
    outer_batch: int
    optimizer: optax.GradientTransformation
    inner_lr: float = MAML_INNER_LR
    first_order: bool = False

    def batch_loss(self, prior: Any, tasks: dict[str, Any]) -> Any:
        def one(task):
            net = maml_adapt(self.fwd, prior, task["xt"], task["yt"], self.inner_lr, self.first_order)
            return net_loss(self.fwd, net, task["xe"], task["ye"])

        return jnp.mean(jax.vmap(one)(tasks))

    def __call__(self, params: Any, opt_state: Any, mask: Any, pool: Any, key: Any, data: Any = None):
        tasks = sample_tasks(self.sample_task, key, self.outer_batch, data)
        loss, grads = jax.value_and_grad(self.batch_loss)(params, tasks)
        params, opt_state, finite = outer_update(self.optimizer, params, opt_state, mask, loss, grads)
        # "hint"/"cv": the keys meta_train logs (MAML has no hint loss)
        return params, opt_state, {"loss": loss, "hint": jnp.zeros(()), "cv": loss, "finite": finite}


def evaluate_maml(fwd: Program, prior: Any, family: SinusoidFamily, key: Any, runs: int = 100, lr: float = MAML_INNER_LR) -> dict:
    """MAML's evaluation (notes 5.4, 5.6): SGD(``lr``) from ``prior``, one step per inner batch,
    through the same protocol as :func:`mplp_graph.meta.evaluate.evaluate_mplp` (same tasks for a
    given ``key``)."""

    def one(k):
        _, kt = jax.random.split(k)
        task = family.sample(kt)
        return _protocol(fwd, family, task, prior, lambda net, x, y: sgd_step(fwd, net, x, y, lr), lambda net: net)

    return xla.jit(jax.vmap(one))(jax.random.split(key, runs))


# ---------------------------------------------------------------------------------------------
# fits after every step (Fig. 3)


def _trace(fwd: Program, family: SinusoidFamily, task: dict, init: Any, update: Callable, net_of: Callable) -> dict:
    xg, yg = family.eval_grid(task)

    def predict(carry):
        return point_losses(fwd, {}, net_of(carry), xg, yg)[1][:, 0]

    def body(carry, xy):
        carry = update(carry, *xy)
        return carry, predict(carry)

    _, preds = jax.lax.scan(body, init, (task["xt"], task["yt"]))
    return {"x": xg[:, 0], "y": yg[:, 0], "pred": jnp.concatenate([predict(init)[None], preds]), "xt": task["xt"][..., 0], "yt": task["yt"][..., 0]}


def trace_mplp(prog: Program, fwd: Program, params: Any, family: SinusoidFamily, key: Any, runs: int, prior: Any = None) -> dict:
    """Predictions on the eval grid before and after every MPLP step: ``pred`` (runs, k+1, 100).
    The runs draw the same tasks (and random priors) as ``evaluate_mplp`` with the same key."""

    def one(k):
        kp, kt = jax.random.split(k)
        net = prior if prior is not None else random_prior(prog, kp)
        task = family.sample(kt)
        state = prog.carry_of(with_agent_params(zeros_state(prog.spec, family.batch), net))
        update = lambda s, x, y: prog.step_carry(params, s, {"x": x, "y": y})[0]
        return _trace(fwd, family, task, state, update, lambda s: agent_params(prog.spec, s))

    return xla.jit(jax.vmap(one))(jax.random.split(key, runs))


def trace_maml(fwd: Program, prior: Any, family: SinusoidFamily, key: Any, runs: int, lr: float = MAML_INNER_LR) -> dict:
    """Like :func:`trace_mplp` for MAML's SGD steps from ``prior`` (the tasks of ``evaluate_maml``)."""

    def one(k):
        _, kt = jax.random.split(k)
        task = family.sample(kt)
        return _trace(fwd, family, task, prior, lambda net, x, y: sgd_step(fwd, net, x, y, lr), lambda net: net)

    return xla.jit(jax.vmap(one))(jax.random.split(key, runs))


def shape_correlation(trace: dict) -> Any:
    """Pearson correlation of prediction and target over the eval grid: (runs, k+1). Near 1 when
    the fit has the sinusoid's shape whatever its scale; a constant prediction counts as 0."""
    p = trace["pred"] - trace["pred"].mean(-1, keepdims=True)
    y = (trace["y"] - trace["y"].mean(-1, keepdims=True))[:, None, :]
    num = (p * y).sum(-1)
    den = jnp.sqrt((p * p).sum(-1) * (y * y).sum(-1))
    return jnp.where(den > 1e-12, num / jnp.maximum(den, 1e-12), 0.0)
