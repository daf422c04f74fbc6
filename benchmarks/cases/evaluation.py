"""The evaluation protocol (the authors' code as docs/mplp.md describes it): N runs of a learned learner from fresh priors,
in one jit (:func:`mplp_graph.meta.evaluate.evaluate_mplp`), with an untrained learner whose
standardizers come from one init rollout (the timing does not depend on the learner's values).
MNIST: 20 steps of batch 8, accuracy on 100 test images after each step (needs MNIST:
:mod:`mplp_graph.tasks.mnist` lists its sources); sinusoid: 5 steps of batch 10, the eval loss before and after each step.
Variants: how the runs are batched (mplp_graph.meta.batching): ``engine`` is the default
(``auto``: one run after another on the CPU, vmapped elsewhere), ``vmap`` all runs at once;
both must give the same mean curve."""

from __future__ import annotations

from functools import cache
from typing import Any

import jax
import numpy as np

from benchmarks.harness import Case, Variant
from benchmarks.setups import experiment_setup

METRIC = {"mnist": ("accuracy", slice(1, None), 0.05), "sinusoid": ("loss", slice(None), 1e-6)}  # metric, columns, atol


@cache
def _setup(name: str):
    return experiment_setup(name)


def _variant(name: str, vname: str, mode: str, runs: int) -> Variant:
    def build():
        from mplp_graph.meta.evaluate import evaluate_mplp

        setup, params = _setup(name)
        metric, cols, _ = METRIC[name]
        key = jax.random.PRNGKey(0)
        return lambda: evaluate_mplp(setup.prog, setup.fwd, params, setup.family, key, runs, data=setup.data, mode=mode)[metric][:, cols]

    return Variant(vname, build, note=f"evaluate_mplp(mode={mode!r})")


def _agree(name: str):
    def check(outs: dict[str, Any]) -> dict:
        curves = {k: np.mean(np.asarray(v), 0) for k, v in outs.items()}
        base = curves["engine"]
        diff = {k: float(np.max(np.abs(c - base))) for k, c in curves.items()}
        for k, c in curves.items():
            assert np.all(np.isfinite(c)), f"eval {name}: non-finite results in {k}"
            assert np.allclose(c, base, rtol=1e-3, atol=METRIC[name][2]), f"eval {name}: {k} disagrees with the default: {diff}"
        return {"mean_curve_max_abs_diff": diff, "final_" + METRIC[name][0]: float(base[-1])}

    return check


def eval_case(case: str, name: str, runs: int, modes: tuple[str, ...], rounds: int, tags: tuple = ()) -> Case:
    variants = tuple(_variant(name, "engine" if m == "auto" else m, m, runs) for m in modes)
    return Case(
        name=case, variants=variants, baseline=variants[-1].name if len(variants) > 1 else "direct",
        check=_agree(name), rounds=rounds, params={"experiment": name, "runs": runs, "unit": f"{runs} evaluation runs"}, tags=tags,
    )


CASES = (
    eval_case("eval_mnist", "mnist", 100, ("auto",), rounds=2, tags=("eval",)),
    eval_case("eval_sinusoid", "sinusoid", 100, ("auto", "vmap"), rounds=3, tags=("eval",)),
    eval_case("eval_sinusoid_small", "sinusoid", 10, ("auto", "vmap"), rounds=2, tags=("quick", "eval")),
)
