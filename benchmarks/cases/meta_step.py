"""MPLP meta-steps: the engine's jitted :class:`MetaStep` against the hand-written jax.numpy
version (tests/oracles/direct_mplp.py), both with each inner step under ``jax.checkpoint`` (the
engine's default ``meta.remat``). One timed unit is one meta-step (sample priors and tasks, inner
loop, hint + CV loss, meta-gradient, per-leaf normalization, Adam) from the same state and key.
Before timing, the two first steps must agree (``direct_mplp.compare_steps``: loss, the
normalized meta-gradient, the new parameters)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from benchmarks.harness import Case, Variant
from mplp_graph import xla
from tests.oracles import direct_mplp as dm


class SharedBench:
    """One :func:`direct_mplp.build` per case, made by whichever variant is built first."""

    def __init__(self, cfg: dm.MetaConfig, grad_tol: float = dm.GRAD_TOL):
        self.cfg, self.grad_tol, self._b = cfg, grad_tol, None

    def get(self) -> dm.Bench:
        if self._b is None:
            self._b = dm.build(self.cfg, 0, direct_remat=True)
        return self._b

    def variant(self, side: str) -> Variant:
        def build():
            b = self.get()
            step = xla.jit((b.engine if side == "engine" else b.direct).__call__)
            args = b.args(side, jax.random.PRNGKey(100))
            return lambda: step(*args)

        return Variant(side, build, note="xla.jit(MetaStep.__call__)" if side == "engine" else "tests/oracles/direct_mplp.py, remat")

    def check(self, outs: dict[str, Any]) -> dict:
        figures = dm.compare_steps(self.get(), outs["engine"], outs["direct"], self.grad_tol)
        self._b = None  # built again (cheaply) if the case runs again; frees the pool meanwhile
        return figures


def meta_step_case(name: str, cfg: dm.MetaConfig, calls: int, rounds: int = 5, tags: tuple = (), grad_tol: float = dm.GRAD_TOL) -> Case:
    shared = SharedBench(cfg, grad_tol)
    unit = (f"one meta-step: outer batch {cfg.outer_batch}, {cfg.inner_steps} inner steps of batch {cfg.batch}, "
            f"CV on {cfg.cv_points} points, meta-gradient + Adam")
    return Case(
        name=name,
        variants=(shared.variant("engine"), shared.variant("direct")),
        check=shared.check,
        rounds=rounds,
        calls=calls,
        params={**dataclasses.asdict(cfg), "remat": True, "unit": unit},
        tags=tags,
    )


SMALL = dataclasses.replace(dm.CONFIGS["mnist"], name="mnist_small", sizes=(16, 8, 4), inner_steps=3, pool=4)
SMALL_SINUSOID = dataclasses.replace(dm.CONFIGS["sinusoid"], name="sinusoid_small", sizes=(1, 8, 8, 1), inner_steps=3, pool=8)

CASES = (
    meta_step_case("mnist_meta_step", dm.CONFIGS["mnist"], calls=3),
    meta_step_case("sinusoid_meta_step", dm.CONFIGS["sinusoid"], calls=10),
    # ~700 GFLOP per meta-step; float32 rounding over 20 inner steps of the wider net reaches ~1e-4
    meta_step_case("mnist784_meta_step", dm.mnist_config(784, 100), calls=1, rounds=3, tags=("slow",), grad_tol=1e-3),
    # smoke runs of both comparisons (CE with shared learners; L2 with a learner per tensor)
    meta_step_case("small_meta_step", SMALL, calls=5, rounds=2, tags=("quick",)),
    meta_step_case("small_sinusoid_meta_step", SMALL_SINUSOID, calls=5, rounds=2, tags=("quick",)),
)
