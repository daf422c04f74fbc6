"""Backprop steps: the engine's compiled backprop protocol (``mg.feedforward(...,
protocol="backprop")``, ``Program.step_carry``) against the hand-written chain rule (``direct``)
and ``jax.grad`` + SGD (``jaxgrad``) of tests/oracles/direct_backprop.py, each jitted alone (XLA's
defaults: ``jax.jit``). Kinds: ``step`` (one step: one timed unit, so the figure includes the
dispatch and the host sync), ``scan20`` (a ``lax.scan`` over 20 steps in one jit, as meta-training
runs the inner loop) and ``vmap4_scan20`` (the scan over 4 tasks side by side). Before timing,
the three must give the same parameters to 1e-5 after their first call."""

from __future__ import annotations

from functools import cache
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks.harness import Case, Variant
from tests.oracles import direct_backprop as db

SCAN_STEPS = 20  # inner steps per meta-training step on MNIST (paper section 4.2)
TASKS = 4
TOL = 1e-5


@cache
def _setup(net: str) -> dict[str, Any]:
    """The net's program, initial carries (one task, TASKS tasks) and batches (T, tasks, B, ...)."""
    import mplp_graph as mg

    cfg = db.NETS[net]
    prog = mg.compile_graph(mg.feedforward(cfg.sizes, cfg.activation, cfg.loss, lr=cfg.lr))
    key = jax.random.PRNGKey(0)
    state = prog.init(key, cfg.batch)
    states = jax.vmap(lambda k: prog.init(k, cfg.batch))(jax.random.split(key, TASKS))
    batches = db.make_batches(cfg, jax.random.fold_in(key, 1), SCAN_STEPS * TASKS)
    batches = {k: v.reshape((SCAN_STEPS, TASKS) + v.shape[1:]) for k, v in batches.items()}
    return {"cfg": cfg, "prog": prog, "params": prog.init_params(key), "state": state, "states": states, "batches": batches}


def _one(net: str, side: str):
    """``(carry, batch) -> (carry, loss)`` of one step of ``side``, and its carries for one and TASKS tasks."""
    s = _setup(net)
    cfg, prog = s["cfg"], s["prog"]
    if side == "engine":
        def one(st, b):
            st, out = prog.step_carry(s["params"], st, b)
            return st, out["loss"]

        return one, prog.carry_of(s["state"]), prog.carry_of(s["states"])
    fn = db.manual_step if side == "direct" else db.jaxgrad_step

    def one(ps, b):
        ps, (_, loss) = fn(cfg, ps, b["x"], b["y"])
        return ps, loss

    return one, db.engine_params(cfg, s["state"]), db.engine_params(cfg, s["states"])


def _variant(net: str, kind: str, side: str) -> Variant:
    def build():
        one, carry, carries = _one(net, side)
        b = _setup(net)["batches"]
        if kind == "step":
            f, c, arg = jax.jit(lambda c, x: one(c, x)[0]), carry, {k: v[0, 0] for k, v in b.items()}
        elif kind == "scan20":
            f, c, arg = jax.jit(lambda c, xs: jax.lax.scan(one, c, xs)[0]), carry, {k: v[:, 0] for k, v in b.items()}
        else:
            f, c, arg = jax.jit(lambda c, xs: jax.lax.scan(lambda cs, x: jax.vmap(one)(cs, x), c, xs)[0]), carries, b
        return lambda: f(c, arg)

    return Variant(side, build)


def _check(net: str):
    def check(outs: dict[str, Any]) -> dict:
        cfg = db.NETS[net]
        eng = db.engine_params(cfg, outs["engine"])
        diffs = {}
        for side in ("direct", "jaxgrad"):
            diffs[f"max_param_diff_{side}"] = max(float(jnp.max(jnp.abs(x - y))) for x, y in
                                                  zip(jax.tree_util.tree_leaves(eng), jax.tree_util.tree_leaves(outs[side]), strict=True))
            assert diffs[f"max_param_diff_{side}"] <= TOL, f"{cfg.name}: the engine's parameters and {side}'s differ: {diffs}"
        return diffs

    return check


def backprop_case(net: str, kind: str, calls: int, rounds: int = 7, tags: tuple = ()) -> Case:
    cfg = db.NETS[net]
    unit = {"step": "one step (dispatch and sync included)", "scan20": f"a jitted scan of {SCAN_STEPS} steps"}.get(
        kind, f"a jitted scan of {SCAN_STEPS} steps of {TASKS} tasks (vmap)")
    return Case(
        name=f"backprop_{net}_{kind}",
        variants=tuple(_variant(net, kind, side) for side in ("engine", "direct", "jaxgrad")),
        check=_check(net), rounds=rounds, calls=calls, tags=("backprop", *tags),
        params={"net": cfg.name, "sizes": list(cfg.sizes), "activation": cfg.activation, "loss": cfg.loss, "lr": cfg.lr,
                "batch": cfg.batch, "kind": kind, "unit": unit},
    )


CASES = tuple(
    backprop_case(net, kind, calls={"step": 300}.get(kind, 30), tags=("quick",) if net == "sinusoid" and kind == "scan20" else ())
    for net in ("mnist", "sinusoid") for kind in ("step", "scan20", f"vmap{TASKS}_scan20")
)
