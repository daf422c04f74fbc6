"""The compiled step against the slow reference interpreter (runtime/interpret.py), plus the
transformations a step must survive: jit, no retrace, vmap over tasks, lax.scan over steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mplp_graph as mg
from mplp_graph.ir.spec import ArrowSpec, FieldSpec, GraphSpec, GroupSpec, OpRef, ScheduleSpec
from mplp_graph.runtime.interpret import interpret_step
from random_graphs import describe, random_graph, random_values

RTOL, ATOL = 1e-5, 1e-6
N_STEPS = 2


def assert_close(got, want, what: str = "", rtol=RTOL, atol=ATOL) -> None:
    """Equal pytrees of arrays (dicts of dicts), leaf by leaf with its path in the message."""
    if isinstance(want, dict):
        assert set(got) == set(want), f"{what}: keys {sorted(got)} != {sorted(want)}"
        for k in want:
            assert_close(got[k], want[k], f"{what}.{k}" if what else str(k), rtol, atol)
        return
    if isinstance(want, (tuple, list)):
        assert len(got) == len(want), f"{what}: {len(got)} items != {len(want)}"
        for k, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{what}[{k}]", rtol, atol)
        return
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=rtol, atol=atol, err_msg=what)


def check_against_interpreter(spec: GraphSpec, seed: int = 0, batch_size: int = 2) -> mg.Program:
    prog = mg.compile_graph(spec)
    params, state, batch = random_values(prog, seed, batch_size)
    step = jax.jit(prog.step)
    got, want = state, state
    for k in range(N_STEPS):
        got, got_out = step(params, got, batch)
        want, want_out = interpret_step(spec, params, want, batch)
        try:
            assert_close(got, want, f"step {k} state")
            assert_close(got_out, want_out, f"step {k} outputs")
        except AssertionError as e:
            raise AssertionError(f"{e}\n\ngraph:\n{describe(spec)}") from None
    return prog


# ---------------------------------------------------------------------------------------------
# fused kernels (arrows sharing a key in one stage) writing into fields stored once along an axis:
# the fused call computes full agent axes and the writer keeps one copy (lower.write)


def fused_constant_write(prog: mg.Program) -> bool:
    """Does a fused kernel write into a field stored once along an axis of size > 1?"""
    for stages in prog.phases.values():
        for kernels in stages:
            for kernel in kernels:
                if len(kernel.arrows) < 2:
                    continue
                for plan in kernel.arrows:
                    a, src = plan.spec, prog.spec.groups[plan.spec.src]
                    if any(src.shape[ax] > 1 for f in a.updates for ax in src.state[f].constant_along):
                        return True
                    if a.into is not None:
                        dst, m = prog.spec.groups[a.dst], plan.conn.index_map
                        if any(dst.shape[ax] > 1 and m.dst[ax] in m.src for ax in dst.state[a.into].constant_along):
                            return True
    return False


def test_random_graphs_cover_fused_constant_writes():
    """The random seeds include graphs where a fused kernel writes a field stored once."""
    assert any(fused_constant_write(mg.compile_graph(random_graph(seed))) for seed in range(44))


@pytest.mark.parametrize("seed", range(44))
def test_random_graph_matches_interpreter(seed):
    check_against_interpreter(random_graph(seed), seed)


@pytest.mark.parametrize("seed", range(100, 106))
def test_random_graph_shared_plain_ops_matches_interpreter(seed):
    check_against_interpreter(random_graph(seed, share_plain_ops=True), seed)


# ---------------------------------------------------------------------------------------------
# hand-written graphs for the cases that matter most


def F(shape=(), batched=False, const=()):
    return FieldSpec(shape=shape, batched=batched, constant_along=const)


def A(name, src, dst, op, inputs, *, phase="forward", args=None, **kw):
    return ArrowSpec(name=name, src=src, dst=dst, phase=phase, op=OpRef(name=op, args=args or {}), inputs=tuple(inputs), **kw)


def edges_spec() -> GraphSpec:
    """Edge lists with multi-edges and agents receiving nothing, every aggregate, a rank-0
    source, and inboxes that mix an edge list with an index map."""
    groups = {
        "s": GroupSpec(kind="s", shape=(3,), state={"v": F(batched=True), "w": F((2,))}),
        "one": GroupSpec(kind="one", state={"v": F(batched=True)}),
        "d": GroupSpec(
            kind="d",
            shape=(2, 2),
            state={"sum": F(), "mean": F(batched=True), "max": F((2,)), "mix_mean": F(batched=True), "mix_max": F(batched=True)},
        ),
    }
    arrows = (
        A("e_sum", "s", "d", "identity", ["v"], edges=((0, 0), (0, 0), (2, 1), (1, 3)), aggregate="sum", into="sum"),
        A("e_sum0", "one", "d", "sub", ["v", "v"], edges=((0, 1),), aggregate="sum", into="sum"),
        A("e_mean", "s", "d", "tanh", ["v"], edges=((1, 0), (1, 0), (2, 0), (0, 3)), aggregate="mean", into="mean"),
        A("e_max", "s", "d", "sub", ["w", "v"], edges=((0, 1), (2, 1), (2, 1)), aggregate="max", into="max"),
        A("m_mean", "s", "d", "identity", ["v"], map="i -> j k", aggregate="mean", into="mix_mean"),
        A("e_mean2", "one", "d", "identity", ["v"], edges=((0, 0), (0, 0)), aggregate="mean", into="mix_mean"),
        A("m_max", "one", "d", "sigmoid", ["v"], map="-> j k", aggregate="max", into="mix_max"),
        A("e_max2", "s", "d", "identity", ["v"], edges=((0, 2), (1, 2), (1, 2)), aggregate="max", into="mix_max"),
        A("back", "d", "s", "identity", ["mean"], phase="backward", edges=((3, 0), (3, 0), (0, 2)), aggregate="max", into="v"),
    )
    return GraphSpec(name="edges", groups=groups, arrows=arrows, outputs={"max": "d.max"})


def max_map_spec() -> GraphSpec:
    """``max`` through index maps: reductions, a transpose, a broadcast, constant inputs."""
    groups = {
        "a": GroupSpec(kind="a", shape=(2, 3), state={"p": F(batched=True), "q": F((2,)), "c": F(batched=True, const=(0,))}),
        "b": GroupSpec(kind="b", shape=(3,), state={"mx": F(batched=True), "mv": F((2,), batched=True), "mc": F()}),
        "c": GroupSpec(kind="c", shape=(3, 2), state={"t": F(batched=True)}),
    }
    arrows = (
        A("red", "a", "b", "identity", ["p"], map="i j -> j", aggregate="max", into="mx"),
        A("vec", "a", "b", "sub", ["q", "p"], map="ij->j", aggregate="max", into="mv"),
        A("const", "a", "b", "relu", ["c"], map="i j -> j", aggregate="max", into="mc"),
        A("transpose", "a", "c", "identity", ["p"], map="i j -> j i", aggregate="max", into="t"),
        A("bcast", "b", "a", "tanh", ["mx"], phase="backward", map="j -> i j", aggregate="max", into="p"),
    )
    return GraphSpec(name="max_map", groups=groups, arrows=arrows)


def constant_spec() -> GraphSpec:
    """Fields stored once along agent axes: written by broadcasts, read by reductions (sum of n
    equal messages, einsum with constant operands), updated in place."""
    groups = {
        "x": GroupSpec(kind="x", shape=(3,), state={"value": F(batched=True)}),
        "W": GroupSpec(
            kind="W",
            shape=(3, 2),
            state={"w": F(), "x": F(batched=True, const=(1,)), "g": F(batched=True, const=(0,)), "c": F(const=(0, 1))},
        ),
        "y": GroupSpec(kind="y", shape=(2,), state={"z": F(batched=True), "zz": F(batched=True), "zm": F(batched=True), "g": F(batched=True)}),
        "v": GroupSpec(kind="v", shape=(3,), state={"s": F(batched=True), "t": F(), "u": F()}),
    }
    arrows = (
        A("in", "x", "W", "identity", ["value"], map="i -> i j", into="x"),
        A("wx", "W", "y", "mul", ["w", "x"], map="i j -> j", aggregate="sum", into="z"),
        A("xx", "W", "y", "mul", ["x", "x"], map="i j -> j", aggregate="mean", into="zz"),
        A("xmax", "W", "y", "identity", ["x"], map="i j -> j", aggregate="max", into="zm"),
        A("xsum", "W", "v", "identity", ["x"], map="i j -> i", aggregate="sum", into="s"),
        A("cc", "W", "v", "mul", ["c", "c"], map="i j -> i", aggregate="sum", into="t"),
        A("cw", "W", "v", "mul", ["c", "w"], map="i j -> i", aggregate="mean", into="u"),
        A("gy", "y", "W", "identity", ["g"], phase="backward", map="j -> i j", into="g"),
        A("sgd", "W", "W", "sgd_mul", ["w", "x", "g"], phase="backward", args={"lr": 0.1}, updates={"w": "message"}),
        A("csig", "W", "W", "sigmoid", ["c"], phase="backward", updates={"c": "message"}),
    )
    return GraphSpec(name="constant", groups=groups, arrows=arrows, inputs={"x": "x.value"}, outputs={"z": "y.z"})


def fused_spec() -> GraphSpec:
    """Four dense arrows with one share key in one stage: one fused kernel (two of them into one
    inbox, one updating a source field that the others read) and a two-input tanh dense pair."""
    dense = {"features": 3}
    groups = {
        "a": GroupSpec(kind="a", shape=(2,), state={"h": F((3,), batched=True), "o": F((3,), batched=True), "k": F((2,))}),
        "b": GroupSpec(kind="b", shape=(2, 2), state={"h": F((3,)), "o": F((3,), batched=True), "k": F((2,), batched=True), "r": F()}),
    }
    arrows = (
        A("d1", "a", "a", "dense", ["h"], args=dense, share="net", into="o"),
        A("d2", "b", "b", "dense", ["h"], args=dense, share="net", into="o"),
        A("d3", "b", "a", "dense", ["h"], args=dense, share="net", map="i j -> i", aggregate="mean", into="o"),
        A("d4", "a", "a", "dense", ["h"], args=dense, share="net", updates={"h": "message"}),
        A("t1", "a", "b", "dense", ["h", "k"], args={"features": 1, "activation": "tanh"}, share="t", map="i -> i j", aggregate="sum", into="r"),
        A("t2", "b", "b", "dense", ["h", "k"], args={"features": 1, "activation": "tanh"}, share="t", edges=((0, 1), (0, 1), (3, 1)), aggregate="sum", into="r"),
    )
    schedule = ScheduleSpec(phases={"forward": (("d1", "d2", "d3", "d4"), ("t1", "t2"))})
    return GraphSpec(name="fused", groups=groups, arrows=arrows, schedule=schedule)


@pytest.mark.parametrize("make", [edges_spec, max_map_spec, constant_spec], ids=lambda f: f.__name__)
def test_hand_written_graph_matches_interpreter(make):
    check_against_interpreter(make())


def test_fused_shared_kernels_match_interpreter():
    prog = check_against_interpreter(fused_spec())
    assert [len(k.arrows) for k in prog.phases["forward"][0]] == [4]
    assert [len(k.arrows) for k in prog.phases["forward"][1]] == [2]


@pytest.mark.parametrize("batch_size", [1, 3])
def test_batch_sizes_match_interpreter(batch_size):
    check_against_interpreter(random_graph(3), seed=3, batch_size=batch_size)
    check_against_interpreter(constant_spec(), batch_size=batch_size)


@pytest.mark.parametrize(
    "args", [((3, 4, 2), "tanh", "l2"), ((3, 4, 3), "sigmoid", "ce")], ids=["tanh_l2", "sigmoid_ce"]
)
def test_feedforward_matches_interpreter(args):
    check_against_interpreter(mg.feedforward(*args))


def fused_constant_spec(kind: str) -> GraphSpec:
    groups = {
        "a": GroupSpec(kind="a", shape=(2,), state={"v": F((2,), const=(0,)), "u": F(const=(0,))}),
        "b": GroupSpec(kind="b", shape=(2,), state={"v": F((2,)), "out": F()}),
    }
    dense = {"features": 1}
    if kind == "updates":
        a1 = A("A1", "a", "a", "dense", ["v"], args=dense, share="k", updates={"u": "message"})
    else:
        a1 = A("A1", "a", "a", "dense", ["v"], args=dense, share="k", into="u")
    a2 = A("A2", "b", "b", "dense", ["v"], args=dense, share="k", into="out")
    return GraphSpec(name="fused_constant", groups=groups, arrows=(a1, a2), schedule=ScheduleSpec(phases={"forward": (("A1", "A2"),)}))


@pytest.mark.parametrize("kind", ["updates", "into"])
def test_fused_kernel_writing_constant_field(kind):
    check_against_interpreter(fused_constant_spec(kind))


def test_fused_parameterless_ops():
    """Arrows of an op without parameters that share a key fuse into one kernel without params."""
    groups = {
        "a": GroupSpec(kind="a", shape=(2,), state={"x": F(batched=True), "y": F(batched=True)}),
        "b": GroupSpec(kind="b", shape=(3,), state={"x": F(), "y": F(batched=True)}),
    }
    arrows = (
        A("m1", "a", "a", "mul", ["x", "x"], share="m", into="y"),
        A("m2", "b", "b", "mul", ["x", "y"], share="m", into="y"),
    )
    spec = GraphSpec(name="plain_share", groups=groups, arrows=arrows)
    prog = check_against_interpreter(spec)
    assert [len(k.arrows) for k in prog.phases["forward"][0]] == [2]


# ---------------------------------------------------------------------------------------------
# transformations of the compiled step


def _graphs():
    return [mg.feedforward((3, 4, 2), "tanh", "l2"), random_graph(39)]


@pytest.mark.parametrize("which", [0, 1], ids=["feedforward", "random"])
def test_jit_equals_no_jit(which):
    prog = mg.compile_graph(_graphs()[which])
    params, state, batch = random_values(prog, 7)
    assert_close(jax.jit(prog.step)(params, state, batch), prog.step(params, state, batch), "step")


@pytest.mark.parametrize("which", [0, 1], ids=["feedforward", "random"])
def test_no_retrace_on_new_values(which):
    prog = mg.compile_graph(_graphs()[which])
    traces = []

    def step(params, state, batch):
        traces.append(1)  # runs only while tracing
        return prog.step(params, state, batch)

    jitted = jax.jit(step)
    params, state, batch = jax.tree_util.tree_map(jnp.asarray, random_values(prog, 1))
    state, _ = jitted(params, state, batch)
    params2, _, batch2 = jax.tree_util.tree_map(jnp.asarray, random_values(prog, 2))
    state, _ = jitted(params2, state, batch2)  # new values, same shapes, state from the step
    jax.block_until_ready(state)
    assert len(traces) == 1
    if hasattr(jitted, "_cache_size"):
        assert jitted._cache_size() == 1


def _stack(trees):
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


@pytest.mark.parametrize("which", [0, 1], ids=["feedforward", "random"])
def test_vmap_over_tasks(which):
    prog = mg.compile_graph(_graphs()[which])
    params, _, _ = random_values(prog, 0)
    tasks = [random_values(prog, 10 + t)[1:] for t in range(3)]
    states, batches = _stack([s for s, _ in tasks]), _stack([b for _, b in tasks])
    got = jax.jit(jax.vmap(prog.step, in_axes=(None, 0, 0)))(params, states, batches)
    step = jax.jit(prog.step)
    want = _stack([step(params, s, b) for s, b in tasks])
    assert_close(got, want, "vmap")


@pytest.mark.parametrize("which", [0, 1], ids=["feedforward", "random"])
def test_scan_over_steps(which):
    prog = mg.compile_graph(_graphs()[which])
    params, state, _ = random_values(prog, 0)
    batches = [random_values(prog, 20 + t)[2] for t in range(3)]

    @jax.jit
    def scanned(params, state, batches):
        return jax.lax.scan(lambda s, b: prog.step(params, s, b), state, batches)

    got_state, got_out = scanned(params, state, _stack(batches))
    step = jax.jit(prog.step)
    outs = []
    for b in batches:
        state, out = step(params, state, b)
        outs.append(out)
    assert_close(got_state, state, "scan state")
    assert_close(got_out, _stack(outs), "scan outputs")
