"""Benchmark: one compiled backprop step of the engine vs the same step written by hand.

Two nets, both from ``mg.feedforward`` with ``protocol="backprop"``:

* ``mnist``: (144, 50, 10), sigmoid hidden, softmax + CE, lr 0.1, batch 8 (paper section 4.2);
* ``sinusoid``: (1, 20, 20, 1), relu hidden, L2, lr 0.05, batch 10 (paper section 4.1).

Each engine step is compared with two direct jax.numpy versions of the same computation:

* ``manual``: forward, softmax, loss and a hand-written chain-rule backward that follows the
  engine's arrows (``ce_grad = -t / clip(p)``, softmax Jacobian ``p * (g - sum_k p_k g_k)``,
  update ``w -= lr * mean_b(x_i g_j)``, backward through the pre-update weights). Before any
  timing the benchmark checks that it gives the engine's parameters to 1e-5 and stops if not.
* ``jaxgrad``: ``jax.grad`` of the batch-mean loss followed by SGD (also checked to 1e-5).

Each is timed as a single jitted step (the state fed back in, as a training loop does) and as a
``jax.lax.scan`` over 20 steps inside one jit (the way meta-training runs the inner loop).
Contenders are timed in interleaved rounds (the order rotates every round) so that machine noise
hits all of them; rows report the median over rounds. Results go to
``benchmarks/results/step_bench.json`` (format: ``/docs/results.md`` of the shared docs).

Run: ``python benchmarks/step_bench.py`` (``--quick`` for a smoke run, ``--hlo DIR`` to dump
optimized HLO of every jitted function and print op counts).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import re
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import mplp_graph as mg
from mplp_graph import xla
from mplp_graph.ops.builtin import CE_CLIP
from bench_common import _git, machine_line, round_order, write_json_atomic  # noqa: E402  (benchmarks/ is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "step_bench.json"
SCAN_STEPS = 20  # inner steps per meta-training step on MNIST (paper section 4.2)
TOL = 1e-5  # parameter agreement required before timing


# ---------------------------------------------------------------------------------------------
# the nets


@dataclass(frozen=True)
class NetConfig:
    name: str
    sizes: tuple[int, ...]
    activation: str
    loss: str
    lr: float
    batch: int


NETS = (
    NetConfig("mnist_144_50_10", (144, 50, 10), "sigmoid", "ce", 0.1, 8),
    NetConfig("sinusoid_1_20_20_1", (1, 20, 20, 1), "relu", "l2", 0.05, 10),
)


def make_batches(cfg: NetConfig, key: Any, n: int) -> dict[str, Any]:
    """``n`` batches stacked on a leading axis: x (n, B, n_in), y (n, B, n_out)."""
    kx, ky, ka, kp = jax.random.split(key, 4)
    n_in, n_out = cfg.sizes[0], cfg.sizes[-1]
    if cfg.loss == "ce":
        x = jax.random.normal(kx, (n, cfg.batch, n_in))  # standardized pixels
        labels = jax.random.randint(ky, (n, cfg.batch), 0, n_out)
        y = jax.nn.one_hot(labels, n_out)
    else:  # sinusoid tasks (paper section 4.1): A in [0.1, 0.5], phase in [0, pi], x in [-5, 5]
        x = jax.random.uniform(kx, (n, cfg.batch, n_in), minval=-5.0, maxval=5.0)
        amp = jax.random.uniform(ka, (n, 1, 1), minval=0.1, maxval=0.5)
        phase = jax.random.uniform(kp, (n, 1, 1), minval=0.0, maxval=np.pi)
        y = amp * jnp.sin(x + phase)
    return {"x": x.astype(jnp.float32), "y": y.astype(jnp.float32)}


# ---------------------------------------------------------------------------------------------
# direct versions. params = ((W0, b0), (W1, b1), ...), W (n_in, n_out), b (n_out,)

_ACT = {"sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu, "tanh": jnp.tanh, "identity": lambda z: z}


def _act_grad(name: str, pre: Any, g: Any) -> Any:
    """g * act'(pre), written as the engine's ``*_grad`` ops are."""
    if name == "sigmoid":
        s = jax.nn.sigmoid(pre)
        return g * s * (1.0 - s)
    if name == "relu":
        return g * (pre > 0)
    if name == "tanh":
        return g * (1.0 - jnp.tanh(pre) ** 2)
    return g


def _softmax(z: Any) -> Any:  # (B, n) -> (B, n), the engine's stable form
    e = jnp.exp(z - jnp.max(z, axis=-1, keepdims=True))
    return e / jnp.sum(e, axis=-1, keepdims=True)


def _loss_elems(cfg: NetConfig, p: Any, t: Any) -> Any:  # (B, n_out) per-output losses
    if cfg.loss == "ce":
        return -t * jnp.log(jnp.clip(p, CE_CLIP, 1.0 - CE_CLIP))
    return 0.5 * (t - p) ** 2


def _forward(cfg: NetConfig, params, x):
    """Returns (pred, pre-activations of hidden layers, layer inputs)."""
    h = x
    pres, ins = [], []
    for k, (w, b) in enumerate(params):
        ins.append(h)
        z = h @ w + b  # (B, n_out)
        if k < len(params) - 1:
            pres.append(z)
            h = _ACT[cfg.activation](z)
        else:
            h = z
    pred = _softmax(h) if cfg.loss == "ce" else h
    return pred, pres, ins


def manual_step(cfg: NetConfig, params, x, y):
    """One step with the engine's chain rule written out by hand. Returns (params, (pred, loss))."""
    pred, pres, ins = _forward(cfg, params, x)
    loss = _loss_elems(cfg, pred, y)
    if cfg.loss == "ce":
        pc = jnp.clip(pred, CE_CLIP, 1.0 - CE_CLIP)
        g = jnp.where((pred > CE_CLIP) & (pred < 1.0 - CE_CLIP), -y / pc, 0.0)  # ce_grad
        pg = jnp.sum(pred * g, axis=-1, keepdims=True)  # softmax.pg (sum over outputs)
        g = pred * (g - pg)  # softmax_grad
    else:
        g = pred - y  # l2_grad
    inv_b = 1.0 / x.shape[0]
    new = [None] * len(params)
    for k in reversed(range(len(params))):
        w, b = params[k]
        # W.sgd: w - lr * mean_b(x_i g_j), as one matmul; b.sgd: b - lr * mean_b(g_j)
        new[k] = (w - cfg.lr * inv_b * (ins[k].T @ g), b - cfg.lr * jnp.mean(g, axis=0))
        if k > 0:
            g = _act_grad(cfg.activation, pres[k - 1], g @ w.T)  # W->a (pre-update w), a->b
    return tuple(new), (pred, loss)


def jaxgrad_step(cfg: NetConfig, params, x, y):
    """``jax.grad`` of the batch mean of the summed per-output loss, then SGD."""

    def objective(ps):
        pred, _, _ = _forward(cfg, ps, x)
        loss = _loss_elems(cfg, pred, y)
        return jnp.mean(jnp.sum(loss, axis=-1)), (pred, loss)

    grads, aux = jax.grad(objective, has_aux=True)(params)
    new = jax.tree_util.tree_map(lambda p, g: p - cfg.lr * g, params, grads)
    return new, aux


# ---------------------------------------------------------------------------------------------
# the engine


def engine_params(cfg: NetConfig, state) -> tuple:
    n = len(cfg.sizes) - 1
    return tuple((state[f"W{k}"]["w"], state[f"b{k}"]["b"]) for k in range(n))


# how every contender is jitted: XLA's defaults (a plain jax.jit; default) or the library's XLA
# options (``--xla library``: mplp_graph.xla.jit, as the library compiles its MPLP programs)
JIT = [jax.jit]


@dataclass
class Contenders:
    """Per kind (``step``, ``scan20``, ``vmap_scan20``): jitted functions ``(carry, arg) -> carry``
    keyed by contender, their initial carries and the argument (one batch or stacked batches)."""

    fns: dict[str, dict[str, Callable]]
    carry: dict[str, dict[str, Any]]
    arg: dict[str, Any]


def build(cfg: NetConfig, key: Any, n_tasks: int) -> Contenders:
    spec = mg.feedforward(cfg.sizes, cfg.activation, cfg.loss, lr=cfg.lr)
    prog = mg.compile_graph(spec)
    prog_params = prog.init_params(key)  # {} for the backprop protocol

    def engine_one(st, b):
        # step_carry: only the fields that live from step to step (weights, biases) are carried
        st, out = prog.step_carry(prog_params, st, b)
        return st, out["loss"]

    def direct_one(fn):
        def one(ps, b):
            ps, (_, loss) = fn(cfg, ps, b["x"], b["y"])
            return ps, loss

        return one

    ones = {"engine": engine_one, "manual": direct_one(manual_step), "jaxgrad": direct_one(jaxgrad_step)}

    def as_step(one):
        return JIT[0](lambda c, b: one(c, b)[0])

    def as_scan(one):
        return JIT[0](lambda c, bs: jax.lax.scan(one, c, bs)[0])  # bs: (T, B, ...)

    def as_vmap_scan(one):
        def one_all_tasks(cs, bs):  # cs: (tasks, ...), bs: (tasks, B, ...)
            return jax.vmap(one)(cs, bs)

        return JIT[0](lambda c, bs: jax.lax.scan(one_all_tasks, c, bs)[0])  # bs: (T, tasks, B, ...)

    state = prog.init(key, cfg.batch)
    states = jax.vmap(lambda k: prog.init(k, cfg.batch))(jax.random.split(key, n_tasks))
    one_carry = {"engine": prog.carry_of(state), "manual": engine_params(cfg, state), "jaxgrad": engine_params(cfg, state)}
    task_carry = {"engine": prog.carry_of(states), "manual": engine_params(cfg, states), "jaxgrad": engine_params(cfg, states)}
    batches = make_batches(cfg, jax.random.fold_in(key, 1), SCAN_STEPS * n_tasks)
    batches = {k: v.reshape((SCAN_STEPS, n_tasks) + v.shape[1:]) for k, v in batches.items()}
    first_task = {k: v[:, 0] for k, v in batches.items()}  # (T, B, ...)
    return Contenders(
        fns={
            "step": {k: as_step(f) for k, f in ones.items()},
            "scan20": {k: as_scan(f) for k, f in ones.items()},
            f"vmap{n_tasks}_scan20": {k: as_vmap_scan(f) for k, f in ones.items()},
        },
        carry={"step": one_carry, "scan20": one_carry, f"vmap{n_tasks}_scan20": task_carry},
        arg={"step": {k: v[0] for k, v in first_task.items()}, "scan20": first_task, f"vmap{n_tasks}_scan20": batches},
    )


def _max_diff(a: Any, b: Any) -> float:
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def check_agreement(cfg: NetConfig, c: Contenders) -> dict[str, float]:
    """Engine parameters must equal each direct version's to TOL after SCAN_STEPS single steps,
    one scan and one vmapped scan; otherwise exit, since the timings would compare different things."""
    errs: dict[str, float] = {}
    carry = dict(c.carry["step"])
    seq = c.arg["scan20"]
    for t in range(SCAN_STEPS):
        b = {k: v[t] for k, v in seq.items()}
        carry = {k: c.fns["step"][k](carry[k], b) for k in carry}
    results = {"step": carry}
    for kind in c.fns:
        if kind != "step":
            results[kind] = {k: f(c.carry[kind][k], c.arg[kind]) for k, f in c.fns[kind].items()}
    for kind, res in results.items():
        eng = engine_params(cfg, res["engine"])
        for name in ("manual", "jaxgrad"):
            err = _max_diff(eng, res[name])
            errs[f"{kind}_{name}"] = err
            if not err <= TOL:
                sys.exit(
                    f"step_bench: {cfg.name} ({kind}): engine and {name} parameters differ by {err:.3g} after "
                    f"{SCAN_STEPS} steps (tolerance {TOL}); the direct version does not compute what the engine "
                    "does, so timings would compare different things. Fix the mismatch before benchmarking."
                )
    return errs


# ---------------------------------------------------------------------------------------------
# timing


def first_call_s(fn: Callable, carry: Any, arg: Any) -> float:
    """Wall time of the first call: trace + compile + one run."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(carry, arg))
    return time.perf_counter() - t0


def time_loop(fn: Callable, carry: Any, arg: Any, n: int) -> float:
    """Mean ms per call over ``n`` calls, feeding the carry back in; blocks once at the end."""
    t0 = time.perf_counter()
    for _ in range(n):
        carry = fn(carry, arg)
    jax.block_until_ready(carry)
    return (time.perf_counter() - t0) * 1e3 / n


def interleaved(fns: dict[str, Callable], carries: dict[str, Any], arg: Any, rounds: int, iters: int) -> dict[str, list[float]]:
    """``rounds`` rounds; in each, every contender runs ``iters`` calls, order rotating per round."""
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        order = round_order(names, r)
        for k in order:
            times[k].append(time_loop(fns[k], carries[k], arg, iters))
    return times


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


# ---------------------------------------------------------------------------------------------
# HLO op counts (for --hlo)

_OP_RE = re.compile(r"=\s*[^=]*?\s([a-z][a-z0-9-]*)\(")


def hlo_op_counts(text: str) -> collections.Counter:
    """Opcode counts of an HLO module's text (every instruction in every computation)."""
    counts: collections.Counter = collections.Counter()
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("HloModule", "ENTRY", "}", "//")) or " = " not in line:
            continue
        m = _OP_RE.search(line)
        if m:
            counts[m.group(1)] += 1
    return counts


def entry_op_counts(text: str) -> collections.Counter:
    """Opcode counts of the ENTRY computation only (what actually runs as separate kernels)."""
    out, inside = [], False
    for line in text.splitlines():
        if line.startswith("ENTRY"):
            inside = True
            continue
        if inside:
            if line.startswith("}"):
                break
            out.append(line)
    return hlo_op_counts("\n".join(out))


def dump_hlo(cfg: NetConfig, c: Contenders, out_dir: Path) -> dict[str, Any]:
    """Write unoptimized and optimized HLO of every jitted function; return opcode counts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {}
    for kind, fns in c.fns.items():
        for name, fn in fns.items():
            lowered = fn.lower(c.carry[kind][name], c.arg[kind])
            pre = lowered.as_text(dialect="hlo")
            post = lowered.compile().as_text()
            stem = f"{cfg.name}_{kind}_{name}"
            (out_dir / f"{stem}.pre.hlo").write_text(pre)
            (out_dir / f"{stem}.opt.hlo").write_text(post)
            summary[stem] = {
                "unoptimized": dict(hlo_op_counts(pre).most_common()),
                "optimized_entry": dict(entry_op_counts(post).most_common()),
                "optimized_all": dict(hlo_op_counts(post).most_common()),
            }
    return summary


# ---------------------------------------------------------------------------------------------
# results file


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (default 7)")
    p.add_argument("--iters", type=int, default=300, help="single steps per contender per round (default 300)")
    p.add_argument("--scan-iters", type=int, default=30, help=f"{SCAN_STEPS}-step scans per contender per round (default 30)")
    p.add_argument("--quick", action="store_true", help="smoke run: 3 rounds, 20 steps, 3 scans")
    p.add_argument("--net", choices=[n.name for n in NETS], action="append", help="only this net (repeatable)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results JSON (default {DEFAULT_OUT.relative_to(ROOT)})")
    p.add_argument("--hlo", type=Path, default=None, help="dump optimized HLO and op counts into this folder")
    p.add_argument("--tasks", type=int, default=4, help="tasks side by side in the vmapped scan (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--xla", choices=["library", "default"], default="default",
                   help="compile every contender with XLA's defaults (jax.jit; default) or the library's XLA options (mplp_graph.xla.jit)")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.iters, args.scan_iters = 3, 20, 3
    for name in ("rounds", "iters", "scan_iters", "tasks"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def bench_net(cfg: NetConfig, args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    key = jax.random.PRNGKey(args.seed)
    c = build(cfg, key, args.tasks)
    compile_s = {
        (kind, name): first_call_s(fn, c.carry[kind][name], c.arg[kind]) for kind, fns in c.fns.items() for name, fn in fns.items()
    }
    errs = check_agreement(cfg, c)
    print(f"{cfg.name}: engine parameters agree with manual and jax.grad to {max(errs.values()):.2e} "
          f"(tolerance {TOL}) in every mode", flush=True)

    rows = []
    for kind, fns in c.fns.items():
        iters = args.iters if kind == "step" else args.scan_iters
        times = interleaved(fns, c.carry[kind], c.arg[kind], args.rounds, iters)
        med = {k: float(np.median(v)) for k, v in times.items()}
        unit = {"step": "ms per step"}.get(kind, f"ms per jitted scan of {SCAN_STEPS} steps")
        if kind.startswith("vmap"):
            unit += f" of {args.tasks} tasks (vmap)"
        for direct in ("manual", "jaxgrad"):
            rows.append(
                {
                    "name": f"{cfg.name}_{kind}_vs_{direct}",
                    "engine_ms": round(med["engine"], 4),
                    "direct_ms": round(med[direct], 4),
                    "ratio": round(med["engine"] / med[direct], 3),
                    "compile_s": round(compile_s[(kind, "engine")], 3),
                    "peak_rss_mb": round(peak_rss_mb(), 1),
                    "direct_compile_s": round(compile_s[(kind, direct)], 3),
                    "unit": unit,
                    "batch": cfg.batch,
                    "max_param_diff": errs[f"{kind}_{direct}"],
                    "engine_ms_rounds": [round(t, 4) for t in times["engine"]],
                    "direct_ms_rounds": [round(t, 4) for t in times[direct]],
                }
            )
            print(f"  {rows[-1]['name']:<46} engine {med['engine']:9.4f} ms  {direct:<7} {med[direct]:9.4f} ms  "
                  f"ratio {rows[-1]['ratio']:7.3f}  compile {compile_s[(kind, 'engine')]:.2f}s "
                  f"(direct {compile_s[(kind, direct)]:.2f}s)", flush=True)
    hlo = dump_hlo(cfg, c, args.hlo) if args.hlo else {}
    return rows, hlo


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    JIT[0] = xla.jit if args.xla == "library" else jax.jit
    nets = [n for n in NETS if not args.net or n.name in args.net]
    rows: list[dict[str, Any]] = []
    hlo: dict[str, Any] = {}
    for cfg in nets:
        r, h = bench_net(cfg, args)
        rows += r
        hlo.update(h)
    if args.hlo:
        (args.hlo / "op_counts.json").write_text(json.dumps(hlo, indent=2) + "\n")
        for stem, counts in hlo.items():
            entry = counts["optimized_entry"]
            print(f"{stem:<40} entry ops {sum(entry.values()):4d}  {entry}")
    commit = _git("rev-parse", "--short", "HEAD")
    result = {
        "machine": machine_line(),
        "jax": jax.__version__,
        "devices": [f"{d.platform}:{d.id}" for d in jax.devices()],
        "command": " ".join(["python benchmarks/step_bench.py", *(sys.argv[1:] if argv is None else argv)]),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "git_commit": commit,
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "date": datetime.date.today().isoformat(),
        "settings": {"rounds": args.rounds, "iters": args.iters, "scan_iters": args.scan_iters, "scan_steps": SCAN_STEPS, "tasks": args.tasks, "seed": args.seed, "quick": args.quick,
                     "xla_options": xla.default_options() if args.xla == "library" else "xla_default"},
        "rows": rows,
    }
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
