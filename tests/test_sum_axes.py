"""benchmarks/cases/sum_axes.py compares two really different programs: each variant of the
engine's sum is traced from a program of its own (a shared step function once let JAX's trace
cache hand both variants one program), and both compute the same thing."""

from __future__ import annotations

import jax
import numpy as np

from benchmarks.cases import sum_axes as sum_axes_bench
from mplp_graph.runtime import route


def test_contraction_helper_sums():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 5))
    np.testing.assert_allclose(sum_axes_bench.contraction(x, [0, 2], 0.5), 0.5 * np.asarray(x).sum((0, 2)), rtol=1e-5)
    np.testing.assert_allclose(route.sum_axes(x, [1], 2.0), 2.0 * np.asarray(x).sum(1), rtol=1e-5)


def test_variants_compile_to_different_programs_with_the_same_result():
    sizes, batch = (1, 4, 1), 3
    key = jax.random.PRNGKey(0)
    xs = jax.random.normal(key, (20, 4, batch, 1))
    ys = jax.random.normal(jax.random.fold_in(key, 1), (20, 4, batch, 1))
    out, hlo = {}, {}
    for name, fn in sum_axes_bench.VARIANTS.items():
        compiled, carry = sum_axes_bench.backprop_scan(sizes, "relu", "l2", batch, fn, jax.jit, key, xs, ys)
        hlo[name] = compiled.as_text()
        out[name] = compiled(carry, xs, ys)
    assert sorted(hlo) == ["contraction", "jnp.sum"]
    assert hlo["contraction"] != hlo["jnp.sum"]
    # the library's form has no dot with a vector of ones where the contraction has one
    assert hlo["contraction"].count(" dot(") > hlo["jnp.sum"].count(" dot(")
    for a, b in zip(jax.tree_util.tree_leaves(out["contraction"]), jax.tree_util.tree_leaves(out["jnp.sum"])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert float(np.abs(np.asarray(out["jnp.sum"]["W1"]["w"]) - np.asarray(carry["W1"]["w"])).max()) > 1e-4  # it trained
