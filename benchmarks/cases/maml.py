"""The MAML experiment's meta-steps (experiments/maml/run.py, built the way it builds them):
the engine's :class:`MamlStep` (``engine``: prior alone, 2 inner SGD steps on the forward-only
program, second-order meta-gradient, the outer update) against the same meta-step by hand
(``direct``: tests/oracles/direct_maml.py), and the engine's MAML+MPLP step (``mplp_faithful``:
:class:`JointStep`, learner and prior meta-trained, 2 MPLP inner steps; no hand-written version).
The key is the experiment's first training key. ``engine`` and ``direct`` must agree first
(meta-loss, meta-gradient, one full step)."""

from __future__ import annotations

from functools import cache
from typing import Any

import jax

from benchmarks.harness import Case, Variant
from mplp_graph import xla
from tests.oracles import direct_maml as dmaml


@cache
def _built() -> tuple[Any, dict, Any]:
    run = dmaml.load_experiment()
    s = run.Settings()
    contenders, family = dmaml.build(s)
    return s, contenders, family


def _variant(name: str, contender: str) -> Variant:
    def build():
        s, c, _ = _built()
        con = c[contender]
        step = xla.jit(con.fn)
        key = jax.random.fold_in(jax.random.PRNGKey(s.seed + 2), 0)  # the experiment's first meta-training key
        return lambda: step(con.params, con.opt, con.mask, con.pool, key)

    return Variant(name, build, note=contender)


def _check(outs: dict[str, Any]) -> dict:
    s, c, _ = _built()
    figures = dmaml.compare_steps(s, c, outs["engine"], outs["direct"])
    for k, out in outs.items():
        assert bool(out[2]["finite"]), f"{k}: non-finite first meta-step"
    return figures


def _case() -> Case:
    return Case(
        name="maml_meta_step",
        variants=(_variant("engine", "maml"), _variant("direct", "maml_direct"), _variant("mplp_faithful", "mplp_faithful")),
        check=_check, rounds=5, calls=100, tags=("quick", "maml"),
        params={"experiment": "experiments/maml/run.py", "sizes": [1, 20, 20, 1], "inner_steps": 2, "batch": 10, "cv_points": 20,
                "outer_batch": 4, "unit": "one meta-step (outer batch 4, 2 inner steps, second-order meta-gradient, Adam)"},
    )


CASES = (_case(),)
