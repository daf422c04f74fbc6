"""The printer, the topology views (networkx, DOT, pictures) and the compile report."""

from __future__ import annotations

import re

import jax
import pytest

import mplp_graph as mg
from mplp_graph.compile.report import CompileReport, compile_report
from mplp_graph.ir.spec import ArrowSpec, FieldSpec, GraphSpec, GroupSpec, OpRef
from mplp_graph.viz.draw import group_layers


@pytest.fixture(scope="module")
def sinusoid() -> GraphSpec:
    return mg.feedforward((1, 20, 20, 1), "relu", "l2")


def _dense_graph() -> GraphSpec:
    """Two dense arrows sharing key 'f' (3 -> 2) and one with its own parameters (2 -> 4)."""
    vec = lambda n: FieldSpec(shape=(n,), batched=True)  # noqa: E731
    return GraphSpec(
        name="dense_demo",
        groups={
            "a": GroupSpec(kind="input", shape=(4,), state={"v": vec(3)}),
            "b": GroupSpec(kind="hidden", shape=(4,), state={"h": vec(2)}),
            "c": GroupSpec(kind="hidden", shape=(4,), state={"h": vec(2), "o": vec(4)}),
            "d": GroupSpec(kind="out", shape=(2,), state={"o": vec(4)}),
        },
        arrows=(
            ArrowSpec(name="a->b", src="a", dst="b", op=OpRef(name="dense", args={"features": 2}), inputs=("v",), into="h", share="f"),
            ArrowSpec(name="a->c", src="a", dst="c", op=OpRef(name="dense", args={"features": 2}), inputs=("v",), into="h", share="f"),
            ArrowSpec(name="b->c", src="b", dst="c", phase="late", op=OpRef(name="dense", args={"features": 4}), inputs=("h",), into="o"),
            # an edge list: c[0], c[2] -> d[1]; c[1] -> d[0]
            ArrowSpec(name="c->d", src="c", dst="d", phase="late", op=OpRef(name="identity"), inputs=("o",), edges=((0, 1), (2, 1), (1, 0)), into="o"),
        ),
        inputs={"v": "a.v"},
        outputs={"o": "d.o"},
    )


# ---------------------------------------------------------------------------------------------
# format_graph


def test_format_graph_lines(sinusoid):
    text = mg.format_graph(sinusoid)
    lines = text.splitlines()
    assert lines[0] == "graph feedforward_1-20-20-1_relu_l2"
    assert lines[1] == "  dense net (1, 20, 20, 1), relu hidden, l2 loss, protocol backprop"
    for expected in (
        "    w  f32[] normal(0.05)",
        "    x  f32[] per-example const(1)",
        "    g  f32[] per-example const(0)",
        "  [1] x->W0: x --(i -> i j, mean)--> W0.x   identity(value)",
        "  [2] W0->b0: W0 --(i j -> j, sum)--> b0.z   mul(w, x)",
        "  [4] a0->W1: a0 --(i -> i j, mean)--> W1.x   relu(pre)",
        "  [10] loss.value: loss --(identity, mean)--> loss.loss   l2(pred, target)",
        "  [2] b2.sgd: b2 --(identity)--> b2   sgd(b, g; lr=0.1)   updates{b<-message}",
        "  [9] W0.sgd: W0 --(identity)--> W0   sgd_mul(w, x, g; lr=0.1)   updates{w<-message}",
        "  x -> x.value",
        "  pred <- loss.pred",
    ):
        assert expected in lines, expected
    assert re.search(r"^  W1 +weight +\[20, 20\]  \(400 agents\)$", text, re.M)
    assert text.index("phase forward:") < text.index("phase backward:") < text.index("inputs:")
    # each arrow printed exactly once
    assert sum(1 for ln in lines if re.match(r"  \[\d+\] ", ln)) == len(sinusoid.arrows)


def test_format_graph_is_deterministic(sinusoid):
    assert mg.format_graph(sinusoid) == mg.format_graph(mg.feedforward((1, 20, 20, 1), "relu", "l2"))


def test_format_graph_shares_and_edges():
    text = mg.format_graph(_dense_graph())
    assert "  [1] a->b: a --(identity, mean)--> b.h   dense(v; features=2)   share=f" in text
    assert "b->c: b --(identity, mean)--> c.o   dense(h; features=4)   share=b->c" in text  # default key: the arrow's name
    assert "c->d: c --(edges(3), mean)--> d.o   identity(o)" in text
    assert "v  f32[3] per-example" in text


# ---------------------------------------------------------------------------------------------
# to_networkx


def test_group_view_counts_and_attributes(sinusoid):
    g = mg.to_networkx(sinusoid)
    assert g.number_of_nodes() == 10  # x, (W, b) x 3, a x 2, loss
    # forward: x->W0, 3 W->b, 2 b->a, 2 a->W, b2->loss, loss.value = 10
    # backward: 3 x (b.sgd, b->W, W.sgd) + 2 x (W->a, a->b) + loss->b2 = 14
    assert g.number_of_edges() == 24
    assert sum(d["phase"] == "forward" for *_, d in g.edges(data=True)) == 10
    w1 = g.nodes["W1"]
    assert (w1["kind"], w1["shape"], w1["n_agents"]) == ("weight", (20, 20), 400)
    assert w1["fields"] == {"w": "f32[] normal(0.05)", "x": "f32[] per-example const(1)", "g": "f32[] per-example const(0)"}
    e = g.edges["W0", "b0", "W0->b0"]
    assert (e["phase"], e["op"], e["map"], e["aggregate"], e["into"], e["share"], e["stage"], e["reflexive"]) == (
        "forward", "mul", "i j -> j", "sum", "z", None, 1, False,
    )
    assert g.edges["b0", "a0", "b0->a0"]["map"] == "identity"


def test_group_view_parallel_and_reflexive_arrows(sinusoid):
    g = mg.to_networkx(sinusoid)
    # forward W->b and backward b->W between the same groups: both kept
    for l in range(3):
        assert g.has_edge(f"W{l}", f"b{l}", f"W{l}->b{l}") and g.has_edge(f"b{l}", f"W{l}", f"b{l}->W{l}")
        assert g.edges[f"b{l}", f"W{l}", f"b{l}->W{l}"]["phase"] == "backward"
    loops = sorted(k for u, v, k in g.edges(keys=True) if u == v)
    assert loops == ["W0.sgd", "W1.sgd", "W2.sgd", "b0.sgd", "b1.sgd", "b2.sgd", "loss.value"]
    assert all(d["reflexive"] == (u == v) for u, v, d in g.edges(data=True))


def test_agent_view_counts():
    spec = mg.feedforward((2, 3, 1), "relu", "l2")
    g = mg.to_networkx(spec, expand=True)
    # agents: x 2, W0 2*3, b0 3, a0 3, W1 3*1, b1 1, loss 1
    assert g.number_of_nodes() == 2 + 6 + 3 + 3 + 3 + 1 + 1
    forward = {
        "x->W0": 2 * 3,  # i -> i j: j ranges over W0's 3 columns
        "W0->b0": 2 * 3,  # i j -> j: every weight sends once
        "b0->a0": 3,
        "a0->W1": 3 * 1,
        "W1->b1": 3 * 1,
        "b1->loss": 1,
        "loss.value": 1,
    }
    backward = {
        "loss->b1": 1,
        "b1.sgd": 1,
        "b1->W1": 3,  # j -> i j
        "W1.sgd": 3,
        "W1->a0": 3,  # i j -> i
        "a0->b0": 3,
        "b0.sgd": 3,
        "b0->W0": 6,
        "W0.sgd": 6,
    }
    assert set(forward) | set(backward) == {a.name for a in spec.arrows}
    assert g.number_of_edges() == sum(forward.values()) + sum(backward.values()) == 52
    counts: dict[str, int] = {}
    for *_, d in g.edges(data=True):
        counts[d["arrow"]] = counts.get(d["arrow"], 0) + 1
    assert counts == {**forward, **backward}
    assert g.nodes["W0[1,2]"] == {"group": "W0", "index": (1, 2), "kind": "weight"}
    assert g.has_edge("x[1]", "W0[1,2]", "x->W0") and not g.has_edge("x[1]", "W0[0,2]")
    assert g.has_edge("W0[1,2]", "b0[2]", "W0->b0") and g.has_edge("b0[2]", "W0[1,2]", "b0->W0")
    assert g.has_edge("W1[2,0]", "a0[2]", "W1->a0")


def test_agent_view_edge_lists():
    g = mg.to_networkx(_dense_graph(), expand=True)
    pairs = sorted((u, v) for u, v, d in g.edges(data=True) if d["arrow"] == "c->d")
    assert pairs == [("c[0]", "d[1]"), ("c[1]", "d[0]"), ("c[2]", "d[1]")]


def test_agent_view_refuses_large_graphs():
    spec = mg.feedforward((2, 3, 1), "relu", "l2")
    with pytest.raises(ValueError, match=r"has 52 agent-level edges, more than max_edges=51; draw the group view"):
        mg.to_networkx(spec, expand=True, max_edges=51)
    mg.to_networkx(spec, expand=True, max_edges=52)
    with pytest.raises(ValueError, match="max_edges=5000"):
        mg.to_networkx(mg.feedforward((144, 50, 10), "sigmoid", "ce"), expand=True)


# ---------------------------------------------------------------------------------------------
# DOT and pictures


def test_to_dot(sinusoid):
    dot = mg.to_dot(sinusoid)
    assert dot.startswith('digraph "feedforward_1-20-20-1_relu_l2" {')
    assert "rankdir=LR;" in dot
    assert '"W1" [label="W1\\nweight [20, 20]", fillcolor=' in dot
    assert '"W0" -> "b0" [style="solid", color="#333333", label="i j -> j", tooltip="W0->b0"];' in dot
    assert '"b0" -> "W0" [style="dashed"' in dot
    assert '"loss" -> "loss" [style="solid"' in dot  # the reflexive loss arrow is a self-loop
    assert len(re.findall(r'^  "[^"]+" -> "[^"]+" \[', dot, re.M)) == 24
    assert dot.rstrip().endswith("}")
    expanded = mg.to_dot(mg.feedforward((2, 3, 1), "relu", "l2"), expand=True)
    assert '"W0[1,2]"' in expanded and len(re.findall(r'^  "[^"]+" -> "[^"]+" \[', expanded, re.M)) == 52


def test_to_dot_other_phase_dotted():
    dot = mg.to_dot(_dense_graph())
    assert '"b" -> "c" [style="dotted"' in dot


def test_layers_follow_forward_order(sinusoid):
    layers = group_layers(sinusoid)
    order = ["x", "W0", "b0", "a0", "W1", "b1", "a1", "W2", "b2", "loss"]
    assert [layers[n] for n in order] == list(range(10))


@pytest.mark.parametrize("suffix", ["png", "svg"])
def test_draw_writes_pictures(sinusoid, tmp_path, suffix):
    out = mg.draw_graph(sinusoid, tmp_path / f"g.{suffix}")
    data = out.read_bytes()
    assert len(data) > 1000
    if suffix == "png":
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert b"<svg" in data


def test_draw_variants(tmp_path):
    small = mg.feedforward((2, 3, 1), "relu", "l2")
    assert mg.draw_graph(small, tmp_path / "agents.png", expand=True).stat().st_size > 1000
    assert mg.draw_graph(mg.feedforward((3, 4, 2), "sigmoid", "ce"), tmp_path / "fw.png", phase="forward").stat().st_size > 1000
    assert mg.draw_graph(_dense_graph(), tmp_path / "dense.svg").stat().st_size > 1000
    assert mg.draw_graph(small, tmp_path / "g.dot").read_text() == mg.to_dot(small)
    with pytest.raises(ValueError, match="has no arrows in phase 'sideways'"):
        mg.draw_graph(small, tmp_path / "x.png", phase="sideways")


# ---------------------------------------------------------------------------------------------
# compile report


def test_compile_report_feedforward():
    prog = mg.compile_graph(mg.feedforward((144, 50, 10), "sigmoid", "ce"))
    report = prog.report()
    assert isinstance(report, CompileReport)
    assert report.n_params == 0 and report.params == {}
    assert report.flops is not None and report.flops > 0
    rows = {r.arrows: r for r in report.rows}
    for l, agents in ((0, 144 * 50), (1, 50 * 10)):
        row = rows[(f"W{l}->b{l}",)]
        assert (row.phase, row.op, row.lowering, row.agents, row.message) == ("forward", "mul", "einsum", agents, (1,))
    assert rows[("x->W0",)].lowering == "broadcast"
    assert rows[("W0.sgd",)].lowering == "local" and rows[("W0.sgd",)].message is None
    assert len(report.rows) == sum(len(k) for stages in prog.phases.values() for k in stages)
    # state: per-example fields at batch 1 plus the weights; W0.x is stored once along j
    assert report.state_size == sum(x.size for g in prog.init(jax.random.PRNGKey(0)).values() for x in g.values())
    text = str(report)
    assert "W0->b0" in text and "einsum" in text and "parameters: 0" in text and "flops per step" in text
    assert compile_report(prog, 8).flops > report.flops  # more examples, more work


def test_compile_report_dense_params():
    report = mg.compile_graph(_dense_graph()).report(batch_size=2)
    # share 'f': kernel (3, 2) + bias (2); 'b->c': kernel (2, 4) + bias (4)
    assert report.params == {"f": 3 * 2 + 2, "b->c": 2 * 4 + 4}
    assert report.n_params == 20
    rows = {r.arrows: r for r in report.rows}
    fused = rows[("a->b", "a->c")]  # one kernel: the two arrows share parameters in one stage
    assert (fused.share, fused.agents, fused.in_features, fused.message, fused.lowering) == ("f", 8, ((3,),), (2,), "broadcast")
    assert rows[("c->d",)].lowering == "gather+segment"
    assert report.state_size == 2 * 4 * (3 + 2 + 2 + 4) + 2 * 2 * 4
    assert re.search(r"^  f\s+8$", str(report), re.M)
