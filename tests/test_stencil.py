"""Stencils (mplp_graph/ir/stencil.py): the shifted-slice lowering equals the edge-list lowering
and the reference interpreter on random grids for every boundary and aggregation; named kernels
equal their hand-written correlation; gradients through a stencil equal jax.grad of the same sum;
bad stencils are located errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_load import load_error

import mplp_graph as mg
from mplp_graph.ir.spec import ArrowSpec, FieldSpec, GraphSpec, GroupSpec, OpRef, StencilSpec
from mplp_graph.ir.stencil import neighbours, resolve_stencil
from mplp_graph.runtime.interpret import interpret_step
from mplp_graph.templates.grid import grid, neighbour_edges

SHAPE = (5, 4)


def sense_graph(conn: dict, aggregate: str, shape=SHAPE) -> GraphSpec:
    f = FieldSpec(batched=True, shape=(2,))
    return GraphSpec(
        name="sense",
        groups={"c": GroupSpec(kind="cell", shape=shape, state={"s": f, "n": f})},
        arrows=(ArrowSpec(name="sense", src="c", dst="c", op=OpRef(name="identity"), inputs=("s",), aggregate=aggregate, into="n", **conn),),
        inputs={"s": "c.s"},
        outputs={"n": "c.n"},
    )


def run(spec: GraphSpec, x: np.ndarray) -> np.ndarray:
    prog = mg.compile_graph(spec)
    _, out = prog.step({}, prog.init(jax.random.PRNGKey(0), x.shape[0]), {"s": x})
    return np.asarray(out["n"])


def as_edges(stencil: StencilSpec, shape=SHAPE) -> tuple[tuple[int, int], ...]:
    st = resolve_stencil(stencil, shape, shape, "sum")
    flat = lambda idx: int(np.ravel_multi_index(idx, shape))  # noqa: E731
    return tuple((flat(s), flat(d)) for s, d, _ in neighbours(st, shape))


X = np.random.RandomState(0).randn(3, *SHAPE, 2).astype(np.float32)
OFFSETS = ["moore", "von_neumann", ((0, 1), (2, -1), (-1, 0))]


@pytest.mark.parametrize("boundary", ["wrap", "none"])
@pytest.mark.parametrize("aggregate", ["sum", "mean", "max"])
@pytest.mark.parametrize("offsets", OFFSETS, ids=["moore", "von_neumann", "list"])
def test_stencil_equals_edge_list_and_interpreter(boundary, aggregate, offsets):
    st = StencilSpec(offsets=offsets, boundary=boundary)
    spec = sense_graph({"stencil": st}, aggregate)
    got = run(spec, X)
    edges = run(sense_graph({"edges": as_edges(st)}, aggregate), X)
    np.testing.assert_allclose(got, edges, rtol=1e-6, atol=1e-6)
    state = {g: {f: np.asarray(v) for f, v in fs.items()} for g, fs in mg.compile_graph(spec).init(jax.random.PRNGKey(0), 3).items()}
    _, ref = interpret_step(spec, {}, state, {"s": X})
    np.testing.assert_allclose(got, ref["n"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("boundary, mode", [("zero", "constant"), ("clamp", "edge"), ("wrap", "wrap")])
def test_named_kernels_are_correlations(boundary, mode):
    """sobel_x on a padded image: out[r, c] = sum_{dr, dc} k[dr, dc] x[r + dr, c + dc] (the
    Growing NCA article's perception, a depthwise correlation with 'SAME' padding for zero)."""
    kx = np.outer([1, 2, 1], [-1, 0, 1]) / 8.0
    for name, k in (("sobel_x", kx), ("sobel_y", kx.T)):
        got = run(sense_graph({"stencil": StencilSpec(offsets=name, boundary=boundary)}, "sum"), X)
        pad = np.pad(X, [(0, 0), (1, 1), (1, 1), (0, 0)], mode=mode)
        want = sum(k[dr + 1, dc + 1] * pad[:, 1 + dr : 1 + dr + SHAPE[0], 1 + dc : 1 + dc + SHAPE[1]] for dr in (-1, 0, 1) for dc in (-1, 0, 1))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_life_template_is_a_stencil_and_equals_the_edge_list_grid():
    spec = grid(9, 7, wrap=True)
    assert spec.arrow("sense").stencil is not None and spec.arrow("sense").edges is None
    edges = spec.model_copy(update={"arrows": (
        spec.arrow("sense").model_copy(update={"stencil": None, "edges": neighbour_edges(9, 7, "moore", None, True)}),
        spec.arrow("update"),
    )})
    x = (np.random.RandomState(1).rand(2, 9, 7) < 0.4).astype(np.float32)
    a, b = mg.compile_graph(spec), mg.compile_graph(edges)
    sa, sb = a.init(jax.random.PRNGKey(0), 2), b.init(jax.random.PRNGKey(0), 2)
    sa["cell"]["s"] = sb["cell"]["s"] = jnp.asarray(x)
    for _ in range(6):
        sa, _ = a.step({}, sa, {})
        sb, _ = b.step({}, sb, {})
    np.testing.assert_array_equal(np.asarray(sa["cell"]["s"]), np.asarray(sb["cell"]["s"]))
    assert "stencil(8 shifts, wrap)" in str(a.report(1))


def test_gradient_through_a_weighted_stencil():
    """A differentiable grid: n = sum_o w_o s[d + o] (zero boundary); d/ds of sum(n * t) from
    the engine's step equals jax.grad of the same expression written with jnp.pad."""
    st = StencilSpec(offsets=((0, 1), (1, 0), (0, 0)), weights=(0.5, -1.5, 2.0), boundary="zero")
    prog = mg.compile_graph(sense_graph({"stencil": st}, "sum"))
    t = np.random.RandomState(2).randn(*X.shape).astype(np.float32)

    def engine(x):
        _, out = prog.step({}, prog.init(jax.random.PRNGKey(0), x.shape[0]), {"s": x})
        return jnp.sum(out["n"] * t)

    def direct(x):
        p = jnp.pad(x, [(0, 0), (0, 1), (0, 1), (0, 0)])
        n = 0.5 * p[:, 0:5, 1:5] - 1.5 * p[:, 1:6, 0:4] + 2.0 * p[:, 0:5, 0:4]
        return jnp.sum(n * t)

    np.testing.assert_allclose(engine(X), direct(X), rtol=1e-5)
    np.testing.assert_allclose(jax.grad(engine)(jnp.asarray(X)), jax.grad(direct)(jnp.asarray(X)), rtol=1e-5, atol=1e-6)


def test_big_grid_builds_without_edge_lists():
    spec = grid(1024, 1024, wrap=True)
    prog = mg.compile_graph(spec)
    assert prog.plans[0].conn.edges is None and prog.plans[0].conn.stencil is not None


LIFE = mg.dump_graph(grid(8, 8, wrap=True, name="life"))
LINE = "  stencil: {offsets: moore, boundary: wrap}"


@pytest.mark.parametrize("new, path, words", [
    ("  stencil: {offsets: mooore, boundary: wrap}", "arrows[0].stencil.offsets", ["unknown neighbourhood 'mooore'", "Did you mean 'moore'?"]),
    ("  stencil: {offsets: moore, boundary: wrapp}", "arrows[0].stencil.boundary", ["expected one of 'wrap', 'zero', 'clamp' or 'none'", "Did you mean 'wrap'?"]),
    ("  stencil: {offsets: [[0, 9]], boundary: wrap}", "arrows[0].stencil.offsets[0]", ["offset [0, 9] reaches 9 agents along axis 1, which has only 8"]),
    ("  stencil: {offsets: [[0, 1, 0]], boundary: wrap}", "arrows[0].stencil.offsets[0]", ["has 3 elements, but the group has 2 agent axes"]),
    ("  stencil: {offsets: [[0, 1]], weights: [1, 2], boundary: zero}", "arrows[0].stencil.weights", ["one weight per offset (1), got 2"]),
    ("  stencil: {offsets: moore, boundary: wrap}\n  map: i j -> i j", "arrows[0]", ["give one of 'map', 'edges' or 'stencil'"]),
])
def test_bad_stencils_are_located(new, path, words):
    text = LIFE.replace(LINE, new)
    assert text != LIFE
    err = load_error(text)
    found = [(loc, msg) for loc, msg in err.issues if loc.path == path]
    assert found, err
    loc, msg = found[0]
    assert loc.line is not None and all(w in msg for w in words), msg


def test_stencil_between_groups_of_different_rank_or_on_a_non_grid():
    with pytest.raises(mg.GraphSpecError, match="groups of the same shape"):
        mg.compile_graph(GraphSpec(name="g", groups={
            "a": GroupSpec(kind="cell", shape=(4, 4), state={"s": FieldSpec(batched=True)}),
            "b": GroupSpec(kind="cell", shape=(16,), state={"s": FieldSpec(batched=True)}),
        }, arrows=(ArrowSpec(name="x", src="a", dst="b", op=OpRef(name="identity"), inputs=("s",), into="s",
                             stencil=StencilSpec(offsets=((1, 0),), boundary="wrap")),)))
    with pytest.raises(mg.GraphSpecError, match="is for 2-D grids"):
        mg.compile_graph(sense_graph({"stencil": StencilSpec(offsets="moore", boundary="wrap")}, "sum", shape=(6,)))
