"""Meta-steps: what one step of meta-training does, for every kind of meta-learning.

A step function draws what one meta-step needs (:meth:`StepFunction.draw`: the tasks of the
outer batch, and the priors their nets start from), computes the meta-loss of its parameters on
them (:meth:`StepFunction.batch_loss`), and applies one outer update
(:meth:`StepFunction.__call__`, the same for all: ``draw -> value_and_grad(batch_loss) ->``
:func:`outer_update`). Three step functions:

* :class:`MetaStep`: an MPLP learner (paper section 3.1.1; docs/mplp.md), the outer
  batch's nets starting from random priors drawn from a pool;
* :class:`mplp_graph.meta.maml.JointStep`: a learner and a prior together (MAML + MPLP);
* :class:`mplp_graph.meta.maml.MamlStep`: a prior alone (MAML).

:func:`mplp_graph.meta.train.meta_train` runs any of them; :func:`mplp_graph.meta.guard.diagnose`
re-runs a failing step's :meth:`~StepFunction.draw` to find where a non-finite value came from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from mplp_graph.runtime.program import Program
from mplp_graph.ir.spec import GraphSpec
from mplp_graph.meta import batching
from mplp_graph.meta.objectives import MetaLoss, task_loss
from mplp_graph.runtime.state import agent_params

FROZEN_STATS = ("in_mean", "in_norm", "out_mean")  # only out_scale among the normalization is trained
ADAM_EPS = 1e-7  # the Keras Adam default, which the authors' notebooks use


def trainable_mask(params: Any, train_g: bool = True, freeze: tuple[str, ...] = ()) -> Any:
    """1.0 for meta-trained leaves, 0.0 for frozen ones (standardizer statistics; g when
    ``train_g`` is False, as in the reference's MAML run where g never reached the optimizer;
    and every leaf whose path holds a name of ``freeze``, e.g. ``("out_scale",)``: kept at its
    initial value). A name of ``freeze`` that no leaf's path holds raises ValueError."""
    seen: set[str] = set()

    def leaf(path, x):
        names = [getattr(p, "key", None) for p in path]
        seen.update(n for n in names if n in freeze)
        frozen = any(n in FROZEN_STATS or n in freeze for n in names) or (not train_g and "g" in names)
        return jnp.asarray(np.full(np.shape(x), 0.0 if frozen else 1.0, np.float32))  # no XLA program per leaf

    mask = jax.tree_util.tree_map_with_path(leaf, params)
    unknown = sorted(set(freeze) - seen)
    if unknown:
        names = sorted({getattr(p, "key", "") for path, _ in jax.tree_util.tree_flatten_with_path(params)[0] for p in path[-2:]})
        raise ValueError(f"freeze: no parameter is named {', '.join(map(repr, unknown))}; the learners' parameter names include {', '.join(n for n in names if n)}")
    return mask


def normalize_per_leaf(grads: Any) -> Any:
    """``g / (||g||_2 + 1e-8)`` for each leaf (paper: "normalize the gradients for each optimizer parameter")."""
    return jax.tree_util.tree_map(lambda g: g / (jnp.linalg.norm(g.ravel()) + 1e-8), grads)


# ---------------------------------------------------------------------------------------------
# the outer update, on the parameters raveled into one vector
#
# The learners have ~180 small parameter leaves. Masking, normalizing, Adam and the finiteness
# guard leaf by leaf made ~1,500 tiny XLA kernels per meta-step: XLA compiled them one by one
# (a sinusoid meta-step's outer update alone took 45 s to compile on the 2-core CPU, 2.6 s
# raveled) and ran them one by one (3.4 ms vs 1.7 ms). docs/performance.md, "Compile times".


def _leaf_segments(tree: Any) -> tuple[np.ndarray, int]:
    """For the raveled ``tree``: the index of the leaf each element comes from, and the leaf count."""
    sizes = [int(np.size(x)) for x in jax.tree_util.tree_leaves(tree)]
    return np.repeat(np.arange(len(sizes), dtype=np.int32), sizes), len(sizes)


def _ravel(tree: Any) -> tuple[Any, Callable[[Any], Any]]:
    leaves = jax.tree_util.tree_leaves(tree)
    bad = sorted({str(jnp.result_type(x)) for x in leaves} - {"float32"})
    if bad:
        raise TypeError(f"the meta-step trains float32 parameters; found leaves of type {', '.join(bad)}")
    return ravel_pytree(tree)


def init_opt_state(optimizer: optax.GradientTransformation, params: Any) -> Any:
    """The optimizer state of :func:`outer_update`: ``optimizer`` over ``params`` raveled into
    one float32 vector (so Adam's moments are two vectors, not one array per parameter leaf)."""
    return optimizer.init(_ravel(params)[0])


def same_layout(a: Any, b: Any) -> bool:
    """Whether two pytrees have the same structure and leaf shapes (arrays or shape structs)."""
    return jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b) and all(
        np.shape(x) == np.shape(y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


def _check_opt_state(optimizer: optax.GradientTransformation, opt_state: Any, flat: Any) -> None:
    if not same_layout(opt_state, jax.eval_shape(optimizer.init, flat)):
        raise TypeError(
            "opt_state does not match the meta-step's optimizer state: the outer update keeps it over the parameters "
            f"raveled into one vector of {flat.size} values. Make it with init_opt_state(optimizer, params) (or "
            "step.init_opt_state(params)), not optimizer.init(params)"
        )


# how the meta-gradient is scaled before the optimizer: per leaf to unit norm (the paper's "normalize
# the gradients for each optimizer parameter", paper section 3.1.1), all leaves together to unit
# norm, or not at all
GRAD_NORMALIZE = ("per_leaf", "global", "none")


def outer_update(
    optimizer: optax.GradientTransformation, params: Any, opt_state: Any, mask: Any, loss: Any, grads: Any,
    normalize: str = "per_leaf",
) -> tuple[Any, Any, Any, Any]:
    """Mask, normalize (``normalize``: :data:`GRAD_NORMALIZE`; per leaf by default,
    :func:`normalize_per_leaf`), ``optimizer``; a non-finite loss or gradient leaves everything
    as it was (docs/mplp.md, meta-training). Computed on the raveled parameters; ``opt_state``
    comes from :func:`init_opt_state`.

    Returns ``(params, opt_state, finite, grad_norm)``, ``grad_norm`` the L2 norm of the masked
    meta-gradient before normalization (a diagnostic of meta-training, docs/mplp.md). A masked
    leaf gets a zero gradient, hence a zero Adam update: it stays bitwise at its value."""
    if normalize not in GRAD_NORMALIZE:
        raise ValueError(f"normalize must be one of {GRAD_NORMALIZE}, got {normalize!r}")
    flat, unravel = _ravel(params)
    _check_opt_state(optimizer, opt_state, flat)
    seg, n_leaves = _leaf_segments(params)
    g = _ravel(grads)[0] * _ravel(mask)[0]
    grad_norm = jnp.sqrt(jnp.sum(g * g))
    if normalize == "per_leaf":
        sq = jax.ops.segment_sum(g * g, seg, num_segments=n_leaves, indices_are_sorted=True)
        g = g / (jnp.sqrt(sq) + 1e-8)[seg]
    elif normalize == "global":
        g = g / (grad_norm + 1e-8)
    finite = jnp.isfinite(loss) & jnp.all(jnp.isfinite(g))
    updates, new_opt = optimizer.update(g, opt_state, flat)
    new_flat = jnp.where(finite, optax.apply_updates(flat, updates), flat)
    new_opt = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new_opt, opt_state)
    return unravel(new_flat), new_opt, finite, grad_norm


class StepFunction:
    """The interface of a meta-step (module docstring). Subclasses are frozen dataclasses with
    ``optimizer`` (an optax transformation, over the raveled parameters) and ``outer_batch``,
    and define :meth:`draw`, :meth:`batch_loss`, :meth:`inner` and :attr:`graph`.

    ``draw(params, pool, key, data) -> {"priors": ..., "tasks": ...}`` (stacked along the outer
    batch; ``priors`` may be None when they are part of ``params``); ``batch_loss(params, drawn)
    -> (loss, parts)`` with ``parts`` a dict of scalars logged beside the loss (e.g. ``hint``,
    ``cv``); ``inner(params, drawn) -> (prog, learner params, priors)``, what the NaN guard
    traces arrow by arrow, or None when no learned protocol runs; ``graph``: the graph spec that
    identifies a checkpoint."""

    optimizer: optax.GradientTransformation
    outer_batch: int
    compiler_options: tuple = ()  # XLA options for compiling the step (mplp_graph.xla.jit)
    grad_normalize: str = "per_leaf"  # outer_update's normalize (GRAD_NORMALIZE)

    def draw(self, params: Any, pool: Any, key: Any, data: Any) -> dict[str, Any]:
        raise NotImplementedError

    def batch_loss(self, params: Any, drawn: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        raise NotImplementedError

    def inner(self, params: Any, drawn: dict[str, Any]) -> tuple[Program, Any, Any] | None:
        return None

    @property
    def graph(self) -> GraphSpec | None:
        return None

    def sample_tasks(self, sample_task: Callable, key: Any, data: Any) -> dict[str, Any]:
        """``outer_batch`` tasks, stacked: ``sample_task(key_i, data)`` for split keys."""
        return jax.vmap(lambda k: sample_task(k, data))(jax.random.split(key, self.outer_batch))

    def init_opt_state(self, params: Any) -> Any:
        """The optimizer state :func:`outer_update` expects (over the raveled parameters)."""
        return init_opt_state(self.optimizer, params)

    def __call__(self, params: Any, opt_state: Any, mask: Any, pool: Any, key: Any, data: Any = None):
        """One meta-step: ``(params, opt_state, metrics)``; ``metrics`` holds ``loss``, the
        parts of :meth:`batch_loss`, ``finite`` (False: the step was not applied) and
        ``grad_norm`` (the meta-gradient's L2 norm before normalization). ``data``:
        the task family's arrays (``family.load()``), an argument rather than constants baked
        into the compiled program."""
        drawn = self.draw(params, pool, key, data)
        (loss, parts), grads = jax.value_and_grad(self.batch_loss, has_aux=True)(params, drawn)
        params, opt_state, finite, grad_norm = outer_update(self.optimizer, params, opt_state, mask, loss, grads, self.grad_normalize)
        return params, opt_state, {"loss": loss, **parts, "finite": finite, "grad_norm": grad_norm}


@dataclass(frozen=True)
class MetaStep(StepFunction):
    """One MPLP meta-step (paper section 3.1.1): ``outer_batch`` tasks,
    each net starting from a distinct random prior of ``pool``, ``objective``'s meta-loss after
    the inner steps, mean over tasks."""

    prog: Program
    sample_task: Callable[[Any, Any], dict[str, Any]]  # family.sample: (key, data) -> task
    objective: MetaLoss
    outer_batch: int
    optimizer: optax.GradientTransformation
    mesh: Any = None  # a jax.sharding.Mesh with a "tasks" axis: the outer batch is split over its devices
    # XLA options for compiling the meta-step in meta_train, as (name, value) pairs; FAST_COMPILE
    # trades some XLA optimization for ~25% less compile time (benchmark case ``sinusoid_compile``; docs/performance.md)
    compiler_options: tuple = ()
    # the outer batch's tasks vmapped, one after another ("map"), or "auto": map on the CPU, vmap
    # elsewhere (mplp_graph.meta.batching); with a mesh they are vmapped (and split over its devices)
    outer_batch_mode: str = "auto"
    grad_normalize: str = "per_leaf"  # outer_update's normalize (GRAD_NORMALIZE)

    def __post_init__(self):
        batching.resolve(self.outer_batch_mode)  # a known mode
        if self.grad_normalize not in GRAD_NORMALIZE:
            raise ValueError(f"grad_normalize must be one of {GRAD_NORMALIZE}, got {self.grad_normalize!r}")
        if self.mesh is not None and self.outer_batch_mode == "map":
            raise ValueError("outer_batch_mode='map' runs the tasks one after another, a mesh splits them over its devices; "
                             "use 'vmap' or 'auto' with a mesh")

    @property
    def graph(self) -> GraphSpec:
        return self.prog.spec

    def draw(self, params: Any, pool: Any, key: Any, data: Any) -> dict[str, Any]:
        k_pool, k_task = jax.random.split(key)
        n_pool = jax.tree_util.tree_leaves(pool)[0].shape[0]
        idx = jax.random.choice(k_pool, n_pool, (self.outer_batch,), replace=False)  # distinct priors
        priors = jax.tree_util.tree_map(lambda a: a[idx], pool)
        tasks = self.sample_tasks(self.sample_task, k_task, data)
        if self.mesh is not None:  # tasks and their priors live on different devices; params are replicated
            from mplp_graph.meta.shard import shard_tasks

            priors, tasks = shard_tasks(self.mesh, (priors, tasks))
        return {"priors": priors, "tasks": tasks}

    def batch_loss(self, params: Any, drawn: dict[str, Any]) -> tuple[Any, dict]:
        def one(pr, t):
            return task_loss(self.prog, self.objective, params, pr, t)

        args = (drawn["priors"], drawn["tasks"])
        if self.mesh is not None:  # the tasks' axis is split over the mesh's devices
            losses, parts = jax.vmap(one)(*args)
        else:
            losses, parts = batching.over_leading_axis(one, args, self.outer_batch_mode)
        return jnp.mean(losses), jax.tree_util.tree_map(jnp.mean, parts)

    def inner(self, params: Any, drawn: dict[str, Any]) -> tuple[Program, Any, Any]:
        return self.prog, params, drawn["priors"]


def adam(lr: float, schedule: str = "constant", steps: int = 1, lr_final: float = 1e-5, warmup: int = 0) -> optax.GradientTransformation:
    """Adam with the Keras epsilon; optionally a cosine decay of the learning rate over ``steps``,
    and a linear warm-up: step ``n < warmup`` (from 0) at ``lr * (n + 1) / warmup``."""
    if schedule == "cosine":
        rate = optax.cosine_decay_schedule(lr, steps, alpha=lr_final / lr)
    else:
        rate = lr  # a constant: the optimizer state holds no schedule count
    if warmup:
        after = rate if callable(rate) else optax.constant_schedule(lr)
        rate = optax.join_schedules([optax.linear_schedule(lr / warmup, lr, max(warmup - 1, 1)), after], [warmup])
    return optax.adam(rate, b1=0.9, b2=0.999, eps=ADAM_EPS)


def make_pool(prog: Program, key: Any, size: int) -> Any:
    """``size`` random priors (the graph's initialisers, e.g. W ~ N(0, 0.05), b = 0), stacked:
    a pytree with leading axis P."""
    # one compiled program (op by op under vmap, each small op compiled its own: 1-3 s)
    return jax.jit(jax.vmap(lambda k: agent_params(prog.spec, prog.init(k, 1))))(jax.random.split(key, size))
