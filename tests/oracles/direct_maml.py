"""The MAML meta-step of experiments/maml/run.py written by hand in jax.numpy, the oracle of the
engine's :class:`mplp_graph.meta.maml.MamlStep`.

Everything is built the way ``experiments/maml/run.py`` builds it (its ``Settings``,
``programs``, ``initial``, ``step_fn``; imported from the file): net (1, 20, 20, 1) relu, L2, 2
inner steps of batch 10, CV on 20 points, outer batch 4, Adam 1e-4 (eps 1e-7) after per-leaf
gradient normalization. :class:`DirectMamlStep` is the same meta-step in plain jax.numpy: the MLP
as explicit arrays ``W0, W1, W2, b0, b1, b2`` (read from the engine's prior pytree
``{"W<l>": {"w"}, "b<l>": {"b"}}``), forward ``h @ W + b`` with relu between layers, loss
``mean 0.5 (y - yhat)^2``, 2 unrolled SGD steps with ``jax.grad`` of that loss, mean CV loss over
the tasks (vmapped), ``jax.grad`` through it all; then the outer update written out per array:
mask, ``g / (||g||_2 + 1e-8)``, Adam (b1 0.9, b2 0.999, eps 1e-7, bias-corrected), the same
finiteness guard. Nothing of the engine's loss, gradient or optimizer is reused; only the task
sampling is shared (:func:`sample_tasks`, the keys of ``StepFunction.sample_tasks``).

:func:`check_agreement` compares one full meta-step of each from the same prior and key:
meta-loss to 1e-5 relative, the normalized meta-gradient Adam is fed to 1e-4 (per array,
relative to its largest entry), and the new parameters to ``2 * lr`` (Adam's first step moves
every entry by about ``lr * sign(g)``). tests/test_direct_maml.py runs it on a small net; benchmarks/cases/maml.py
before timing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mplp_graph import xla
from mplp_graph.meta.step import ADAM_EPS
from tests.oracles.direct_mplp import first_moment, numpy_leaves

EXPERIMENT = Path(__file__).resolve().parents[2] / "experiments" / "maml" / "run.py"
LOSS_RTOL = 1e-5  # meta-loss agreement (relative)
GRAD_TOL = 1e-4  # meta-gradient agreement (per array, relative to its largest entry)
ADAM_B1, ADAM_B2 = 0.9, 0.999
CONTENDERS = ("maml", "maml_direct", "mplp_faithful")


def load_experiment() -> Any:
    """experiments/maml/run.py as a module (it is a script, not a package)."""
    name = "maml_experiment_run"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXPERIMENT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def sample_tasks(sample_task: Callable[[Any, Any], dict[str, Any]], key: Any, n: int, data: Any = None) -> dict[str, Any]:
    """``n`` tasks, stacked: ``sample_task(key_i, data)`` for ``key_i`` in ``split(key, n)``, as the
    engine's step functions draw them (:meth:`mplp_graph.meta.step.StepFunction.sample_tasks`)."""
    return jax.vmap(lambda k: sample_task(k, data))(jax.random.split(key, n))


def direct_net(prior: Any, n_layers: int) -> dict[str, Any]:
    """The engine's prior pytree ``{"W<l>": {"w": (in, out)}, "b<l>": {"b": (out,)}, ...}`` (and
    anything of that layout: its mask, gradients) as plain arrays ``{"W<l>", "b<l>"}``."""
    return {**{f"W{l}": prior[f"W{l}"]["w"] for l in range(n_layers)}, **{f"b{l}": prior[f"b{l}"]["b"] for l in range(n_layers)}}


def direct_forward(net: dict[str, Any], x: Any) -> Any:
    n_layers = len(net) // 2
    h = x
    for l in range(n_layers):
        h = h @ net[f"W{l}"] + net[f"b{l}"]
        if l < n_layers - 1:
            h = jax.nn.relu(h)
    return h


def direct_loss(net: dict[str, Any], x: Any, y: Any) -> Any:
    """Mean over the points of ``0.5 (y - yhat)^2``."""
    return jnp.mean(0.5 * (y - direct_forward(net, x)) ** 2)


def direct_adapt(net: dict[str, Any], xt: Any, yt: Any, lr: float) -> dict[str, Any]:
    """One SGD step per inner batch ``xt[i]`` (K, B, 1), unrolled; second order (no stop_gradient)."""
    for i in range(xt.shape[0]):
        g = jax.grad(direct_loss)(net, xt[i], yt[i])
        net = {k: net[k] - lr * g[k] for k in net}
    return net


@dataclass(frozen=True)
class DirectMamlStep:
    """The meta-step of :class:`MamlStep` by hand, on ``direct_net`` arrays. The optimizer
    (per-array normalization, then Adam with ``lr``, b1 0.9, b2 0.999, eps 1e-7) is written out
    too; its state is ``{"count", "mu", "nu"}`` with one moment array per parameter array."""

    sample_task: Callable[[Any, Any], dict[str, Any]]  # family.sample: (key, data) -> task
    outer_batch: int
    lr: float
    inner_lr: float

    def batch_loss(self, net: dict[str, Any], tasks: dict[str, Any]) -> Any:
        def one(task):
            adapted = direct_adapt(net, task["xt"], task["yt"], self.inner_lr)
            return direct_loss(adapted, task["xe"], task["ye"])

        return jnp.mean(jax.vmap(one)(tasks))

    def init_opt(self, net: dict[str, Any]) -> dict[str, Any]:
        zeros = {k: jnp.zeros_like(v) for k, v in net.items()}
        return {"count": jnp.zeros((), jnp.int32), "mu": zeros, "nu": dict(zeros)}

    def __call__(self, net: dict[str, Any], opt: dict[str, Any], mask: dict[str, Any], pool: Any, key: Any):
        tasks = sample_tasks(self.sample_task, key, self.outer_batch)
        loss, grads = jax.value_and_grad(self.batch_loss)(net, tasks)
        g = {k: grads[k] * mask[k] for k in net}
        g = {k: v / (jnp.sqrt(jnp.sum(v * v)) + 1e-8) for k, v in g.items()}
        finite = jnp.isfinite(loss)
        for v in g.values():
            finite = finite & jnp.all(jnp.isfinite(v))
        t = opt["count"] + 1
        tf = t.astype(jnp.float32)
        c1, c2 = 1 - ADAM_B1**tf, 1 - ADAM_B2**tf
        mu = {k: ADAM_B1 * opt["mu"][k] + (1 - ADAM_B1) * g[k] for k in net}
        nu = {k: ADAM_B2 * opt["nu"][k] + (1 - ADAM_B2) * g[k] * g[k] for k in net}
        new = {k: jnp.where(finite, net[k] - self.lr * (mu[k] / c1) / (jnp.sqrt(nu[k] / c2) + ADAM_EPS), net[k]) for k in net}
        new_opt = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), {"count": t, "mu": mu, "nu": nu}, opt)
        return new, new_opt, {"loss": loss, "cv": loss, "finite": finite}  # the engine's MamlStep metrics


@dataclass
class Contender:
    """One meta-step as the benchmark calls it: ``step(params, opt_state, mask, pool, key)``."""

    step: Any  # MamlStep, DirectMamlStep or JointStep
    params: Any
    opt: Any
    mask: Any
    pool: Any = None

    @property
    def fn(self) -> Callable:
        return self.step.__call__


def build(s: Any, only: tuple[str, ...] = CONTENDERS) -> tuple[dict[str, Contender], Any]:
    """The contenders named in ``only`` for the experiment's settings ``s``; and the task family."""
    run = load_experiment()
    prog, fwd, family = run.programs(s)
    out: dict[str, Contender] = {}
    if "maml" in only or "maml_direct" in only:
        prior, mask = run.initial("maml", s, prog, family)
        engine = run.step_fn("maml", s, prog, fwd, family)
        n_layers = len(s.sizes) - 1
        if "maml" in only:
            out["maml"] = Contender(engine, prior, engine.init_opt_state(prior), mask)
        if "maml_direct" in only:
            lr = run.METHODS["maml"].lr or s.lr
            direct = DirectMamlStep(family.sample, s.outer_batch, lr, s.maml_inner_lr)
            net = direct_net(prior, n_layers)
            out["maml_direct"] = Contender(direct, net, direct.init_opt(net), direct_net(mask, n_layers))
    if "mplp_faithful" in only:
        joint, mask = run.initial("faithful", s, prog, family)
        step = run.step_fn("faithful", s, prog, fwd, family)
        out["mplp_faithful"] = Contender(step, joint, step.init_opt_state(joint), mask)
    return out, family


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-30)


def check_agreement(s: Any, c: dict[str, Contender], family: Any, key: Any, compiler_options: dict | None = None) -> dict[str, Any]:
    """One full meta-step of ``maml`` and of ``maml_direct`` from the same prior and key: the
    meta-loss to 1e-5 relative, the masked, per-array normalized meta-gradient Adam was fed (its
    first moment after one step is ``(1 - b1) g``) to 1e-4 per array (relative to its largest
    entry), the new parameters to ``2 * lr``; raises AssertionError naming what differs.
    ``compiler_options``: extra XLA options for both steps (the tests compile without backend
    optimizations)."""
    engine, direct = c["maml"], c["maml_direct"]
    precise = contextlib.nullcontext() if jax.default_backend() == "cpu" else jax.default_matmul_precision("highest")
    with precise:
        engine_out = xla.jit(engine.fn, compiler_options)(engine.params, engine.opt, engine.mask, engine.pool, key)
        direct_out = xla.jit(direct.fn, compiler_options)(direct.params, direct.opt, direct.mask, direct.pool, key)
    return compare_steps(s, c, engine_out, direct_out)


def compare_steps(s: Any, c: dict[str, Contender], engine_out: tuple, direct_out: tuple) -> dict[str, Any]:
    """The comparison of :func:`check_agreement` on one meta-step's outputs of each side."""
    n_layers = len(s.sizes) - 1
    lr = c["maml_direct"].step.lr
    (pe, oe, ae), (pd, od, ad) = engine_out, direct_out
    # numpy arrays keyed like direct_net's: W<l>, b<l> (the engine's leaves are W<l>.w, b<l>.b)
    ge = {path.split("'")[1]: a for path, a in numpy_leaves(np.asarray(first_moment(oe)) / (1 - ADAM_B1), c["maml"].params)}
    gd = {k: np.asarray(v) / (1 - ADAM_B1) for k, v in od["mu"].items()}
    worst, worst_leaf = 0.0, ""
    for k in sorted(gd):
        a, b = np.asarray(ge[k]), np.asarray(gd[k])
        scale = float(np.max(np.abs(a)))
        err = float(np.max(np.abs(a - b))) / scale if scale > 0 else float(np.max(np.abs(b)))
        if not np.isfinite(err) or err > worst:
            worst, worst_leaf = err, k
    pe = direct_net(pe, n_layers)
    out = {
        "loss_engine": float(ae["loss"]),
        "loss_direct": float(ad["loss"]),
        "loss_rel_diff": _rel(float(ae["loss"]), float(ad["loss"])),
        "grad_max_rel_diff": worst,
        "grad_worst_leaf": worst_leaf,
        "param_max_diff": max(float(np.max(np.abs(np.asarray(pe[k]) - np.asarray(pd[k])))) for k in pd),
        "param_tol": 2 * lr,
    }
    failures = [f"loss_rel_diff = {out['loss_rel_diff']:.3g} > {LOSS_RTOL}"] if not out["loss_rel_diff"] <= LOSS_RTOL else []
    if not worst <= GRAD_TOL:
        failures.append(f"normalized meta-gradient differs by {worst:.3g} (relative, {worst_leaf}) > {GRAD_TOL}")
    if not out["param_max_diff"] <= 2 * lr:
        failures.append(f"parameters after one meta-step differ by {out['param_max_diff']:.3g} > 2 lr = {2 * lr}")
    if not (bool(ae["finite"]) and bool(ad["finite"])):
        failures.append("a non-finite meta-step")
    assert not failures, "the engine's MAML step and the direct version disagree: " + "; ".join(failures)
    return out
