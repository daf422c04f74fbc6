"""Benchmark: the CPU choices of the learner kernels, side by side in one process.

Three choices, each switched alone against the library's defaults (first variant):

* ``first_layer``: ``split`` (default; one small matmul per input channel at its unreplicated
  shape, broadcast-added into a ``(rows, features)`` matrix) or ``rows`` (the channels broadcast
  and concatenated into a ``(rows, 6)`` matrix first, then one matmul); mplp_graph.learners.nets.
* XLA options: the library's (:data:`mplp_graph.xla.CPU_OPTIONS`: YNNPACK fusions off) or
  XLA's defaults (YNNPACK dots and reductions).
* a single-task outer batch run without ``vmap`` (default, ``MetaStep.batch_loss``) or vmapped
  (as before: every learner's parameter gradient is then a batched dot).

``--config mnist`` (default; meta_step_bench's MNIST config: (144, 50, 10), 20 inner steps of
batch 8, outer batch 1, GRU learners shared across layers) and ``sinusoid`` (outer batch 4: the
vmap variants do not apply). Every variant's first meta-step is checked against the first
variant's (loss to 1e-5 relative, new parameters to ``2 * lr``) before timing; meta-steps are timed
in interleaved rounds (order rotating). ``--no-remat`` adds the default without the inner-step
remat (its ~3 GB of residuals are fresh memory on every call: run it once more under
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` to see what the page faults cost). ``--set remat``
times the partial remat policies instead (``meta.remat: hidden`` keeps the learners' 40-wide
hidden layers, ``dots`` every matmul output) against full remat. ``--eval`` adds the 100-run MNIST evaluation (untrained
learner; needs MNIST, docs/data.md) for ``first_layer`` x XLA options, also interleaved.
``--set device`` times the choices that may differ on an accelerator against the default: the
scan over the inner steps unrolled (``meta.unroll: true``), the remat off, both,
``first_layer=rows`` and the outer batch's tasks in a loop (``meta.outer_batch_mode: map``; the
default there is ``vmap``) (experiments/device/gpu_bench.sh runs it on a GPU). ``--set ynn`` times
YNNPACK's fused subgraphs (``xla_cpu_experimental_ynn_fusion_type`` with the ``DOT`` and
``ELTWISE`` library fusion types: a dot and the elementwise work around it as one YNNPACK
kernel, tiled by slinky) against the library's options, which switch YNNPACK off. ``--set tasks``
times the outer batch's tasks vmapped (``meta.outer_batch_mode: vmap``) against the default
(``auto``: one task after another on the CPU); ``--outer-batch N`` sets the config's outer batch
(the MNIST config has 1, where both run the single task unbatched).

    python benchmarks/kernel_bench.py [--config mnist] [--set kernels|remat|device|ynn|tasks|all] [--outer-batch N] [--rounds 5] [--iters 2] [--no-remat] [--eval] [--eval-reps 2] [--out FILE]

Results: ``benchmarks/results/kernel_bench_CONFIG.json`` (``_CONFIG_SET.json`` for the other sets).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import meta_step_bench as msb  # noqa: E402
from bench_common import interleaved_call_times, mnist_eval_setup, result_header, write_json_atomic  # noqa: E402

from mplp_graph import compile_graph, xla  # noqa: E402
from mplp_graph.meta.objectives import MetaLoss, task_loss  # noqa: E402
from mplp_graph.meta.step import MetaStep, adam, make_pool, trainable_mask  # noqa: E402
from mplp_graph.templates.mplp import mplp_feedforward  # noqa: E402


@dataclasses.dataclass(frozen=True)
class VmappedStep(MetaStep):
    """The meta-step with the outer batch always vmapped, even a single task (the old code path)."""

    def batch_loss(self, params, drawn):
        losses, parts = jax.vmap(lambda pr, t: task_loss(self.prog, self.objective, params, pr, t))(drawn["priors"], drawn["tasks"])
        return jnp.mean(losses), jax.tree_util.tree_map(jnp.mean, parts)


# name: (first_layer, XLA options, vmap a single task?, inner-step remat?[, meta.unroll[, outer_batch_mode]]);
# XLA options: True for the library's (mplp_graph.xla), False for XLA's defaults, a dict for the
# library's updated with it
VARIANTS = {
    "default (split, library options)": ("split", True, False, True),
    "first_layer=rows": ("rows", True, False, True),
    "XLA default options": ("split", False, False, True),
    "single task vmapped": ("split", True, True, True),
    "XLA default options + single task vmapped": ("split", False, True, True),
}
NO_REMAT = {"no inner-step remat": ("split", True, False, False)}
# the partial remat policies (mplp_graph.meta.objectives.REMAT), against full remat (the default)
REMAT_POLICIES = {"remat=hidden": ("split", True, False, "hidden"), "remat=dots": ("split", True, False, "dots")}
# the choices that may differ on an accelerator (``--set device``): the scan over inner steps
# unrolled (a GPU runs each loop iteration as its own kernel launches after a host round trip),
# the remat off (memory is plentiful there), the first-layer form; a 5th entry is meta.unroll
DEVICE = {
    "default (split, library options)": ("split", True, False, True),
    "no inner-step remat": ("split", True, False, False),
    "unroll=true": ("split", True, False, True, True),
    "unroll=true, no remat": ("split", True, False, False, True),
    "first_layer=rows": ("rows", True, False, True),
    "outer_batch_mode=map": ("split", True, False, True, 1, "map"),  # auto is vmap off the CPU
}
# YNNPACK's fused subgraphs (``--set ynn``): jaxlib 0.10 names the fusion kinds LIBRARY_FUSION_TYPE_*
_YNN = "xla_cpu_experimental_ynn_fusion_type"
_T = "LIBRARY_FUSION_TYPE_"
YNN = {
    "default (split, library options)": ("split", True, False, True),
    "YNNPACK dot+eltwise fusions": ("split", {_YNN: f"{_T}DOT,{_T}ELTWISE"}, False, True),
    "YNNPACK dot+eltwise+reduce fusions": ("split", {_YNN: f"{_T}DOT,{_T}ELTWISE,{_T}REDUCE"}, False, True),
}

# the outer batch's tasks one after another (the CPU's default, ``auto``) or vmapped (``--set tasks``)
TASKS = {
    "default (split, library options)": ("split", True, False, True),
    "outer_batch_mode=vmap": ("split", True, False, True, 1, "vmap"),
}


def _xla_options_name(opt) -> object:
    return "library" if opt is True else "xla_default" if opt is False else {**xla.CPU_OPTIONS, **opt}


def build_step(cfg: msb.MetaConfig, first_layer: str, vmapped: bool, seed: int, remat: bool = True, unroll: int | bool = 1, mode: str = "auto"):
    spec = mplp_feedforward(cfg.sizes, cfg.activation, cfg.loss, msg=cfg.msg, hidden=cfg.hidden, sharing=cfg.sharing, first_layer=first_layer)
    prog = compile_graph(spec)
    cls = VmappedStep if vmapped else MetaStep
    objective = MetaLoss(cfg.hint_weight, cfg.cv_weight, remat=remat, unroll=unroll)
    step = cls(prog, msb.task_family(cfg).sample, objective, cfg.outer_batch, adam(cfg.lr), outer_batch_mode=mode)
    key = jax.random.PRNGKey(seed)
    return step, prog.init_params(key), make_pool(prog, jax.random.fold_in(key, 3), cfg.pool)


def bench_meta_step(cfg: msb.MetaConfig, rounds: int, iters: int, seed: int, no_remat: bool = False, sets: str = "kernels") -> dict:
    """``sets``: ``kernels`` (the kernel choices), ``remat`` (the default and the remat
    policies), ``device`` (:data:`DEVICE`) or ``all``; ``no_remat`` adds the default without remat."""
    if sets in ("device", "ynn", "tasks"):
        chosen = dict({"device": DEVICE, "ynn": YNN, "tasks": TASKS}[sets])
    else:
        chosen = {**(VARIANTS if sets in ("kernels", "all") else dict(list(VARIANTS.items())[:1]))}
        chosen.update(REMAT_POLICIES if sets in ("remat", "all") else {})
    chosen.update(NO_REMAT if no_remat else {})
    variants = {k: v for k, v in chosen.items() if not (v[2] and cfg.outer_batch > 1)}
    jitted, fixed = {}, None
    for name, (first_layer, library, vmapped, remat, *more) in variants.items():
        step, params, pool = build_step(cfg, first_layer, vmapped, seed, remat, *more)
        fixed = fixed or (trainable_mask(params), pool)  # the same seed: the same params and pool
        fn = xla.jit(step.__call__, options=None if library is True else library) if library is not False else jax.jit(step.__call__)
        jitted[name] = (fn, params, step.init_opt_state(params))
    out = msb.compare_variants(cfg, jitted, fixed, seed, rounds, iters, "ratio_vs_default")
    variant_info = {k: {"first_layer": v[0], "xla_options": _xla_options_name(v[1]), "single_task_vmapped": v[2], "remat": v[3],
                        "unroll": v[4] if len(v) > 4 else 1, "outer_batch_mode": v[5] if len(v) > 5 else "auto"} for k, v in variants.items()}
    return {"config": out.pop("config"), "variants": variant_info, **out}


def bench_eval(runs: int, reps: int) -> dict:
    from mplp_graph.meta import evaluate

    key = jax.random.PRNGKey(0)
    fns, first, acc = {}, {}, {}
    for first_layer in ("split", "rows"):
        for library in (True, False):
            name = f"first_layer={first_layer}, {'library' if library else 'XLA default'} options"
            setup, params = mnist_eval_setup(first_layer=first_layer)
            tasks, keys = setup.family.eval_tasks(key, runs, setup.data)  # the protocol's runs (evaluate.evaluate)
            evaluate._runner.cache_clear()  # a fresh jit, built under this variant's options
            os.environ["MPLP_XLA_DEFAULTS"] = "0" if library else "1"
            try:
                runner = evaluate._runner(evaluate.LearnedProtocol(setup.prog), setup.fwd, tuple(setup.family.metrics), "auto", False)
            finally:
                os.environ.pop("MPLP_XLA_DEFAULTS")
            theta = {"learner": params, "prior": None}  # fresh random priors
            fns[name] = lambda runner=runner, theta=theta, keys=keys, tasks=tasks: runner(theta, keys, tasks)["accuracy"]
            t0 = time.perf_counter()
            acc[name] = np.asarray(jax.block_until_ready(fns[name]()))[:, 1:]  # after each update
            first[name] = round(time.perf_counter() - t0, 2)
            print(f"eval {name}: first call {first[name]} s, mean acc@20 {acc[name][:, -1].mean():.4f}", flush=True)
    base = next(iter(fns))
    for name, a in acc.items():  # the same protocol and keys: the same accuracies up to rounding
        if abs(float(a[:, -1].mean()) - float(acc[base][:, -1].mean())) > 0.01:
            raise SystemExit(f"eval {name} disagrees with {base}")
    times = interleaved_call_times(fns, reps)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "runs": runs,
        "s_median": {k: round(v, 2) for k, v in med.items()},
        "ratio_vs_default": {k: round(v / med[base], 3) for k, v in med.items()},
        "s_reps": {k: [round(x, 2) for x in v] for k, v in times.items()},
        "first_call_s": first,
        "mean_acc_last": {k: float(a[:, -1].mean()) for k, a in acc.items()},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="mnist", choices=[c.name for c in msb.ALL_CONFIGS])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-remat", action="store_true", help="also the default without the inner-step remat (meta.remat: false)")
    ap.add_argument("--set", default="kernels", choices=["kernels", "remat", "device", "ynn", "tasks", "all"],
                    help="meta-step variants: the kernel choices (default), the remat policies (meta.remat: hidden, dots) against full remat, "
                    "the accelerator choices (scan unroll, remat off, first layer), YNNPACK's fused subgraphs, the outer batch's tasks vmapped vs in a loop, or all (kernels and remat)")
    ap.add_argument("--outer-batch", type=int, default=None, help="the config's outer batch (default: the config's own)")
    ap.add_argument("--eval", action="store_true", help="also the 100-run MNIST evaluation (needs MNIST)")
    ap.add_argument("--eval-runs", type=int, default=100)
    ap.add_argument("--eval-reps", type=int, default=2, help="timed evaluation calls per variant (after the first)")
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    cfg = next(c for c in msb.ALL_CONFIGS if c.name == args.config)
    if args.outer_batch is not None:
        cfg = dataclasses.replace(cfg, outer_batch=args.outer_batch)
    suffix = ("" if args.set == "kernels" else "_" + args.set) + ("" if args.outer_batch is None else f"_ob{args.outer_batch}")
    out = args.out or HERE / "results" / f"kernel_bench_{cfg.name}{suffix}.json"
    doc = {
        **result_header("kernel_bench", argv, args.note),
        "library_xla_options": xla.CPU_OPTIONS,
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "meta_step": bench_meta_step(cfg, args.rounds, args.iters, args.seed, args.no_remat, args.set),
    }
    if args.eval:
        doc["eval_mnist"] = bench_eval(args.eval_runs, args.eval_reps)
    write_json_atomic(out, doc)
    print(f"wrote {out}")
    for k, v in doc["meta_step"]["ms_median"].items():
        print(f"  {k:45s} {v:9.1f} ms  x{doc['meta_step']['ratio_vs_default'][k]}")
    if "eval_mnist" in doc:
        for k, v in doc["eval_mnist"]["s_median"].items():
            print(f"  eval {k:40s} {v:7.2f} s  x{doc['eval_mnist']['ratio_vs_default'][k]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
