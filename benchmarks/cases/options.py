"""The library's own choices, side by side: an experiment's meta-step (built as ``mplp-graph
train`` builds it: experiments/<name>/config.yaml, ``mplp_graph.meta.run.meta_step``) with config
overrides or other XLA options per variant, the first variant the library's default (``engine``).
One timed unit is one meta-step from the same state and key. Before timing every variant's first
meta-step must agree with the default's (loss to ``loss_rtol`` relative, the parameter update
to ``param_tol`` x the learning rate (Adam's first step moves an entry by about ``lr * sign(g)``:
an entry whose gradient is at rounding level may move the other way); updates rather than parameters, since a variant's
standardizer statistics come from its own rollouts: in bfloat16 they differ): the options change
how, not what, is computed.

Sets (docs/performance.md discusses the results):

* ``mnist_kernels``: ``graph.first_layer: rows`` (concatenate, then one matmul) against ``split``;
  XLA's default options (YNNPACK dots and reductions) against the library's (mplp_graph/xla.py);
  a single task vmapped (``meta.outer_batch_mode: vmap``) against run unbatched.
* ``mnist_remat`` / ``mnist100_remat``: the inner-step remat policies (``meta.remat``: full, none,
  hidden, dots) with 20 / 100 inner steps, and XLA's memory analysis of each compiled step
  (``check``: temp / argument / output MiB; compiled ahead of time, so the compile time is in
  ``build_s``). The 100-step set leaves out ``none`` (16 GB) and ``dots`` (5.9 GB).
* ``mnist_device``: choices that may differ on an accelerator: the inner-step scan unrolled, remat
  off, both, ``first_layer: rows``, the tasks in a loop (experiments/device/gpu_bench.sh).
* ``mnist_ynn``: YNNPACK's fused subgraphs (dot + elementwise[, reduce]) against the library's
  options, which switch YNNPACK off.
* ``sinusoid_tasks``: the outer batch of 4 tasks vmapped against one after another (``auto`` on
  the CPU).
* ``mnist_chunk``: learners over pieces of ``graph.chunk_rows`` agents against whole tensors.
* ``precision_{mnist,sinusoid}``: ``graph.matmul: bfloat16`` learner matmul operands (float32
  accumulation and state) against float32 (their losses agree to 1e-2 relative only).
* ``sinusoid_compile``: XLA compile options (``meta.fast_compile``: optimization level 1; LLVM's
  expensive passes off; both): the figure is each variant's ``compile_s``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks.harness import Case, Variant
from benchmarks.setups import experiment_setup

_YNN, _T = "xla_cpu_experimental_ynn_fusion_type", "kYnnFusion"


@dataclasses.dataclass(frozen=True)
class Opt:
    """One variant: config overrides (dotted keys) and XLA options (``"library"``: the library's,
    ``"default"``: XLA's own, a dict: the library's updated with it)."""

    name: str
    overrides: tuple = ()
    xla_options: Any = "library"


def _variant(experiment: str, opt: Opt, aot: bool, memory: dict) -> Variant:
    def build():
        from mplp_graph import xla
        from mplp_graph.meta.run import meta_step
        from mplp_graph.meta.step import make_pool, trainable_mask

        setup, params = experiment_setup(experiment, **dict(opt.overrides))
        m = setup.config.meta
        step = meta_step(setup)
        args = (params, step.init_opt_state(params), trainable_mask(params), make_pool(setup.prog, jax.random.PRNGKey(m.seed + 1), m.pool),
                jax.random.PRNGKey(m.seed + 2), setup.data)
        own = dict(step.compiler_options)
        if opt.xla_options == "library":
            fn = xla.jit(step.__call__, own)
        elif opt.xla_options == "default":
            fn = jax.jit(step.__call__, compiler_options=own or None)
        else:
            fn = xla.jit(step.__call__, {**own, **opt.xla_options})
        if aot:
            fn = fn.lower(*args).compile()
            a = fn.memory_analysis()
            memory[opt.name] = {k: round(getattr(a, f"{k}_size_in_bytes") / 2**20, 1) for k in ("temp", "argument", "output")}
        return lambda: (fn(*args), m.lr, params)

    xla_note = "" if opt.xla_options == "library" else f"XLA options {opt.xla_options}"
    return Variant(opt.name, build, note="; ".join(x for x in (", ".join(f"{k}={v}" for k, v in opt.overrides), xla_note) if x))


def _agree(name: str, loss_rtol: float, param_tol: float, memory: dict):
    def check(outs: dict[str, Any]) -> dict:
        (p0, _, m0), lr, start0 = outs["engine"]
        update0 = jax.tree_util.tree_map(jnp.subtract, p0, start0)
        diffs = {}
        for k, ((p, _, m), _, start) in outs.items():
            loss_diff = abs(float(m["loss"]) - float(m0["loss"])) / abs(float(m0["loss"]))
            update = jax.tree_util.tree_map(jnp.subtract, p, start)
            param_diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                             zip(jax.tree_util.tree_leaves(update), jax.tree_util.tree_leaves(update0), strict=True))
            diffs[k] = {"loss_rel_diff": loss_diff, "update_max_diff": param_diff}
            assert bool(m["finite"]), f"{name}: {k}: a non-finite meta-step"
            assert loss_diff <= loss_rtol and param_diff <= param_tol * lr * (1 + 1e-3), f"{name}: {k} disagrees with the default: {diffs[k]}"
        return {"agreement": diffs, **({"xla_memory_mib": dict(memory)} if memory else {})}

    return check


def options_case(name: str, experiment: str, opts: tuple[Opt, ...], *, baseline: str | None = None, rounds: int = 5, calls: int = 2,
                 tags: tuple = (), aot: bool = False, loss_rtol: float = 1e-5, param_tol: float = 2.0, common: tuple = ()) -> Case:
    """A case of ``experiment``'s meta-step: ``engine`` (the config with ``common`` overrides) and
    ``opts``, each with ``common`` too."""
    memory: dict = {}
    opts = (Opt("engine", common), *(dataclasses.replace(o, overrides=(*common, *o.overrides)) for o in opts))
    return Case(
        name=name, variants=tuple(_variant(experiment, o, aot, memory) for o in opts), baseline=baseline or opts[1].name,
        check=_agree(name, loss_rtol, param_tol, memory), rounds=rounds, calls=calls, tags=("options", *tags),
        params={"config": f"experiments/{experiment}/config.yaml", "variants": {o.name: {"overrides": dict(o.overrides), "xla": o.xla_options} for o in opts},
                "unit": "one meta-step of the experiment's config"},
        derived=lambda med: {"ratio_vs_engine": {k: round(v / med["engine"], 4) for k, v in med.items()}},
    )


CASES = (
    options_case("mnist_kernels", "mnist", (Opt("xla_defaults", (), "default"), Opt("first_layer_rows", (("graph.first_layer", "rows"),)),
                                             Opt("single_task_vmapped", (("meta.outer_batch_mode", "vmap"),)))),
    options_case("mnist_remat", "mnist", (Opt("remat_none", (("meta.remat", False),)), Opt("remat_hidden", (("meta.remat", "hidden"),)),
                                           Opt("remat_dots", (("meta.remat", "dots"),))), rounds=3, aot=True, tags=("memory",)),
    options_case("mnist100_remat", "mnist", (Opt("remat_hidden", (("meta.remat", "hidden"),)),), rounds=2, calls=1, aot=True,
                 tags=("memory", "slow"), common=(("task.inner_steps", 100),)),
    options_case("mnist_device", "mnist", (Opt("unroll", (("meta.unroll", True),)), Opt("remat_none", (("meta.remat", False),)),
                                            Opt("unroll_remat_none", (("meta.unroll", True), ("meta.remat", False))),
                                            Opt("first_layer_rows", (("graph.first_layer", "rows"),)),
                                            Opt("tasks_map", (("meta.outer_batch_mode", "map"),))), rounds=3, tags=("device",)),
    options_case("mnist_ynn", "mnist", (Opt("ynn_dot_eltwise", (), {_YNN: f"{_T}DOT,{_T}ELTWISE"}),
                                         Opt("ynn_dot_eltwise_reduce", (), {_YNN: f"{_T}DOT,{_T}ELTWISE,{_T}REDUCE"})), tags=("ynn",)),
    options_case("sinusoid_tasks", "sinusoid", (Opt("tasks_vmap", (("meta.outer_batch_mode", "vmap"),)),), calls=10),
    options_case("mnist_chunk", "mnist", tuple(Opt(f"chunk_{n}", (("graph.chunk_rows", n),)) for n in (1024, 2048, 4096)), rounds=3, tags=("chunk",)),
    options_case("precision_mnist", "mnist", (Opt("bfloat16", (("graph.matmul", "bfloat16"),)),), loss_rtol=1e-2, param_tol=2.0, tags=("precision",)),
    options_case("precision_sinusoid", "sinusoid", (Opt("bfloat16", (("graph.matmul", "bfloat16"),)),), calls=10, loss_rtol=1e-2, param_tol=2.0,
                 tags=("precision",)),
    options_case("sinusoid_compile", "sinusoid", (Opt("fast_compile", (("meta.fast_compile", True),)),
                                                  Opt("no_expensive_llvm_passes", (), {"xla_llvm_disable_expensive_passes": True}),
                                                  Opt("fast_compile_no_expensive_llvm", (("meta.fast_compile", True),), {"xla_llvm_disable_expensive_passes": True})),
                 rounds=3, calls=5, tags=("compile",)),
)
