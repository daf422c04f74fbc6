"""The engine's sums over agent axes: a plain ``jnp.sum`` (the library's
``mplp_graph.runtime.route.sum_axes``: ``engine``) or a contraction with vectors of ones (the
form an earlier engine used: ``contraction``), in a 20-step ``lax.scan`` of 4 vmapped backprop
steps (``mg.feedforward``) of the sinusoid (1, 20, 20, 1) and MNIST (144, 50, 10) nets, under the
library's XLA options. Each variant is traced with its own ``sum_axes`` (patched while tracing
only, from a program and step function of its own, so that JAX's trace caches cannot hand one
variant's trace to another: the check verifies that the two compiled programs differ and that
they compute the same)."""

from __future__ import annotations

import contextlib
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks.harness import Case, Variant
from mplp_graph import xla
from mplp_graph.runtime import lower, route


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
NETS = {"sinusoid": ((1, 20, 20, 1), "relu", "l2", 10), "mnist": ((144, 50, 10), "sigmoid", "ce", 8)}


def backprop_scan(sizes, act, loss, batch, fn, jit, key, xs, ys):
    """A 20-step scan of 4 vmapped backprop steps, compiled with ``fn`` as the engine's sum
    (a fresh program and step function, so that no trace cache is shared between variants):
    ``(compiled, initial carry)``."""
    import mplp_graph as mg

    prog = mg.compile_graph(mg.feedforward(sizes, act, loss, lr=0.05))
    carry = jax.vmap(lambda k: prog.carry_of(prog.init(k, batch)))(jax.random.split(key, 4))

    def step(c, b):
        return jax.vmap(lambda c, x, y: prog.step_carry({}, c, {"x": x, "y": y})[0])(c, *b), None

    with summing(fn):
        compiled = jit(lambda c, xs, ys: jax.lax.scan(step, c, (xs, ys))[0]).lower(carry, xs, ys).compile()
    return compiled, carry


def _data(net: str):
    sizes, _, loss, batch = NETS[net]
    key = jax.random.PRNGKey(0)
    xs = jax.random.normal(key, (20, 4, batch, sizes[0]))
    if loss == "ce":
        ys = jax.nn.one_hot(jax.random.randint(key, (20, 4, batch), 0, sizes[-1]), sizes[-1])
    else:
        ys = jax.random.normal(key, (20, 4, batch, 1))
    return key, xs, ys


def _variant(net: str, name: str, fn) -> Variant:
    def build():
        sizes, act, loss, batch = NETS[net]
        key, xs, ys = _data(net)
        compiled, carry = backprop_scan(sizes, act, loss, batch, fn, xla.jit, key, xs, ys)
        return lambda: (compiled(carry, xs, ys), compiled.as_text())

    return Variant(name, build, note="compiled ahead of time: the compile time is in build_s")


def _check(outs: dict[str, Any]) -> dict:
    (a, hlo_a), (b, hlo_b) = outs["engine"], outs["contraction"]
    assert hlo_a != hlo_b, "the contraction and jnp.sum programs are identical: the sum was not swapped"
    diff = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True))
    assert diff <= 1e-4, f"the sums disagree by {diff}"
    return {"max_abs_diff": diff}


CASES = tuple(
    Case(name=f"sum_axes_{net}", variants=(_variant(net, "engine", VARIANTS["jnp.sum"]), _variant(net, "contraction", contraction)),
         baseline="contraction", check=_check, rounds=20, calls=20, tags=("sum_axes",),
         params={"net": list(NETS[net][0]), "unit": "a jitted 20-step scan of 4 vmapped backprop steps", "xla": "library options"})
    for net in NETS
)
