"""Benchmark: the MAML experiment's meta-steps (experiments/maml/run.py), the engine's MAML step
vs the same meta-step written by hand, and the engine's MAML+MPLP step.

Everything is built the way ``experiments/maml/run.py`` builds it (its ``Settings``,
``programs``, ``initial``, ``step_fn``; imported from the file), so the timed steps are the
experiment's own: net (1, 20, 20, 1) relu, L2, 2 inner steps of batch 10, CV on 20 points, outer
batch 4, Adam 1e-4 (eps 1e-7) after per-leaf gradient normalization. The keys are the
experiment's training keys (``fold_in(PRNGKey(seed + 2), step)``), so the first timed call is the
experiment's first meta-step. Contenders:

* ``maml``: the engine's :class:`mplp_graph.meta.maml.MamlStep` (method ``maml``): the prior alone,
  2 inner SGD(0.05) steps on the forward-only program, second-order meta-gradient of the mean CV
  loss over the outer batch, :func:`mplp_graph.meta.step.outer_update` (mask, per-leaf
  normalization, Adam, finiteness guard, on the raveled parameters).
* ``maml_direct``: the same meta-step in plain jax.numpy: the MLP as explicit arrays
  ``W0, W1, W2, b0, b1, b2`` (read from the engine's prior pytree ``{"W<l>": {"w"}, "b<l>": {"b"}}``),
  forward ``h @ W + b`` with relu between layers, loss ``mean 0.5 (y - yhat)^2``, 2 unrolled SGD
  steps with ``jax.grad`` of that loss, mean CV loss over the tasks (vmapped), ``jax.grad`` through
  it all; then the outer update written out per array: mask, ``g / (||g||_2 + 1e-8)``, Adam
  (b1 0.9, b2 0.999, eps 1e-7, bias-corrected), the same finiteness guard. Nothing of the
  engine's loss, gradient or optimizer is reused; only the task sampling is shared
  (:func:`sample_tasks`: ``family.sample`` over ``split(key, outer_batch)``, the keys of the engine's
  ``StepFunction.sample_tasks``, so both see the same tasks).
* ``mplp_faithful``: the engine's :class:`mplp_graph.meta.maml.JointStep` (method ``faithful``:
  learner and prior meta-trained, the message MLPs g frozen by the mask), 2 MPLP inner steps.
  Engine only: there is no hand-written MAML+MPLP version here (the hand-written MPLP inner loop
  is meta_step_bench's direct version); its row has ``direct_ms: null`` and ``vs_maml``, its time
  over the engine's plain MAML step.
* ``full`` (method ``full``: g trained too) is not timed: ``step_fn`` builds the very same
  ``JointStep`` for it, and the mask is an argument of the compiled meta-step, so ``full`` runs
  the same compiled program as ``faithful`` with other mask values (the update of a masked
  entry is computed and multiplied by zero either way).

Before any timing the benchmark checks, on one outer batch, that ``maml`` and ``maml_direct``
agree: meta-loss to 1e-5 relative, meta-gradient to 1e-4 (per array, relative to its largest
entry), and after one full meta-step the loss to 1e-5 relative and the new parameters to
``2 * lr`` (Adam's first step moves every entry by about ``lr * sign(g)``); it exits non-zero
otherwise.

Per contender: the first call's wall time (trace + lower + compile + run) of
``mplp_graph.xla.jit(step.__call__)``, the jitted function that is then timed (the row's
``compile_s`` / ``direct_compile_s``); ``.lower()`` and ``.compile()`` measured separately on fresh
wrappers (``--compile-reps`` times, the order alternating; the minimum is reported); peak RSS
(VmHWM, reset before each first call: ``peak_rss_mb`` / ``direct_peak_rss_mb`` are the process's
peak during that first call, so they include what the process held before it,
``first_call_rss_before_mb``; the difference is ``first_call_rss_increase_mb``. The contenders'
first calls run one after another in one process, and memory a call took is mostly not given back,
so a later contender's peak starts from the earlier ones' leftovers; ``compile_peak_rss_mb``, taken
after all first calls, mostly shows that level); HLO sizes and op counts; then the median ms per
meta-step over ``--rounds`` interleaved rounds (the order rotates every round) of ``--iters`` meta-steps each
(``--maml-iters`` for the two MAML contenders: their step takes well under a millisecond on the
CPU, so 20 of them make a round of a few ms, which the load of a shared 2-core machine swamps;
in a first run with 20 the rounds ranged from 0.22 to 0.70 ms per step), params and optimizer
state fed back in. The timed rounds run inside
``bench_common.exclusive_device()`` (the lock named by ``$MPLP_BENCH_LOCK``, if set; the wait is
recorded as ``lock_wait_s``). Rows use meta_step_bench's keys, so run_all's table prints them
the same way.

Run: ``python benchmarks/maml_bench.py`` (writes ``benchmarks/results/maml_bench.json``);
``--quick`` for a smoke run (3 rounds of 3 meta-steps, 30 for MAML; one compile measurement);
``--only maml`` to skip the MAML+MPLP step; ``--note TEXT`` to mark a run (e.g. made on a busy
machine); ``--hlo DIR`` to dump the HLO text.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import os
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import meta_step_bench as msb
from bench_common import _git, exclusive_device, result_header, round_order, write_json_atomic

from mplp_graph import xla
from mplp_graph.meta.step import ADAM_EPS

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "maml_bench.json"
EXPERIMENT = ROOT / "experiments" / "maml" / "run.py"
LOSS_RTOL = 1e-5  # meta-loss agreement (relative)
GRAD_TOL = 1e-4  # meta-gradient agreement (per array, relative to its largest entry)
ADAM_B1, ADAM_B2 = 0.9, 0.999
CONTENDERS = ("maml", "maml_direct", "mplp_faithful")
MAML_ITERS = 400  # meta-steps per round of the sub-millisecond MAML steps


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


# ---------------------------------------------------------------------------------------------
# the direct version


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


# ---------------------------------------------------------------------------------------------
# setup


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


# ---------------------------------------------------------------------------------------------
# agreement


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-30)


def check_agreement(s: Any, c: dict[str, Contender], family: Any, key: Any, steps: dict[str, Callable] | None = None) -> dict[str, Any]:
    """Meta-loss, meta-gradient and one full meta-step of ``maml`` vs ``maml_direct`` (tolerances
    in the module docstring); exits with a message when they disagree. ``steps``: the jitted
    meta-steps to use for the full step (default: jit them here)."""
    n_layers = len(s.sizes) - 1
    engine, direct = c["maml"], c["maml_direct"]
    lr = direct.step.lr
    steps = steps or {k: xla.jit(c[k].fn) for k in ("maml", "maml_direct")}
    tasks = sample_tasks(family.sample, key, s.outer_batch)
    precise = contextlib.nullcontext() if jax.default_backend() == "cpu" else jax.default_matmul_precision("highest")
    with precise:
        (le, _), ge = jax.jit(jax.value_and_grad(engine.step.batch_loss, has_aux=True))(engine.params, {"priors": None, "tasks": tasks})
        ld, gd = jax.jit(jax.value_and_grad(direct.step.batch_loss))(direct.params, tasks)
        pe, _, ae = steps["maml"](engine.params, engine.opt, engine.mask, engine.pool, key)
        pd, _, ad = steps["maml_direct"](direct.params, direct.opt, direct.mask, direct.pool, key)
    ge = direct_net(ge, n_layers)
    worst, worst_leaf = 0.0, ""
    for k in sorted(gd):
        a, b = np.asarray(ge[k]), np.asarray(gd[k])
        scale = float(np.max(np.abs(a)))
        err = float(np.max(np.abs(a - b))) / scale if scale > 0 else float(np.max(np.abs(b)))
        if not np.isfinite(err) or err > worst:
            worst, worst_leaf = err, k
    pe = direct_net(pe, n_layers)
    out = {
        "loss_engine": float(le),
        "loss_direct": float(ld),
        "loss_rel_diff": _rel(float(le), float(ld)),
        "grad_max_rel_diff": worst,
        "grad_worst_leaf": worst_leaf,
        "step_loss_rel_diff": _rel(float(ae["loss"]), float(ad["loss"])),
        "step_param_max_diff": max(float(jnp.max(jnp.abs(pe[k] - pd[k]))) for k in pd),
        "step_param_tol": 2 * lr,
    }
    failures = [f"{k} = {out[k]:.3g} > {LOSS_RTOL}" for k in ("loss_rel_diff", "step_loss_rel_diff") if not out[k] <= LOSS_RTOL]
    if not worst <= GRAD_TOL:
        failures.append(f"meta-gradient differs by {worst:.3g} (relative, {worst_leaf}) > {GRAD_TOL}")
    if not out["step_param_max_diff"] <= 2 * lr:
        failures.append(f"parameters after one meta-step differ by {out['step_param_max_diff']:.3g} > 2 lr = {2 * lr}")
    if failures:
        sys.exit(
            "maml_bench: the engine's MAML step and the direct version disagree: " + "; ".join(failures)
            + ". The timings would compare different computations; fix the mismatch before benchmarking."
        )
    return out


# ---------------------------------------------------------------------------------------------
# measurement


def interleaved(fns: dict[str, Callable], states: dict[str, tuple], keys: list, rounds: int, iters: dict[str, int]) -> dict[str, list[float]]:
    """meta_step_bench's ``interleaved`` with a meta-step count per contender: ``rounds`` rounds,
    the order rotating every round, each contender timed by ``meta_step_bench.time_loop``
    (``fn(params, opt_state, key)``, ms per meta-step)."""
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for k in round_order(names, r):
            times[k].append(msb.time_loop(fns[k], states[k], (), keys, iters[k]))
    return times


def _bind(fn: Callable, con: Contender) -> Callable:
    """``fn`` with the contender's mask and pool bound: ``(params, opt_state, key)``."""
    return lambda params, opt, key: fn(params, opt, con.mask, con.pool, key)


def _rss_mb() -> float:
    return msb._rss_kb("VmRSS") / 1024.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (default 7)")
    p.add_argument("--iters", type=int, default=20, help="meta-steps of mplp_faithful per round (default 20)")
    p.add_argument("--maml-iters", type=int, default=MAML_ITERS,
                   help=f"meta-steps of maml and maml_direct per round (default {MAML_ITERS}: their step is sub-millisecond on the CPU)")
    p.add_argument("--compile-reps", type=int, default=1,
                   help="separate .lower()/.compile() measurements per contender, order alternating (default 1; min reported)")
    p.add_argument("--quick", action="store_true", help="smoke run: 3 rounds of 3 meta-steps (30 for MAML), one compile measurement")
    p.add_argument("--only", nargs="+", choices=["maml", "mplp_faithful"], default=["maml", "mplp_faithful"],
                   help="rows to measure (maml: the engine and the direct version; mplp_faithful: the engine)")
    p.add_argument("--seed", type=int, default=None, help="the experiment's seed (default: its Settings.seed)")
    p.add_argument("--note", default="", help="free text stored as 'note' (e.g. other load on the machine)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results JSON (default {DEFAULT_OUT.relative_to(ROOT)})")
    p.add_argument("--hlo", type=Path, default=None, help="write StableHLO and optimized HLO text into this folder")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.iters, args.maml_iters, args.compile_reps = 3, 3, 30, 1
    for name in ("rounds", "iters", "maml_iters", "compile_reps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def _engine_stats(first: dict[str, float], comp: dict[str, Any]) -> dict[str, Any]:
    return {
        "first_call_s": round(first["first_call_s"], 3),
        "lower_s": round(comp["lower_s"], 3),  # min over --compile-reps
        "compile_s": round(comp["compile_s"], 3),
        "lower_s_all": comp["lower_s_all"],
        "compile_s_all": comp["compile_s_all"],
        "first_call_peak_rss_mb": round(first["first_call_peak_rss_mb"], 1),
        "first_call_rss_before_mb": round(first["first_call_rss_before_mb"], 1),
        "first_call_rss_increase_mb": round(first["first_call_peak_rss_mb"] - first["first_call_rss_before_mb"], 1),
        "peak_rss_reset": first["peak_rss_reset"],  # False: VmHWM could not be reset, the peaks are the process's so far
        "compile_peak_rss_mb": round(comp["compile_peak_rss_mb"], 1),
        "hlo_lines": comp["hlo_lines"],
        "opt_hlo_lines": comp["opt_hlo_lines"],
        "opt_hlo": comp["opt_hlo"],
        "stablehlo_ops": comp["stablehlo_ops"],
    }


def bench(args: argparse.Namespace) -> dict[str, Any]:
    loadavg_start = list(os.getloadavg())  # 1, 5, 15 min: other load on the machine
    run = load_experiment()
    s = run.Settings() if args.seed is None else run.Settings(seed=args.seed)
    only = (("maml", "maml_direct") if "maml" in args.only else ()) + (("mplp_faithful",) if "mplp_faithful" in args.only else ())
    t0 = time.perf_counter()
    c, family = build(s, only)
    setup_s = time.perf_counter() - t0
    train_key = jax.random.PRNGKey(s.seed + 2)  # the experiment's meta-training key
    iters = {k: args.maml_iters if k.startswith("maml") else args.iters for k in c}
    keys = [jax.random.fold_in(train_key, i) for i in range(max(iters.values()))]  # the experiment's first steps' keys

    # first call: trace + lower + compile + run, on the jitted function that is timed below
    jitted, first, first_loss = {}, {}, {}
    for k, con in c.items():
        jitted[k] = xla.jit(con.fn)
        rss_before = _rss_mb()
        reset = msb.reset_peak_rss()
        t0 = time.perf_counter()
        out = jax.block_until_ready(jitted[k](con.params, con.opt, con.mask, con.pool, keys[0]))
        first[k] = {"first_call_s": time.perf_counter() - t0, "first_call_peak_rss_mb": msb.peak_rss_mb(),
                    "first_call_rss_before_mb": rss_before, "peak_rss_reset": reset}
        first_loss[k] = float(out[2]["loss"])
        print(f"{k}: first call {first[k]['first_call_s']:.2f} s, meta-loss {first_loss[k]:.6f}", flush=True)
        if not np.isfinite(first_loss[k]):
            sys.exit(f"maml_bench: {k}: non-finite meta-loss on the first meta-step")
    # .lower() / .compile() on fresh wrappers, the order alternating per repetition
    calls = {k: (con.fn, (con.params, con.opt, con.mask, con.pool, keys[0])) for k, con in c.items()}
    comp = msb.repeated_compile_stats(calls, args.compile_reps, args.hlo, "maml_")
    agree = None
    if "maml" in c and "maml_direct" in c:
        agree = check_agreement(s, c, family, jax.random.fold_in(train_key, 12345), jitted)
        print(
            f"maml: engine and direct agree: meta-loss {agree['loss_rel_diff']:.2e} (rel), meta-gradient "
            f"{agree['grad_max_rel_diff']:.2e} (rel per array, worst {agree['grad_worst_leaf']}), step loss "
            f"{agree['step_loss_rel_diff']:.2e}, params after one step {agree['step_param_max_diff']:.2e} (tol {agree['step_param_tol']:.0e})",
            flush=True,
        )

    # each contender with its own mask (and no pool) bound: interleaved calls fn(params, opt, key)
    fns = {k: _bind(jitted[k], c[k]) for k in c}
    states = {k: (c[k].params, c[k].opt) for k in c}
    with exclusive_device() as lock_wait_s:
        t0 = time.perf_counter()
        times = interleaved(fns, states, keys, args.rounds, iters)
        timed_s = time.perf_counter() - t0
    med = {k: float(np.median(v)) for k, v in times.items()}

    unit = (f"ms per meta-step (outer batch {s.outer_batch}, {s.inner_steps} inner steps of batch {s.batch}, "
            f"CV on {s.cv_points} points, grad + Adam)")
    config = {"sizes": list(s.sizes), "inner_steps": s.inner_steps, "batch": s.batch, "cv_points": s.cv_points,
              "outer_batch": s.outer_batch, "lr": run.METHODS["maml"].lr or s.lr, "seed": s.seed}
    common = {"rounds": args.rounds, "setup_s": round(setup_s, 3), "lock_wait_s": round(lock_wait_s, 3)}
    rows: list[dict[str, Any]] = []
    if "maml" in c:
        direct = "maml_direct" in c
        rows.append({
            "name": "maml_meta_step",
            "engine_ms": round(med["maml"], 3),
            "direct_ms": round(med["maml_direct"], 3) if direct else None,
            "ratio": round(med["maml"] / med["maml_direct"], 3) if direct else None,
            "compile_s": round(first["maml"]["first_call_s"], 3),
            "direct_compile_s": round(first["maml_direct"]["first_call_s"], 3) if direct else None,
            "peak_rss_mb": round(first["maml"]["first_call_peak_rss_mb"], 1),
            "direct_peak_rss_mb": round(first["maml_direct"]["first_call_peak_rss_mb"], 1) if direct else None,
            "unit": unit + f"; MAML: inner SGD({s.maml_inner_lr}), second order",
            "config": {**config, "method": "maml", "inner_lr": s.maml_inner_lr},
            **common,
            "iters": iters["maml"],
            "agreement": agree,
            "engine_ms_rounds": [round(t, 3) for t in times["maml"]],
            "direct_ms_rounds": [round(t, 3) for t in times["maml_direct"]] if direct else None,
            "engine": _engine_stats(first["maml"], comp["maml"]),
            **({"direct": _engine_stats(first["maml_direct"], comp["maml_direct"])} if direct else {}),
        })
    if "mplp_faithful" in c:
        rows.append({
            "name": "maml_mplp_faithful_meta_step",
            "engine_ms": round(med["mplp_faithful"], 3),
            "direct_ms": None,
            "ratio": None,
            "compile_s": round(first["mplp_faithful"]["first_call_s"], 3),
            "direct_compile_s": None,
            "peak_rss_mb": round(first["mplp_faithful"]["first_call_peak_rss_mb"], 1),
            "direct_peak_rss_mb": None,
            "unit": unit + f"; MAML+MPLP: {s.inner_steps} MPLP steps (msg {s.msg}), learner + prior trained, g frozen",
            "config": {**config, "method": "faithful", "msg": s.msg, "stats_rounds": s.stats_rounds},
            **common,
            "iters": iters["mplp_faithful"],
            "engine_only": "no hand-written MAML+MPLP version (the MPLP inner loop by hand is meta_step_bench's direct version); "
                           "method 'full' runs the same compiled program (the mask is an argument)",
            "vs_maml": round(med["mplp_faithful"] / med["maml"], 3) if "maml" in med else None,
            "first_meta_loss": first_loss["mplp_faithful"],
            "engine_ms_rounds": [round(t, 3) for t in times["mplp_faithful"]],
            "direct_ms_rounds": None,
            "engine": _engine_stats(first["mplp_faithful"], comp["mplp_faithful"]),
        })
    for r in rows:
        e = r["engine"]
        line = f"  {r['name']:<30} engine {r['engine_ms']:9.3f} ms"
        line += f"  direct {r['direct_ms']:9.3f} ms  ratio {r['ratio']:6.3f}" if r["direct_ms"] is not None else "  (engine only, no direct version)"
        line += (f"\n  {'':<30} engine first call {e['first_call_s']:.2f} s (lower {e['lower_s']:.2f} s, XLA compile {e['compile_s']:.2f} s), "
                 f"peak RSS {r['peak_rss_mb']:.0f} MB")
        if "direct" in r:
            d = r["direct"]
            line += (f"\n  {'':<30} direct first call {d['first_call_s']:.2f} s (lower {d['lower_s']:.2f} s, XLA compile {d['compile_s']:.2f} s), "
                     f"peak RSS {r['direct_peak_rss_mb']:.0f} MB")
        print(line, flush=True)
    print(f"timed section: {timed_s:.1f} s (lock wait {lock_wait_s:.1f} s)", flush=True)
    return {
        "rows": rows,
        "loadavg": {"start": loadavg_start, "end": list(os.getloadavg())},
        "settings_experiment": {k: v for k, v in dataclasses.asdict(s).items() if k not in ("mplp_steps", "maml_steps")},
        "timed_s": round(timed_s, 2),
        "process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    res = bench(args)
    result = {
        **result_header("maml_bench", argv, args.note),
        "devices": [f"{d.platform}:{d.id}" for d in jax.devices()],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "loadavg": res["loadavg"],
        "settings": {"rounds": args.rounds, "iters": args.iters, "maml_iters": args.maml_iters, "compile_reps": args.compile_reps,
                     "quick": args.quick, "only": args.only, "seed": args.seed, "experiment": res["settings_experiment"]},
        "timed_s": res["timed_s"],
        "process_peak_rss_mb": res["process_peak_rss_mb"],
        "rows": res["rows"],
        "complete": True,
    }
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
