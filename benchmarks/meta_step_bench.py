"""Benchmark: one full meta-step of the engine vs the same meta-step written by hand.

The engine's meta-step is the jitted :class:`mplp_graph.meta.step.MetaStep` call: distinct
priors drawn from a pool, tasks sampled, the outer batch's tasks run (one after another on the
CPU, vmapped elsewhere: ``meta.outer_batch_mode``; the direct version vmaps them), the inner steps scanned
(``Program.step_carry``), hint + CV loss, meta-gradient, per-leaf gradient normalization, Adam.
The direct version is a plain jax.numpy implementation of the reference inner loop
(reference-notes Appendix A): a forward that stores its inputs, the loss node's GRU, then per
dense layer the bias GRU, the weight GRU (fed the bias node's message, replicated over the
fan-in; its messages averaged over the fan-out), the activation GRU; residual batch-mean updates
``p + (mean_B c[..., 0] - out_mean) * out_scale``; scalar input standardization
``(v - in_mean) * in_norm`` per input kind; softmax and CE for the MNIST-shaped net. The weight
learner's first layer is split by input kind (reference-notes 8), so the ``[B, in, out, msg]``
replicated input is never built; the other learners concatenate their inputs.

The direct version reads its learner parameters from the engine's ``prog.init_params`` pytree
(each arrow's ``net`` and ``norm``; the ``norm`` part holds ``in_mean``/``in_norm`` per input
channel in the order of the arrow's inputs minus the carry), so both take the same arguments.
Before any timing the benchmark checks, with standardizer statistics from an init rollout
(non-trivial per channel, so a wrong channel order is caught) and randomized ``out_scale``:

* meta-loss (and its hint / CV parts) to 1e-5 relative,
* meta-gradient to 1e-4 (per leaf, relative to the leaf's largest entry; the trainable leaves,
  i.e. after the mask that freezes the standardizer statistics),
* the full meta-step's loss to 1e-5 relative and its new parameters to ``2 * lr``
  (Adam's first step moves every entry by about ``lr * sign(g)``, so entries whose normalized
  gradient is at float noise level may differ by up to that much),

and exits if any check fails.

Two configs:

* ``sinusoid``: ``mplp_feedforward((1, 20, 20, 1))`` (relu, L2), stateful, msg 8, hidden 15;
  5 inner steps of batch 10, outer batch 4, CV on 50 points, hint 0.7 / CV 0.3, Adam 1e-4
  (reference-notes 5.3); tasks from :class:`SinusoidFamily`.
* ``mnist``: ``mplp_feedforward((144, 50, 10), "sigmoid", "ce", msg=4, hidden=7,
  sharing="layers")``; 20 inner steps of batch 8, outer batch 1, CV on 8 points, Adam 5e-4
  (reference-notes 5.5); random normal inputs and random one-hot labels.

``--scaling`` adds the scaling sweep: the ``mnist`` config with the net (n_in, h, 10) for
(144, 100), (144, 200), (784, 50), (784, 100), (784, 200) (one meta-step per round; the cost
grows with the number of synapses, ~700 GFLOP per meta-step at (784, 100)); ``--config NAME``
picks single ones. ``--engine-only`` times the engine alone, for sizes where the hand-written
version does not fit in memory (its peak RSS grows with the number of synapses: 13.6 GB at
(144, 200), 17.9 GB at (784, 50); the engine's 2.4 and 3.7 GB). ``--direct-remat`` runs the
hand-written version's inner steps under ``jax.checkpoint``, as the engine does by default
(``meta.remat``): the same recomputation on both sides, and memory that fits at the largest sizes.

Per config and contender: median ms per meta-step over interleaved rounds (the order rotates
every round), the first call's wall time (trace + lower + compile + run; the row's
``compile_s`` / ``direct_compile_s``), ``.lower()`` and ``.compile()`` times measured separately
on fresh wrappers (``--compile-reps`` times, the order alternating; the minimum is reported),
peak RSS of the first call and of the compilation, HLO size (lines of ``lowered.as_text()``),
StableHLO op counts, and op counts of the optimized HLO (``kernel``: instructions that run as
separate kernels, i.e. outside fusions; ``fused``: inside fusions). Results go to
``benchmarks/results/meta_step_bench.json`` (format: results.md of the shared docs).

Run: ``python benchmarks/meta_step_bench.py`` (``--quick`` for a smoke run: 3 rounds of 3
meta-steps, one compile measurement; ``--config`` to pick configs; ``--note background_load``
to mark a run made on a busy machine; ``--hlo DIR`` to dump the HLO text).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import json
import os
import re
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from mplp_graph import xla
from mplp_graph.runtime.program import Program, compile_graph
from mplp_graph.meta.objectives import MetaLoss
from mplp_graph.meta.stats import init_statistics
from mplp_graph.meta.step import ADAM_EPS, MetaStep, adam, make_pool, trainable_mask
from mplp_graph.ops.builtin import CE_CLIP
from mplp_graph.runtime.state import agent_params
from mplp_graph.tasks.sinusoid import SinusoidFamily
from mplp_graph.templates.mplp import mplp_feedforward
from bench_common import _git, device_peak_mib, exclusive_device, machine_line, round_order, write_json_atomic  # noqa: E402  (benchmarks/ is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "meta_step_bench.json"
LOSS_RTOL = 1e-5  # meta-loss agreement (relative)
GRAD_TOL = 1e-4  # meta-gradient agreement (per leaf, relative to the leaf's largest entry)
ADAM_B1, ADAM_B2 = 0.9, 0.999


# ---------------------------------------------------------------------------------------------
# configs and tasks


@dataclass(frozen=True)
class MetaConfig:
    name: str
    sizes: tuple[int, ...]
    activation: str
    loss: str
    msg: int
    hidden: int
    sharing: str
    inner_steps: int
    batch: int
    outer_batch: int
    cv_points: int
    lr: float
    pool: int
    task: str  # "sinusoid" | "random_class"
    iters: int = 20  # default meta-steps per contender per timing round
    hint_weight: float = 0.7
    cv_weight: float = 0.3


CONFIGS = (
    MetaConfig("sinusoid", (1, 20, 20, 1), "relu", "l2", 8, 15, "none", 5, 10, 4, 50, 1e-4, 128, "sinusoid", iters=20),
    MetaConfig("mnist", (144, 50, 10), "sigmoid", "ce", 4, 7, "layers", 20, 8, 1, 8, 5e-4, 16, "random_class", iters=5),
)
# the scaling sweep (``--scaling``): the MNIST config with hidden width 50/100/200 and input 144/784
# (the MNIST row above is its (144, 50) point); cost grows with the number of synapses
SCALING = tuple(
    MetaConfig(f"mnist_{n_in}x{h}", (n_in, h, 10), "sigmoid", "ce", 4, 7, "layers", 20, 8, 1, 8, 5e-4, 16, "random_class", iters=1)
    for n_in, h in ((144, 100), (144, 200), (784, 50), (784, 100), (784, 200))
)
ALL_CONFIGS = CONFIGS + SCALING


@dataclass(frozen=True)
class RandomClassFamily:
    """MNIST-shaped tasks for timing: standard normal inputs, uniformly random one-hot labels.
    ``sample(key, data=None)`` (a synthetic family: no data) returns the keys of
    :meth:`SinusoidFamily.sample`: xt (K, B, in), yt, xe (N, in), ye."""

    inner_steps: int
    batch: int
    cv_points: int
    n_in: int
    n_out: int

    def sample(self, key: Any, data: Any = None) -> dict[str, Any]:
        kx, ky, ke, kl = jax.random.split(key, 4)
        k, b, n = self.inner_steps, self.batch, self.cv_points
        return {
            "xt": jax.random.normal(kx, (k, b, self.n_in)),
            "yt": jax.nn.one_hot(jax.random.randint(ky, (k, b), 0, self.n_out), self.n_out),
            "xe": jax.random.normal(ke, (n, self.n_in)),
            "ye": jax.nn.one_hot(jax.random.randint(kl, (n,), 0, self.n_out), self.n_out),
        }


def task_family(cfg: MetaConfig):
    if cfg.task == "sinusoid":
        return SinusoidFamily(inner_steps=cfg.inner_steps, batch=cfg.batch, cv_points=cfg.cv_points)
    return RandomClassFamily(cfg.inner_steps, cfg.batch, cfg.cv_points, cfg.sizes[0], cfg.sizes[-1])


# ---------------------------------------------------------------------------------------------
# the direct version, written from reference-notes Appendix A


def _learner(params: Any, cfg: MetaConfig, arrow: str, kind: str | None = None) -> tuple[Any, Any]:
    """(GRU parameters, standardizer) of the learner on ``arrow``; with sharing ``layers`` the
    W (resp. b) GRU of every dense layer is ``params["W_net"]`` (``"b_net"``), the
    standardizers stay per arrow."""
    if cfg.sharing == "layers" and kind in ("W", "b"):
        return params[f"{kind}_net"]["net"], params[arrow]["norm"]
    if cfg.sharing not in ("none", "layers"):
        raise NotImplementedError(f"sharing {cfg.sharing!r}")
    return params[arrow]["net"], params[arrow]["norm"]


def _gate_kernel(p: Any) -> Any:
    """The three matrices applied to the GRU input, side by side: (x_dim, 2C + 80)."""
    return jnp.concatenate([p["W_update_x"], p["W_reset_x"], p["next_x_net"]["k1"]], axis=1)


def _gru(p: Any, xproj: Any, c: Any) -> Any:
    """GRU step (reference-notes 2.1) given ``xproj = x @ _gate_kernel(p)``."""
    C = c.shape[-1]
    u = jax.nn.sigmoid(xproj[..., :C] + c @ p["W_update_c"] + p["b_update"])
    r = jax.nn.sigmoid(xproj[..., C : 2 * C] + c @ p["W_reset_c"] + p["b_reset"])
    nx, nc = p["next_x_net"], p["next_c_net"]
    hx = jnp.tanh(jnp.tanh(xproj[..., 2 * C :] + nx["b1"]) @ nx["k2"] + nx["b2"]) @ nx["k3"]
    hc = jnp.tanh(jnp.tanh((r * c) @ nc["k1"] + nc["b1"]) @ nc["k2"] + nc["b2"]) @ nc["k3"]
    return u * c + (1.0 - u) * jnp.tanh(hx + hc + p["b_next"])


def _node(p: Any, norm: Any, chans: list[Any], c: Any) -> Any:
    """A node learner on concatenated standardized inputs; ``chans`` are (B, n, width)."""
    x = jnp.concatenate([(v - norm["in_mean"][k]) * norm["in_norm"][k] for k, v in enumerate(chans)], axis=-1)
    return _gru(p, x @ _gate_kernel(p), c)


_ACT = {"relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh}


def _forward(cfg: MetaConfig, Ws: list, bs: list, x: Any):
    """Returns (pred, stored: layer inputs, pre-bias sums, pre-activations, softmax states)."""
    h, ins, zs, pres = x, [], [], []
    for l, (W, b) in enumerate(zip(Ws, bs)):
        ins.append(h)
        z = h @ W
        zs.append(z)
        h = z + b
        if l < len(Ws) - 1:
            pres.append(h)
            h = _ACT[cfg.activation](h)
    sm = None
    if cfg.loss == "ce":
        zmax = jnp.max(h, axis=-1, keepdims=True)
        t = h - zmax
        e = jnp.exp(t)
        den = jnp.broadcast_to(jnp.sum(e, axis=-1, keepdims=True), e.shape)
        sm = (h, t, e, den)
        h = e / den
    return h, (ins, zs, pres, sm)


def _loss_elems(cfg: MetaConfig, pred: Any, t: Any):
    """Elementwise loss and the loss node's state channels (notes 1.2)."""
    if cfg.loss == "ce":
        pc = jnp.clip(pred, CE_CLIP, 1.0 - CE_CLIP)
        lg = jnp.log(pc)
        loss = -t * lg
        return loss, [loss, pc, t, lg]
    diff = t - pred
    loss = 0.5 * diff**2
    return loss, [loss, pred, t, diff]


def direct_zero_carries(cfg: MetaConfig, B: int) -> dict[str, Any]:
    cp, cn = 1 + cfg.hidden + cfg.msg, cfg.hidden + cfg.msg
    s = cfg.sizes
    L = len(s) - 1
    c = {"loss": jnp.zeros((B, s[-1], cn))}
    if cfg.loss == "ce":
        c["softmax"] = jnp.zeros((B, s[-1], cn))
    for l in range(L):
        c[f"W{l}"] = jnp.zeros((B, s[l], s[l + 1], cp))
        c[f"b{l}"] = jnp.zeros((B, s[l + 1], cp))
        if l < L - 1:
            c[f"a{l}"] = jnp.zeros((B, s[l + 1], cn))
    return c


def direct_inner_step(cfg: MetaConfig, params: Any, Ws: list, bs: list, carries: dict, x: Any, y: Any):
    """One inner step (reference-notes Appendix A). Returns (Ws, bs, carries)."""
    L, msg = len(Ws), cfg.msg
    pred, (ins, zs, pres, sm) = _forward(cfg, Ws, bs, x)
    _, states = _loss_elems(cfg, pred, y)
    new_c = dict(carries)
    last_b = f"b{L - 1}"
    # loss node: its first input is the elementwise loss value (paper eq. 2)
    arrow = "loss->softmax" if cfg.loss == "ce" else f"loss->{last_b}"
    p, norm = _learner(params, cfg, arrow)
    c = _node(p, norm, [v[..., None] for v in states], carries["loss"])
    new_c["loss"] = c
    m = c[..., -msg:]
    if cfg.loss == "ce":
        p, norm = _learner(params, cfg, f"softmax->{last_b}")
        c = _node(p, norm, [m] + [v[..., None] for v in sm], carries["softmax"])
        new_c["softmax"] = c
        m = c[..., -msg:]
    new_W, new_b = list(Ws), list(bs)
    B = x.shape[0]
    for l in reversed(range(L)):
        W, b = Ws[l], bs[l]
        # bias node: [m_j, b_j, z_j]; reads the pre-update b
        p, norm = _learner(params, cfg, f"b{l}->W{l}", "b")
        c = _node(p, norm, [m, jnp.broadcast_to(b, (B, b.shape[0]))[..., None], zs[l][..., None]], carries[f"b{l}"])
        new_c[f"b{l}"] = c
        new_b[l] = b + (jnp.mean(c[..., 0], axis=0) - norm["out_mean"]) * norm["out_scale"]
        m_b = c[..., -msg:]  # (B, out, msg)
        # weight node: [m_b_j (replicated over i), w_ij, x_i (replicated over j)], first layer split by kind
        arrow = f"W{l}->a{l - 1}" if l > 0 else "W0.learn"
        p, norm = _learner(params, cfg, arrow, "W")
        K = _gate_kernel(p)
        mu, nr = norm["in_mean"], norm["in_norm"]
        xproj = (
            (((m_b - mu[0]) * nr[0]) @ K[:msg])[:, None, :, :]  # (B, 1, out, .)
            + ((W - mu[1]) * nr[1])[None, :, :, None] * K[msg]  # (1, in, out, .)
            + ((ins[l] - mu[2]) * nr[2])[:, :, None, None] * K[msg + 1]  # (B, in, 1, .)
        )
        c = _gru(p, xproj, carries[f"W{l}"])  # (B, in, out, C)
        new_c[f"W{l}"] = c
        new_W[l] = W + (jnp.mean(c[..., 0], axis=0) - norm["out_mean"]) * norm["out_scale"]
        if l > 0:  # the first layer's outgoing message is discarded (notes 1.4)
            m = jnp.mean(c[..., -msg:], axis=2)  # mean over the fan-out (paper eq. 5)
            p, norm = _learner(params, cfg, f"a{l - 1}->b{l - 1}")
            c = _node(p, norm, [m, pres[l - 1][..., None]], carries[f"a{l - 1}"])
            new_c[f"a{l - 1}"] = c
            m = c[..., -msg:]
    return new_W, new_b, new_c


def direct_predict_loss(cfg: MetaConfig, Ws: list, bs: list, x: Any, y: Any) -> Any:
    pred, _ = _forward(cfg, Ws, bs, x)
    return jnp.mean(_loss_elems(cfg, pred, y)[0])


def direct_task_loss(cfg: MetaConfig, params: Any, prior: Any, task: dict[str, Any], remat: bool = False) -> tuple[Any, dict]:
    """``remat``: each inner step under ``jax.checkpoint``, as the engine's default (``meta.remat``)."""
    L = len(cfg.sizes) - 1
    Ws = [prior[f"W{l}"]["w"] for l in range(L)]
    bs = [prior[f"b{l}"]["b"] for l in range(L)]

    def body(carry, xy):
        Ws, bs, cs = carry
        x, y = xy
        Ws, bs, cs = direct_inner_step(cfg, params, Ws, bs, cs, x, y)
        return (Ws, bs, cs), direct_predict_loss(cfg, Ws, bs, x, y)  # hint: same batch, theta_{i+1}

    body = jax.checkpoint(body) if remat else body
    init = (Ws, bs, direct_zero_carries(cfg, task["xt"].shape[1]))
    (Ws, bs, _), hints = jax.lax.scan(body, init, (task["xt"], task["yt"]))
    cv = direct_predict_loss(cfg, Ws, bs, task["xe"], task["ye"])
    total = cfg.hint_weight * jnp.mean(hints) + cfg.cv_weight * cv
    return total, {"hint": jnp.mean(hints), "cv": cv}


@dataclass(frozen=True)
class DirectMetaStep:
    """The meta-step of :class:`MetaStep`, by hand: same sampling, loss, normalization, and
    Adam (``lr``, b1 0.9, b2 0.999, eps 1e-7) written out."""

    cfg: MetaConfig
    sample_task: Callable[[Any, Any], dict[str, Any]]  # family.sample: (key, data) -> task
    remat: bool = False  # inner steps under jax.checkpoint (the engine's default does this)

    def batch_loss(self, params: Any, priors: Any, tasks: dict[str, Any]) -> tuple[Any, dict]:
        losses, parts = jax.vmap(lambda pr, t: direct_task_loss(self.cfg, params, pr, t, self.remat))(priors, tasks)
        return jnp.mean(losses), {k: jnp.mean(v) for k, v in parts.items()}

    def init_opt(self, params: Any) -> Any:
        zeros = jnp.zeros_like(ravel_pytree(params)[0])
        return {"count": jnp.zeros((), jnp.int32), "mu": zeros, "nu": zeros}

    def __call__(self, params: Any, opt: Any, mask: Any, pool: Any, key: Any):
        k_pool, k_task = jax.random.split(key)
        n_pool = jax.tree_util.tree_leaves(pool)[0].shape[0]
        idx = jax.random.choice(k_pool, n_pool, (self.cfg.outer_batch,), replace=False)
        priors = jax.tree_util.tree_map(lambda a: a[idx], pool)
        tasks = jax.vmap(lambda k: self.sample_task(k, None))(jax.random.split(k_task, self.cfg.outer_batch))
        (loss, parts), grads = jax.value_and_grad(self.batch_loss, has_aux=True)(params, priors, tasks)
        # the update on the raveled parameters, as the engine's meta-step does it (one vector for
        # ~180 leaves: a few XLA kernels instead of ~1,500)
        p, unravel = ravel_pytree(params)
        g = ravel_pytree(grads)[0] * ravel_pytree(mask)[0]
        sizes = [x.size for x in jax.tree_util.tree_leaves(params)]
        leaf = np.repeat(np.arange(len(sizes)), sizes)
        g = g / (jnp.sqrt(jax.ops.segment_sum(g * g, leaf, num_segments=len(sizes))) + 1e-8)[leaf]
        finite = jnp.isfinite(loss) & jnp.all(jnp.isfinite(g))
        t = opt["count"] + 1
        mu = ADAM_B1 * opt["mu"] + (1 - ADAM_B1) * g
        nu = ADAM_B2 * opt["nu"] + (1 - ADAM_B2) * g * g
        tf = t.astype(jnp.float32)
        c1, c2 = 1 - ADAM_B1**tf, 1 - ADAM_B2**tf
        new = jnp.where(finite, p - self.cfg.lr * (mu / c1) / (jnp.sqrt(nu / c2) + ADAM_EPS), p)
        new_opt = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), {"count": t, "mu": mu, "nu": nu}, opt)
        return unravel(new), new_opt, {"loss": loss, **parts, "finite": finite}


# ---------------------------------------------------------------------------------------------
# setup


@dataclass
class Bench:
    cfg: MetaConfig
    prog: Program
    family: Any
    engine: MetaStep
    direct: DirectMetaStep
    params: Any
    mask: Any
    pool: Any
    opt: dict[str, Any]  # initial optimizer state per contender


def build(cfg: MetaConfig, seed: int, direct_remat: bool = False) -> Bench:
    spec = mplp_feedforward(cfg.sizes, cfg.activation, cfg.loss, msg=cfg.msg, hidden=cfg.hidden, sharing=cfg.sharing)
    prog = compile_graph(spec)
    family = task_family(cfg)
    key = jax.random.PRNGKey(seed)
    params = prog.init_params(key)

    def sample_round(k):
        kp, kt = jax.random.split(k)
        task = family.sample(kt)
        return agent_params(prog.spec, prog.init(kp, 1)), task["xt"], task["yt"]

    # non-trivial standardizer statistics (one init rollout, notes 3.3)
    params = init_statistics(prog, params, sample_round, jax.random.fold_in(key, 1), rounds=1, mix=1.0)
    # and distinct out_scales, so that swapping two learners' standardizers would show
    k_os = jax.random.fold_in(key, 2)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    leaves = []
    for n, (path, leaf) in enumerate(flat):
        if getattr(path[-1], "key", None) == "out_scale":
            leaf = leaf * jax.random.uniform(jax.random.fold_in(k_os, n), (), minval=0.5, maxval=2.0)
        leaves.append(leaf)
    params = jax.tree_util.tree_unflatten(treedef, leaves)
    _check_stats_nontrivial(params)
    opt_tx = adam(cfg.lr)
    engine = MetaStep(prog, family.sample, MetaLoss(cfg.hint_weight, cfg.cv_weight), cfg.outer_batch, opt_tx)
    direct = DirectMetaStep(cfg, family.sample, direct_remat)
    pool = make_pool(prog, jax.random.fold_in(key, 3), cfg.pool)
    return Bench(
        cfg, prog, family, engine, direct, params, trainable_mask(params), pool,
        {"engine": engine.init_opt_state(params), "direct": direct.init_opt(params)},
    )


def _check_stats_nontrivial(params: Any) -> None:
    for name, p in params.items():
        norm = p.get("norm")
        if norm is None:
            continue
        m, n = np.asarray(norm["in_mean"]), np.asarray(norm["in_norm"])
        if len(m) > 1 and (np.ptp(m) == 0.0 and np.ptp(n) == 0.0):
            sys.exit(f"meta_step_bench: standardizer of {name!r} has equal statistics on every channel; "
                     "the channel-order check would be void")


# ---------------------------------------------------------------------------------------------
# agreement


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-30)


def check_agreement(b: Bench, key: Any, steps: dict[str, Callable], grad_tol: float = GRAD_TOL) -> dict[str, float]:
    """Loss, gradient (to ``grad_tol``) and full-step agreement of engine and direct (see the module docstring).
    ``steps``: the jitted meta-steps. On accelerators everything is traced at matmul precision
    ``highest`` (on CPU that is the default, and the timed executables are reused)."""
    cfg = b.cfg
    k_pool, k_task = jax.random.split(key)
    idx = jax.random.choice(k_pool, cfg.pool, (cfg.outer_batch,), replace=False)
    priors = jax.tree_util.tree_map(lambda a: a[idx], b.pool)
    tasks = jax.vmap(b.family.sample)(jax.random.split(k_task, cfg.outer_batch))
    precise = contextlib.nullcontext() if jax.default_backend() == "cpu" else jax.default_matmul_precision("highest")
    with precise:
        vg_e = jax.jit(jax.value_and_grad(lambda p, pr, t: b.engine.batch_loss(p, {"priors": pr, "tasks": t}), has_aux=True))
        vg_d = jax.jit(jax.value_and_grad(b.direct.batch_loss, has_aux=True))
        (le, pe), ge = vg_e(b.params, priors, tasks)
        (ld, pd), gd = vg_d(b.params, priors, tasks)
        step_e = steps["engine"](b.params, b.opt["engine"], b.mask, b.pool, key)
        step_d = steps["direct"](b.params, b.opt["direct"], b.mask, b.pool, key)
    out = {
        "loss_engine": float(le),
        "loss_direct": float(ld),
        "loss_rel_diff": _rel(float(le), float(ld)),
        "hint_rel_diff": _rel(float(pe["hint"]), float(pd["hint"])),
        "cv_rel_diff": _rel(float(pe["cv"]), float(pd["cv"])),
    }
    # compare what the optimizer uses: gradients of the frozen statistics are masked out (an
    # engine may legitimately stop their gradient)
    ge = jax.tree_util.tree_map(jnp.multiply, ge, b.mask)
    gd = jax.tree_util.tree_map(jnp.multiply, gd, b.mask)
    worst, worst_leaf = 0.0, ""
    paths = jax.tree_util.tree_flatten_with_path(ge)[0]
    for (path, a), c in zip(paths, jax.tree_util.tree_leaves(gd)):
        a, c = np.asarray(a), np.asarray(c)
        scale = float(np.max(np.abs(a))) if a.size else 0.0
        err = float(np.max(np.abs(a - c))) / scale if scale > 0 else float(np.max(np.abs(c)))
        if not np.isfinite(err) or err > worst:
            worst, worst_leaf = err, jax.tree_util.keystr(path)
    out["grad_max_rel_diff"] = worst
    out["grad_worst_leaf"] = worst_leaf
    out["step_loss_rel_diff"] = _rel(float(step_e[2]["loss"]), float(step_d[2]["loss"]))
    out["step_param_max_diff"] = max(
        float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree_util.tree_leaves(step_e[0]), jax.tree_util.tree_leaves(step_d[0]))
    )
    failures = []
    for k in ("loss_rel_diff", "hint_rel_diff", "cv_rel_diff", "step_loss_rel_diff"):
        if not out[k] <= LOSS_RTOL:
            failures.append(f"{k} = {out[k]:.3g} > {LOSS_RTOL}")
    if not worst <= grad_tol:
        failures.append(f"meta-gradient differs by {worst:.3g} (relative, leaf {worst_leaf}) > {grad_tol}")
    if not out["step_param_max_diff"] <= 2 * cfg.lr:
        failures.append(f"parameters after one meta-step differ by {out['step_param_max_diff']:.3g} > 2 lr = {2 * cfg.lr}")
    if failures:
        sys.exit(
            f"meta_step_bench: {cfg.name}: the engine and the direct version disagree: " + "; ".join(failures)
            + ". The timings would compare different computations; fix the mismatch before benchmarking."
        )
    return out


# ---------------------------------------------------------------------------------------------
# HLO and memory


def _rss_kb(field: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def reset_peak_rss() -> bool:
    """Reset the process's peak RSS (VmHWM) where Linux allows it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    return _rss_kb("VmHWM") / 1024.0


_OP_RE = re.compile(r"=\s*[^=]*?\s([a-z][a-z0-9-]*)\(")
_COMP_RE = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
KINDS = ("fusion", "dot", "reduce", "copy", "transpose", "broadcast", "while", "convolution", "dynamic-update-slice", "dynamic-slice", "concatenate", "slice", "reshape")


def hlo_computations(text: str) -> dict[str, list[str]]:
    comps: dict[str, list[str]] = {}
    cur = None
    for line in text.splitlines():
        if cur is None:
            m = _COMP_RE.match(line)
            if m and "=" not in line.split("(")[0]:
                cur = ("ENTRY " if m.group(1) else "") + m.group(2)
                comps[cur] = []
            continue
        if line.startswith("}"):
            cur = None
            continue
        comps[cur].append(line.strip())
    return comps


def hlo_op_counts(text: str) -> dict[str, Any]:
    """Op counts of optimized HLO: ``kernel`` = instructions outside fused / applied
    computations (what runs as separate kernels: entry, while bodies and conditions);
    ``fused`` = instructions inside fusions."""
    comps = hlo_computations(text)
    fused, applied = set(), set()
    for lines in comps.values():
        for line in lines:
            for m in re.finditer(r"calls=%?([\w.\-]+)", line):
                fused.add(m.group(1))
            for m in re.finditer(r"to_apply=%?([\w.\-]+)", line):
                applied.add(m.group(1))
    kernel, inside = collections.Counter(), collections.Counter()
    for name, lines in comps.items():
        bare = name.replace("ENTRY ", "")
        if bare in applied:
            continue
        target = inside if bare in fused else kernel
        for line in lines:
            m = _OP_RE.search(line)
            if m and " = " in line:
                target[m.group(1)] += 1
    skip = ("parameter", "get-tuple-element", "tuple", "constant", "bitcast")
    return {
        "kernel_ops": sum(v for k, v in kernel.items() if k not in skip),
        "kernel": {k: kernel.get(k, 0) for k in KINDS},
        "fused_ops": sum(inside.values()),
        "fused": {k: inside.get(k, 0) for k in KINDS if k != "fusion"},
    }


def stablehlo_op_counts(text: str) -> dict[str, int]:
    counts = collections.Counter(re.findall(r"= (?:\"?)(stablehlo\.[a-z_]+|func\.call)", text))
    return dict(counts.most_common())


# ---------------------------------------------------------------------------------------------
# timing


def compile_stats(fn: Callable, args: tuple, hlo_dir: Path | None, stem: str) -> dict[str, Any]:
    """Lower and compile a fresh wrapper of ``fn`` (no cache is shared with other wrappers)."""
    wrapper = xla.jit(lambda *a: fn(*a))  # both contenders with the library's compile options
    reset_peak_rss()
    t0 = time.perf_counter()
    lowered = wrapper.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    pre = lowered.as_text()
    post = compiled.as_text()
    if hlo_dir is not None:
        hlo_dir.mkdir(parents=True, exist_ok=True)
        (hlo_dir / f"{stem}.stablehlo.mlir").write_text(pre)
        (hlo_dir / f"{stem}.opt.hlo").write_text(post)
    return {
        "lower_s": t1 - t0,
        "compile_s": t2 - t1,
        "compile_peak_rss_mb": peak_rss_mb(),
        "hlo_lines": len(pre.splitlines()),
        "opt_hlo_lines": len(post.splitlines()),
        "stablehlo_ops": stablehlo_op_counts(pre),
        "opt_hlo": hlo_op_counts(post),
    }


def repeated_compile_stats(calls: dict[str, tuple[Callable, tuple]], reps: int, hlo_dir: Path | None, prefix: str) -> dict[str, dict[str, Any]]:
    """:func:`compile_stats` of each ``name -> (fn, args)`` ``reps`` times on fresh wrappers, the
    order alternating per repetition (a machine's load drifts); ``lower_s`` / ``compile_s`` are the
    minimum, ``*_all`` every measurement. HLO text is written on the first repetition only."""
    comp: dict[str, dict[str, Any]] = {}
    names = list(calls)
    for rep in range(reps):
        for k in names[::-1] if rep % 2 == 0 else names:
            fn, args = calls[k]
            c = compile_stats(fn, args, hlo_dir if rep == 0 else None, f"{prefix}{k}")
            if k not in comp:
                comp[k] = {**c, "lower_s_all": [], "compile_s_all": []}
            comp[k]["lower_s_all"].append(round(c["lower_s"], 3))
            comp[k]["compile_s_all"].append(round(c["compile_s"], 3))
            comp[k]["lower_s"] = min(comp[k]["lower_s"], c["lower_s"])
            comp[k]["compile_s"] = min(comp[k]["compile_s"], c["compile_s"])
    return comp


def time_loop(fn: Callable, state: tuple, fixed: tuple, keys: list, n: int) -> float:
    """Mean ms per meta-step over ``n`` steps, feeding params and optimizer state back in."""
    params, opt = state
    t0 = time.perf_counter()
    for i in range(n):
        params, opt, _ = fn(params, opt, *fixed, keys[i % len(keys)])
    jax.block_until_ready((params, opt))
    return (time.perf_counter() - t0) * 1e3 / n


def interleaved(fns: dict[str, Callable], states: dict[str, tuple], fixed: tuple, keys: list, rounds: int, iters: int) -> dict[str, list[float]]:
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        order = round_order(names, r)
        for k in order:
            times[k].append(time_loop(fns[k], states[k], fixed, keys, iters))
    return times


def compare_variants(cfg: MetaConfig, variants: dict[str, tuple[Callable, Any, Any]], fixed: tuple, seed: int, rounds: int, iters: int, ratio_key: str) -> dict[str, Any]:
    """Variants of one meta-step, ``name -> (jitted step, params, opt_state)``, the first the
    baseline: each is called once (first-call time; its loss and new parameters checked against
    the baseline's: loss to 1e-5 relative, parameters to ``2 * lr``, else exit), then timed in
    interleaved rounds. ``fixed``: (mask, pool)."""
    key = jax.random.PRNGKey(seed + 1)
    first, check = {}, {}
    for name, (fn, params, opt) in variants.items():
        t0 = time.perf_counter()
        p1, _, aux = fn(params, opt, *fixed, key)
        jax.block_until_ready(p1)
        first[name] = round(time.perf_counter() - t0, 2)
        check[name] = (float(aux["loss"]), p1)
        print(f"{name}: first call {first[name]} s, loss {check[name][0]:.6f}", flush=True)
    base = next(iter(variants))
    l0, p0 = check[base]
    agreement = {}
    for name, (loss, p1) in check.items():
        diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p0), strict=True))
        agreement[name] = {"loss_rel_diff": abs(loss - l0) / abs(l0), "param_max_diff": diff}
        if abs(loss - l0) > 1e-5 * abs(l0) or diff > 2 * cfg.lr:
            raise SystemExit(f"{name} disagrees with {base}: {agreement[name]}")
    keys = [jax.random.fold_in(key, i) for i in range(4)]
    fns = {k: v[0] for k, v in variants.items()}
    states = {k: (v[1], v[2]) for k, v in variants.items()}
    with exclusive_device():  # one process at a time on a shared accelerator ($MPLP_BENCH_LOCK)
        times = interleaved(fns, states, fixed, keys, rounds, iters)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {
        "config": {"name": cfg.name, "sizes": list(cfg.sizes), "inner_steps": cfg.inner_steps, "batch": cfg.batch, "outer_batch": cfg.outer_batch},
        "ms_median": {k: round(v, 1) for k, v in med.items()},
        ratio_key: {k: round(v / med[base], 3) for k, v in med.items()},
        "ms_rounds": {k: [round(x, 1) for x in v] for k, v in times.items()},
        "first_call_s": first,
        "agreement": agreement,
    }


# ---------------------------------------------------------------------------------------------
# results file (same format as step_bench.json)


# ---------------------------------------------------------------------------------------------


def parse_note(text: str) -> tuple[str, Any]:
    """``KEY`` -> (KEY, True); ``KEY=VALUE`` -> (KEY, VALUE parsed as JSON, else the string)."""
    if "=" not in text:
        return text, True
    k, v = text.split("=", 1)
    try:
        return k, json.loads(v)
    except json.JSONDecodeError:
        return k, v


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (default 7)")
    p.add_argument("--iters", type=int, default=None,
                   help="meta-steps per contender per round (default: 20 for sinusoid, 5 for mnist)")
    p.add_argument("--quick", action="store_true", help="smoke run: 3 rounds of 3 meta-steps")
    p.add_argument("--config", choices=[c.name for c in ALL_CONFIGS], action="append", help="only this config (repeatable)")
    p.add_argument("--scaling", action="store_true",
                   help="add the scaling sweep: (144|784, 50|100|200, 10) MNIST-shaped configs, 1 meta-step per round")
    p.add_argument("--note", action="append", default=[], metavar="KEY[=VALUE]",
                   help="extra top-level JSON entry, e.g. --note background_load (-> true) or --note 'load=2.9'")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results JSON (default {DEFAULT_OUT.relative_to(ROOT)})")
    p.add_argument("--hlo", type=Path, default=None, help="write StableHLO and optimized HLO text into this folder")
    p.add_argument("--compile-reps", type=int, default=2,
                   help="separate .lower()/.compile() measurements per contender, order alternating (default 2; min reported)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grad-tol", type=float, default=GRAD_TOL,
                   help=f"meta-gradient agreement per leaf, relative to its largest entry (default {GRAD_TOL}; float32 "
                   "rounding over 20 inner steps of a wider net reaches ~1e-4: the scaling sweep uses 1e-3)")
    p.add_argument("--engine-only", action="store_true",
                   help="time the engine alone (no hand-written contender, no agreement check): for sizes where the direct version does not fit in memory")
    p.add_argument("--direct-remat", action="store_true",
                   help="the hand-written version's inner steps under jax.checkpoint, as the engine's (its memory then fits at (784, 100) and (784, 200))")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.iters, args.compile_reps = 3, 3, 1
    for name in ("rounds", "iters", "compile_reps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    try:
        args.notes = dict(parse_note(n) for n in args.note)
    except ValueError:
        p.error("--note takes KEY or KEY=VALUE")
    return args


def bench_config(cfg: MetaConfig, args: argparse.Namespace) -> dict[str, Any]:
    t_setup = time.perf_counter()
    b = build(cfg, args.seed, args.direct_remat)
    key = jax.random.PRNGKey(args.seed + 100)
    setup_s = time.perf_counter() - t_setup
    fns = {"engine": b.engine.__call__, "direct": b.direct.__call__}
    if args.engine_only:  # the hand-written version does not fit in memory at the largest sizes
        del fns["direct"]
    states = {k: (b.params, b.opt[k]) for k in fns}
    fixed = (b.mask, b.pool)
    iters = args.iters or cfg.iters
    keys = [jax.random.fold_in(key, i) for i in range(iters)]

    # first call: trace + lower + compile + run, on the jitted function that is timed below
    jitted, first = {}, {}
    for k, fn in fns.items():
        jitted[k] = xla.jit(fn)
        reset_peak_rss()
        t0 = time.perf_counter()
        jax.block_until_ready(jitted[k](*states[k], *fixed, keys[0]))
        first[k] = {"first_call_s": time.perf_counter() - t0, "first_call_peak_rss_mb": peak_rss_mb()}
    # .lower() / .compile() on fresh wrappers (the first call above always ran the engine first)
    comp = repeated_compile_stats({k: (fns[k], (*states[k], *fixed, keys[0])) for k in fns}, args.compile_reps, args.hlo, f"{cfg.name}_")
    agree = None if args.engine_only else check_agreement(b, jax.random.fold_in(key, 12345), jitted, args.grad_tol)
    if agree is not None:
        print(
            f"{cfg.name}: engine and direct agree: meta-loss {agree['loss_rel_diff']:.2e} (rel), meta-gradient "
            f"{agree['grad_max_rel_diff']:.2e} (rel per leaf, worst {agree['grad_worst_leaf']}), params after one step "
            f"{agree['step_param_max_diff']:.2e}",
            flush=True,
        )
    with exclusive_device() as lock_wait_s:  # one process at a time on a shared accelerator ($MPLP_BENCH_LOCK)
        times = interleaved(jitted, states, fixed, keys, args.rounds, iters)
    med = {k: float(np.median(v)) for k, v in times.items()}
    direct = "direct" in med
    row = {
        "name": f"{cfg.name}_meta_step",
        "engine_ms": round(med["engine"], 3),
        "direct_ms": round(med["direct"], 3) if direct else None,
        "ratio": round(med["engine"] / med["direct"], 3) if direct else None,
        "compile_s": round(first["engine"]["first_call_s"], 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),  # whole process so far
        "device_peak_mib": device_peak_mib(),  # accelerator memory, whole process so far (None on the CPU)
        "lock_wait_s": round(lock_wait_s, 1),
        "direct_compile_s": round(first["direct"]["first_call_s"], 3) if direct else None,
        "direct_remat": args.direct_remat if direct else None,
        "unit": (f"ms per meta-step (outer batch {cfg.outer_batch}, {cfg.inner_steps} inner steps of batch {cfg.batch}, "
                 f"CV on {cfg.cv_points} points, grad + Adam)"),
        "config": {
            "sizes": list(cfg.sizes), "activation": cfg.activation, "loss": cfg.loss, "msg": cfg.msg, "hidden": cfg.hidden,
            "sharing": cfg.sharing, "inner_steps": cfg.inner_steps, "batch": cfg.batch, "outer_batch": cfg.outer_batch,
            "cv_points": cfg.cv_points, "lr": cfg.lr, "pool": cfg.pool, "task": cfg.task,
            "hint_weight": cfg.hint_weight, "cv_weight": cfg.cv_weight,
        },
        "rounds": args.rounds,
        "iters": iters,
        "setup_s": round(setup_s, 3),
        "agreement": agree,
        "engine_ms_rounds": [round(t, 3) for t in times["engine"]],
        "direct_ms_rounds": [round(t, 3) for t in times["direct"]] if direct else None,
    }
    for k in fns:
        c = comp[k]
        row[k] = {
            "first_call_s": round(first[k]["first_call_s"], 3),
            "lower_s": round(c["lower_s"], 3),  # min over --compile-reps
            "compile_s": round(c["compile_s"], 3),
            "lower_s_all": c["lower_s_all"],
            "compile_s_all": c["compile_s_all"],
            "first_call_peak_rss_mb": round(first[k]["first_call_peak_rss_mb"], 1),
            "compile_peak_rss_mb": round(c["compile_peak_rss_mb"], 1),
            "hlo_lines": c["hlo_lines"],
            "opt_hlo_lines": c["opt_hlo_lines"],
            "opt_hlo": c["opt_hlo"],
            "stablehlo_ops": c["stablehlo_ops"],
        }
    print(
        f"  {row['name']:<20} engine {med['engine']:9.2f} ms"
        + (f"  direct {med['direct']:9.2f} ms  ratio {row['ratio']:6.3f}\n" if direct else "  (engine only)\n")
        + "".join(
            f"  {k:<7} first call {row[k]['first_call_s']:6.2f}s  lower {row[k]['lower_s']:5.2f}s  compile "
            f"{row[k]['compile_s']:6.2f}s  HLO {row[k]['hlo_lines']:6d} lines (optimized {row[k]['opt_hlo_lines']}, "
            f"{row[k]['opt_hlo']['kernel_ops']} kernel ops)  peak RSS {row[k]['first_call_peak_rss_mb']:.0f} MB\n"
            for k in fns
        ),
        end="",
        flush=True,
    )
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # --config names pick configs; without it the default pair runs; --scaling adds the sweep
    picked = [c for c in ALL_CONFIGS if c.name in args.config] if args.config else list(CONFIGS)
    cfgs = picked + [c for c in SCALING if args.scaling and c not in picked]
    rows: list[dict[str, Any]] = []
    result = {
        "machine": machine_line(),
        "jax": jax.__version__,
        "devices": [f"{d.platform}:{d.id}" for d in jax.devices()],
        "command": " ".join(["python benchmarks/meta_step_bench.py", *(sys.argv[1:] if argv is None else argv)]),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "date": datetime.date.today().isoformat(),
        **args.notes,
        "settings": {"rounds": args.rounds, "iters": args.iters, "compile_reps": args.compile_reps, "seed": args.seed, "quick": args.quick, "grad_tol": args.grad_tol,
                     "scaling": args.scaling},
        "rows": rows,
        "complete": False,
    }
    for cfg in cfgs:  # the file is rewritten after every config: an interrupted sweep keeps its rows
        rows.append(bench_config(cfg, args))
        result["complete"] = len(rows) == len(cfgs)
        write_json_atomic(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
