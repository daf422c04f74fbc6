"""Benchmark: the engine's sums over agent axes as a plain ``jnp.sum`` (the library's
``mplp_graph.runtime.route.sum_axes``) or as a contraction with vectors of ones (the form an
earlier engine used), side by side in one process.

The engine sums messages over reduced agent axes and takes batch means of parameter updates
with ``sum_axes``. Each variant is traced with its own ``sum_axes`` (patched while tracing
only; each from a program and step function of its own, so that JAX's trace caches cannot hand
one variant's trace to another: the backprop part checks that the contraction and ``jnp.sum``
programs differ) and the programs are timed in interleaved rounds (order alternating):

* a 20-step ``lax.scan`` of 4 vmapped backprop steps (``mg.feedforward``) of the sinusoid
  (1, 20, 20, 1) and MNIST (144, 50, 10) nets, under the library's XLA options and XLA's defaults;
* with ``--meta``, the MPLP meta-steps of meta_step_bench's sinusoid and MNIST configs
  (first step checked to agree).

    python benchmarks/sum_axes_bench.py [--rounds 40] [--meta] [--out FILE]

Results: ``benchmarks/results/sum_axes_bench.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_common import result_header, write_json_atomic  # noqa: E402

import mplp_graph as mg  # noqa: E402
from mplp_graph import xla  # noqa: E402
from mplp_graph.runtime import lower, route  # noqa: E402

def contraction(value, axes, weight=1.0):
    """``weight * sum`` over ``axes`` as one einsum with vectors of ones."""
    letters = [chr(ord("a") + k) for k in range(value.ndim)]
    ones = [jnp.full((value.shape[ax],), weight if k == 0 else 1.0, value.dtype) for k, ax in enumerate(axes)]
    out = "".join(x for k, x in enumerate(letters) if k not in axes)
    spec = "".join(letters) + "".join("," + letters[ax] for ax in axes) + "->" + out
    return jnp.einsum(spec, value, *ones)


@contextlib.contextmanager
def summing(fn):
    """Trace with ``fn`` as the engine's ``sum_axes`` (route and lower both hold the name)."""
    saved = route.sum_axes, lower.sum_axes
    route.sum_axes = lower.sum_axes = fn
    try:
        yield
    finally:
        route.sum_axes, lower.sum_axes = saved


VARIANTS = {"contraction": contraction, "jnp.sum": route.sum_axes}


def interleaved(calls: dict, rounds: int, reps: int) -> dict[str, float]:
    times = {k: [] for k in calls}
    names = list(calls)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            t = time.perf_counter()
            for _ in range(reps):
                jax.block_until_ready(calls[name]())
            times[name].append((time.perf_counter() - t) / reps)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_backprop(rounds: int) -> list[dict]:
    rows = []
    nets = {"sinusoid": ((1, 20, 20, 1), "relu", "l2", 10), "mnist": ((144, 50, 10), "sigmoid", "ce", 8)}
    for options, jit in (("library", xla.jit), ("xla_default", jax.jit)):
        for name, (sizes, act, loss, batch) in nets.items():
            key = jax.random.PRNGKey(0)
            xs = jax.random.normal(key, (20, 4, batch, sizes[0]))
            if loss == "ce":
                ys = jax.nn.one_hot(jax.random.randint(key, (20, 4, batch), 0, sizes[-1]), sizes[-1])
            else:
                ys = jax.random.normal(key, (20, 4, batch, 1))
            calls, out, hlo = {}, {}, {}
            for variant, fn in VARIANTS.items():
                compiled, carry = _backprop_scan(sizes, act, loss, batch, fn, jit, key, xs, ys)
                hlo[variant] = compiled.as_text()
                out[variant] = compiled(carry, xs, ys)
                calls[variant] = lambda compiled=compiled, carry=carry: compiled(carry, xs, ys)
            if hlo["contraction"] == hlo["jnp.sum"]:
                raise SystemExit(f"{name}: the contraction and jnp.sum programs are identical: the sum was not swapped")
            diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                       zip(jax.tree_util.tree_leaves(out["contraction"]), jax.tree_util.tree_leaves(out["jnp.sum"])))
            if diff > 1e-4:
                raise SystemExit(f"{name}: the sums disagree by {diff}")
            med = interleaved(calls, rounds, 20)
            row = {"net": name, "xla_options": options, "ms": {k: round(v * 1e3, 4) for k, v in med.items()},
                   "ratio_vs_contraction": {k: round(v / med["contraction"], 3) for k, v in med.items()}, "max_abs_diff": diff}
            print(row, flush=True)
            rows.append(row)
    return rows


def _backprop_scan(sizes, act, loss, batch, fn, jit, key, xs, ys):
    """A 20-step scan of 4 vmapped backprop steps, compiled with ``fn`` as the engine's sum
    (a fresh program and step function, so that no trace cache is shared between variants)."""
    prog = mg.compile_graph(mg.feedforward(sizes, act, loss, lr=0.05))
    carry = jax.vmap(lambda k: prog.carry_of(prog.init(k, batch)))(jax.random.split(key, 4))

    def step(c, b):
        return jax.vmap(lambda c, x, y: prog.step_carry({}, c, {"x": x, "y": y})[0])(c, *b), None

    with summing(fn):
        compiled = jit(lambda c, xs, ys: jax.lax.scan(step, c, (xs, ys))[0]).lower(carry, xs, ys).compile()
    return compiled, carry


def bench_meta(rounds: int) -> dict:
    import kernel_bench as kb
    import meta_step_bench as msb

    from mplp_graph.meta.step import trainable_mask

    out = {}
    for cfg_name, iters in (("sinusoid", 10), ("mnist", 2)):
        cfg = next(c for c in msb.CONFIGS if c.name == cfg_name)
        jitted, fixed = {}, None
        for variant, fn in VARIANTS.items():
            step, params, pool = kb.build_step(cfg, "split", False, 0, True)
            fixed = fixed or (trainable_mask(params), pool)
            jfn = xla.jit(step.__call__)

            def traced(*a, jfn=jfn, fn=fn):  # the first call traces: with this variant's sum
                with summing(fn):
                    return jfn(*a)

            jitted[variant] = (traced, params, step.init_opt_state(params))
        res = msb.compare_variants(cfg, jitted, fixed, 0, rounds, iters, "ratio_vs_contraction")
        out[cfg_name] = {k: res[k] for k in ("ms_median", "ratio_vs_contraction", "agreement")}
        print(cfg_name, out[cfg_name]["ms_median"], out[cfg_name]["ratio_vs_contraction"], flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=40, help="interleaved rounds of the backprop scans (default 40)")
    ap.add_argument("--meta", action="store_true", help="also the MPLP meta-steps")
    ap.add_argument("--meta-rounds", type=int, default=5, help="interleaved rounds of the meta-steps (default 5)")
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "sum_axes_bench.json")
    args = ap.parse_args(argv)
    doc = {**result_header("sum_axes_bench", argv, args.note), "backprop_scan20_vmap4": bench_backprop(args.rounds)}
    if args.meta:
        doc["meta_step"] = bench_meta(args.meta_rounds)
    write_json_atomic(args.out, doc)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
