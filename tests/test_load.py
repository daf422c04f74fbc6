"""The YAML loader: every graphs/*.yaml file runs; templates round-trip; bad documents give
located, explained errors (checked by their text: file, line, YAML path, key words)."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mplp_graph as mg
from mplp_graph.ir.layout import stored_shape

ROOT = Path(__file__).resolve().parent.parent
GRAPH_FILES = sorted((ROOT / "graphs").glob("*.yaml"))
FILE = "bad.yaml"

# A small valid graph: x(2) -> W(2,3) -> b(3) -> loss (l2), with the backprop protocol.
# The bad cases below are small text mutations of it.
BASE = """\
name: small
groups:
  x:
    kind: input
    shape: [2]
    state:
      value: {batched: true}
  W:
    kind: weight
    shape: [2, 3]
    state:
      w: {init: {kind: normal, std: 0.05}}
      x: {batched: true, constant_along: [1]}
      g: {batched: true, constant_along: [0]}
  b:
    kind: bias
    shape: [3]
    state:
      b: {}
      z: {batched: true}
      g: {batched: true}
  loss:
    kind: loss
    shape: [3]
    state:
      pred: {batched: true}
      target: {batched: true}
      loss: {batched: true}
      g: {batched: true}
arrows:
  - name: x->W
    from: x
    to: W
    op: identity
    inputs: [value]
    map: i -> i j
    into: x
  - name: W->b
    from: W
    to: b
    op: mul
    inputs: [w, x]
    map: i j -> j
    aggregate: sum
    into: z
  - name: b->loss
    from: b
    to: loss
    op: add
    inputs: [z, b]
    into: pred
  - name: loss.value
    from: loss
    to: loss
    op: l2
    inputs: [pred, target]
    into: loss
  - name: loss->b
    from: loss
    to: b
    phase: backward
    op: l2_grad
    inputs: [pred, target]
    into: g
  - name: b.sgd
    from: b
    to: b
    phase: backward
    op: {name: sgd, args: {lr: 0.1}}
    inputs: [b, g]
    updates: {b: message}
  - name: b->W
    from: b
    to: W
    phase: backward
    op: identity
    inputs: [g]
    map: j -> i j
    into: g
  - name: W.sgd
    from: W
    to: W
    phase: backward
    op: {name: sgd_mul, args: {lr: 0.1}}
    inputs: [w, x, g]
    updates: {w: message}
inputs: {x: x.value, y: loss.target}
outputs: {pred: loss.pred, loss: loss.loss}
"""


def mutate(old: str, new: str, text: str = BASE) -> str:
    """``text`` with the one occurrence of ``old`` replaced (so every mutation is unambiguous)."""
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times"
    return text.replace(old, new)


def line_of(text: str, line: str, nth: int = 0) -> int:
    """1-based number of the ``nth`` line of ``text`` equal to ``line``."""
    hits = [k + 1 for k, ln in enumerate(text.splitlines()) if ln == line]
    assert len(hits) > nth, f"line {line!r} not found"
    return hits[nth]


def col_of(text: str, line_no: int, fragment: str) -> int:
    return text.splitlines()[line_no - 1].index(fragment) + 1


def load_error(text: str | bytes) -> mg.GraphSpecError:
    with pytest.raises(mg.GraphSpecError) as info:
        mg.loads_graph(text, filename=FILE)
    return info.value


def issue(err: mg.GraphSpecError, path: str) -> tuple[mg.Location, str]:
    found = [(loc, msg) for loc, msg in err.issues if loc.path == path]
    assert found, f"no issue at {path!r}; got:\n{err}"
    return found[0]


def check(text: str | bytes, path: str, line: int, words: list[str], col: int | None = None) -> mg.GraphSpecError:
    """``text`` fails with an issue at ``path`` on ``line`` whose message contains ``words``."""
    err = load_error(text)
    loc, msg = issue(err, path)
    assert loc.file == FILE and loc.line == line, f"expected line {line}, got {loc}: {msg}"
    if col is not None:
        assert loc.column == col, f"expected column {col}, got {loc}"
    where = f"{FILE}:{line}:{loc.column}" + (f" {path}" if path else "")
    assert f"{where}: {msg}" in str(err)
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    return err


def test_base_is_valid():
    spec = mg.loads_graph(BASE, filename=FILE)
    assert [a.name for a in spec.arrows][:2] == ["x->W", "W->b"]
    mg.compile_graph(spec)


def count_verifications(monkeypatch) -> list[int]:
    """Count how often the verifier's rules run (one entry per run)."""
    from mplp_graph.ir import verify as verify_module

    calls: list[int] = []
    collect = verify_module.collect_issues

    def counted(g):
        calls.append(1)
        return collect(g)

    monkeypatch.setattr(verify_module, "collect_issues", counted)
    return calls


def test_load_and_compile_verify_once(monkeypatch):
    calls = count_verifications(monkeypatch)
    spec = mg.loads_graph(BASE, filename=FILE)
    mg.compile_graph(spec)
    mg.compile_graph(spec)
    assert len(calls) == 1


def test_compile_verifies_a_spec_built_in_python(monkeypatch):
    calls = count_verifications(monkeypatch)
    spec = mg.feedforward((2, 3, 1), "relu", "l2", lr=0.1)
    mg.compile_graph(spec)
    assert len(calls) == 1
    # a changed copy of a verified spec is verified again, and refused when it is wrong
    bad = mg.loads_graph(BASE, filename=FILE)
    bad = bad.model_copy(update={"arrows": bad.arrows + (bad.arrows[0],)})
    with pytest.raises(mg.GraphSpecError, match="already used"):
        mg.compile_graph(bad)


# ---------------------------------------------------------------------------------------------
# every file in graphs/ loads, verifies, compiles and runs


def fake_batch(spec: mg.GraphSpec, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    batch = {}
    for key, ref in spec.inputs.items():
        g, f = ref.split(".")
        shape = stored_shape(spec.groups[g], spec.groups[g].state[f], batch_size)
        batch[key] = rng.uniform(0.0, 1.0, size=shape).astype(np.float32)
    return batch


def test_graph_files_exist():
    names = {p.name for p in GRAPH_FILES}
    assert {"sinusoid_mlp.yaml", "mnist_mlp.yaml", "skip_mlp.yaml"} <= names


@pytest.mark.parametrize("path", GRAPH_FILES, ids=lambda p: p.name)
def test_graph_file_runs(path):
    spec = mg.load_graph(path)
    assert mg.verify(spec) is spec
    prog = mg.compile_graph(spec)
    state = prog.init(jax.random.PRNGKey(0), 3)
    new, out = jax.jit(prog.step)(prog.init_params(jax.random.PRNGKey(1)), state, fake_batch(spec, 3))
    assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(state)
    for g, fields in state.items():
        for f, value in fields.items():
            assert new[g][f].shape == value.shape, f"{g}.{f} changed shape"
            assert bool(jnp.all(jnp.isfinite(new[g][f]))), f"{g}.{f} is not finite"
    assert set(out) == set(spec.outputs)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in out.values())


@pytest.mark.parametrize(
    "file, sizes, activation, loss",
    [("sinusoid_mlp", (1, 20, 20, 1), "relu", "l2"), ("mnist_mlp", (144, 50, 10), "sigmoid", "ce")],
)
def test_graph_file_equals_template(file, sizes, activation, loss):
    spec = mg.load_graph(ROOT / "graphs" / f"{file}.yaml")
    assert spec == mg.feedforward(sizes, activation, loss, lr=0.1, name=file)


def test_mplp_graph_file_equals_template():
    """The learned-protocol graph in YAML is the MPLP template's graph, and the published
    sinusoid learner's parameter tree fits it (115,081 numbers)."""
    from mplp_graph.learners.nets import param_count
    from mplp_graph.templates.mplp import mplp_feedforward

    spec = mg.load_graph(ROOT / "graphs" / "sinusoid_mplp.yaml")
    assert spec == mplp_feedforward((1, 20, 20, 1), name="sinusoid_mplp")
    assert param_count(mg.compile_graph(spec).init_params(jax.random.PRNGKey(0))) == 115_081


def test_skip_mlp_step_is_sgd():
    """One step of skip_mlp.yaml is one SGD step on pred = relu(x W0 + b0) W1 + x Ws + b1."""
    prog = mg.compile_graph(mg.load_graph(ROOT / "graphs" / "skip_mlp.yaml"))
    state = prog.init(jax.random.PRNGKey(0), 5)
    state["b0"]["b"] = state["b0"]["b"] + 0.1  # so that relu is not dead at b0 = 0 on half the inputs
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 4)).astype(np.float32)
    y = rng.normal(size=(5, 3)).astype(np.float32)
    names = {"W0": "w", "b0": "b", "W1": "w", "Ws": "w", "b1": "b"}
    params = {g: state[g][f] for g, f in names.items()}

    def loss(p):
        h = jax.nn.relu(x @ p["W0"] + p["b0"])
        pred = h @ p["W1"] + x @ p["Ws"] + p["b1"]
        return jnp.mean(jnp.sum(0.5 * (y - pred) ** 2, -1))

    grads = jax.grad(loss)(params)
    new, _ = jax.jit(prog.step)({}, state, {"x": x, "y": y})
    for g, f in names.items():
        np.testing.assert_allclose(new[g][f], params[g] - 0.1 * grads[g], atol=1e-6, err_msg=g)


# ---------------------------------------------------------------------------------------------
# dump / load round trip


def every_feature_spec() -> mg.GraphSpec:
    """A small graph using every key of the schema at a non-default value."""
    text = """
name: every_feature
description: uses every key
groups:
  a:
    kind: cell
    shape: [3]
    state:
      v: {batched: true, init: {kind: uniform, low: -1.0, high: 1.0}}
      c: {init: {kind: normal, std: 0.5, mean: 1.0}}
      n: {dtype: int32, init: {kind: constant, value: 3}}
      m: {batched: true}
  p:
    kind: pair
    shape: [3, 2]
    state:
      u: {batched: true, shape: [1], constant_along: [1]}
arrows:
  - {name: spread, from: a, to: a, op: identity, inputs: [v], edges: [[0, 1], [1, 2], [2, 0]], aggregate: max, into: m}
  - {name: scale, from: a, to: a, op: {name: scale, args: {c: 2}}, inputs: [m], updates: {v: message}, phase: second}
  - {name: fan, from: a, to: p, op: {name: dense, args: {features: 1}}, inputs: [v], map: i -> i j, into: u, share: fanout}
schedule:
  phases:
    forward: [[spread, fan]]
  step: [forward, second]
inputs: {v: a.v}
outputs: {m: a.m}
"""
    return mg.loads_graph(text)


@pytest.mark.parametrize(
    "make",
    [
        lambda: mg.feedforward((1, 20, 20, 1), "relu", "l2", lr=0.1),
        lambda: mg.feedforward((144, 50, 10), "sigmoid", "ce", lr=0.1),
        lambda: mg.feedforward((3, 4, 5, 2), "tanh", "l2", protocol="none"),
        lambda: mg.feedforward((2, 3), "identity", "ce", softmax=False, lr=0.5),
        every_feature_spec,
        lambda: mg.load_graph(ROOT / "graphs" / "skip_mlp.yaml"),
    ],
    ids=["sinusoid", "mnist", "tanh_none", "linear_ce", "every_feature", "skip_mlp"],
)
def test_dump_load_round_trip(make):
    spec = make()
    text = mg.dump_graph(spec)
    assert mg.loads_graph(text) == spec
    assert mg.dump_graph(mg.loads_graph(text)) == text


def test_dump_uses_yaml_keys_and_leaves_defaults_out():
    text = mg.dump_graph(mg.feedforward((2, 3), "relu", "l2"))
    assert "from: W0" in text and "src:" not in text
    assert "aggregate: mean" not in text and "dtype:" not in text and "schedule:" not in text


def test_every_feature_compiles_and_runs():
    spec = every_feature_spec()
    prog = mg.compile_graph(spec)
    state = prog.init(jax.random.PRNGKey(0), 2)
    new, out = prog.step(prog.init_params(jax.random.PRNGKey(1)), state, fake_batch(spec, 2))
    assert bool(jnp.all(jnp.isfinite(out["m"])))


def test_share_on_a_parameterless_op_runs():
    """Regression: 'share' on an op without parameters used to make step() look up params[share]."""
    text = mutate("    into: pred\n", "    into: pred\n    share: adders\n")
    prog = mg.compile_graph(mg.loads_graph(text))
    state = prog.init(jax.random.PRNGKey(0), 2)
    _, out = prog.step(prog.init_params(jax.random.PRNGKey(1)), state, fake_batch(prog.spec, 2))
    assert bool(jnp.all(jnp.isfinite(out["loss"])))


# ---------------------------------------------------------------------------------------------
# bad documents: each error names the file, the line, the YAML path and what to do


def test_unknown_key_suggests_the_closest():
    text = mutate("    shape: [2, 3]\n", "    shap: [2, 3]\n")
    check(text, "groups.W.shap", line_of(text, "    shap: [2, 3]"), ["unknown key 'shap'", "Did you mean 'shape'?", "Valid keys: kind, shape, state"], col=5)


def test_unknown_top_level_key():
    text = mutate("groups:\n", "grups:\n")
    err = check(text, "grups", 2, ["unknown key 'grups' in the graph", "Did you mean 'groups'?"], col=1)
    loc, msg = issue(err, "groups")  # and the key it replaced is missing
    assert "required key 'groups' is missing" in msg


def test_unknown_arrow_key_uses_yaml_aliases():
    text = mutate("    into: pred\n", "    inot: pred\n")
    check(text, "arrows[2].inot", line_of(text, "    inot: pred"), ["unknown key 'inot' in an arrow", "Did you mean 'into'?", "from, to"])
    text = mutate("    from: W\n    to: b\n", "    form: W\n    to: b\n")
    check(text, "arrows[1].form", line_of(text, "    form: W"), ["Did you mean 'from'?"])


def test_wrong_type():
    text = mutate("shape: [2, 3]", "shape: [2, three]")
    n = line_of(text, "    shape: [2, three]")
    check(text, "groups.W.shape[1]", n, ["expected an integer", "got 'three' (a string)", "list of positive integers"], col=col_of(text, n, "three"))


def test_wrong_type_unquoted_yaml_boolean():
    text = mutate("    kind: loss\n", "    kind: on\n")
    check(text, "groups.loss.kind", line_of(text, "    kind: on"), ["expected a string", "got True (a boolean)", "Quote it"])


def test_out_of_bounds_value():
    text = mutate("std: 0.05", "std: -1")
    n = line_of(text, "      w: {init: {kind: normal, std: -1}}")
    check(text, "groups.W.state.w.init.std", n, ["expected a value greater than 0", "got -1", "positive number"], col=col_of(text, n, "std"))


def test_unknown_literal_suggests():
    text = mutate("aggregate: sum", "aggregate: sums")
    check(text, "arrows[1].aggregate", line_of(text, "    aggregate: sums"), ["expected one of 'mean', 'sum' or 'max'", "got 'sums'", "Did you mean 'sum'?"])
    text = mutate("aggregate: sum", "aggregate: avg")
    check(text, "arrows[1].aggregate", line_of(text, "    aggregate: avg"), ["got 'avg'", "Use one of 'mean', 'sum', 'max'."])


def test_unknown_init_kind():
    text = mutate("kind: normal,", "kind: norml,")
    check(text, "groups.W.state.w.init", line_of(text, "      w: {init: {kind: norml, std: 0.05}}"), ["unknown init kind 'norml'", "Did you mean 'normal'?"])


def test_missing_required_key():
    text = mutate("    kind: bias\n", "")
    check(text, "groups.b.kind", line_of(text, "  b:"), ["required key 'kind' is missing", "add 'kind: ...'"], col=3)


def test_missing_key_of_init_shorthand():
    text = mutate("{init: {kind: normal, std: 0.05}}", "{init: normal}")
    check(text, "groups.W.state.w.init.std", line_of(text, "      w: {init: normal}"), ["required key 'std' is missing", "positive number"])


def test_op_of_wrong_type():
    text = mutate("    op: l2_grad\n", "    op: 5\n")
    check(text, "arrows[4].op", line_of(text, "    op: 5"), ["expected a mapping with keys name, args", "got 5 (an integer)", "an op name such as mul"])


def test_op_arg_of_wrong_type():
    text = mutate("{name: sgd, args: {lr: 0.1}}", "{name: sgd, args: {lr: [0.1]}}")
    n = line_of(text, "    op: {name: sgd, args: {lr: [0.1]}}")
    err = check(text, "arrows[5].op.args.lr", n, ["expected a boolean (true or false), an integer, a number or a string", "got [0.1] (a list)"])
    assert len(err.issues) == 1  # the four union members give one message


def test_map_and_edges_both():
    text = mutate("    map: i -> i j\n    into: x\n", "    map: i -> i j\n    edges: [[0, 0]]\n    into: x\n")
    check(text, "arrows[0]", line_of(text, "  - name: x->W"), ["give either 'map' or 'edges', not both"], col=5)


def test_edge_not_a_pair():
    text = mutate("    inputs: [z, b]\n", "    inputs: [z, b]\n    edges: [[0, 0, 1]]\n")
    n = line_of(text, "    edges: [[0, 0, 1]]")
    check(text, "arrows[2].edges[0]", n, ["expected at most 2 items", "[source, destination] pairs"], col=col_of(text, n, "[0, 0, 1]"))


def test_dangling_group_in_from():
    text = mutate("    from: W\n    to: b\n", "    from: Wx\n    to: b\n")
    check(text, "arrows[1].from", line_of(text, "    from: Wx"), ["arrow 'W->b' refers to unknown group 'Wx'"], col=5)


def test_dangling_group_in_to():
    text = mutate("    to: loss\n    op: add\n", "    to: los\n    op: add\n")
    check(text, "arrows[2].to", line_of(text, "    to: los"), ["unknown group 'los'", "Did you mean 'loss'?"])


def test_unknown_field_in_inputs():
    text = mutate("    inputs: [w, x]\n    map", "    inputs: [w, xx]\n    map")
    n = line_of(text, "    inputs: [w, xx]")
    check(text, "arrows[1].inputs[1]", n, ["group 'W' has no state field 'xx'", "Did you mean 'x'?"], col=col_of(text, n, "xx"))


def test_unknown_field_in_into():
    text = mutate("    into: pred\n", "    into: prd\n")
    check(text, "arrows[2].into", line_of(text, "    into: prd"), ["group 'loss' has no state field 'prd' to receive messages", "Did you mean 'pred'?"])


def test_unknown_field_in_updates():
    text = mutate("updates: {b: message}", "updates: {bb: message}")
    n = line_of(text, "    updates: {bb: message}")
    check(text, "arrows[5].updates.bb", n, ["group 'b' has no state field 'bb' to update", "Did you mean 'b'?"], col=col_of(text, n, "bb"))


def test_unknown_op_suggests():
    text = mutate("    op: l2_grad\n", "    op: l2_gard\n")
    check(text, "arrows[4].op", line_of(text, "    op: l2_gard"), ["unknown op 'l2_gard'", "Did you mean 'l2_grad'?"])


def test_wrong_op_arg():
    text = mutate("{name: sgd, args: {lr: 0.1}}", "{name: sgd, args: {rate: 0.1}}")
    n = line_of(text, "    op: {name: sgd, args: {rate: 0.1}}")
    err = check(text, "arrows[5].op.args.rate", n, ["op 'sgd' takes no argument 'rate'", "its arguments: lr"], col=col_of(text, n, "rate"))
    loc, msg = issue(err, "arrows[5].op.args")
    assert loc.line == n and "needs argument 'lr'" in msg


def test_wrong_op_arg_located_at_op_shorthand():
    text = mutate("    op: l2_grad\n", "    op: scale\n")  # scale needs argument c; 'op: scale' has no args key
    check(text, "arrows[4].op.args", line_of(text, "    op: scale"), ["op 'scale' needs argument 'c'", "add it under op.args"], col=5)


def test_shape_mismatch_into_field():
    text = mutate("      z: {batched: true}\n      g: {batched: true}\n  loss:", "      z: {batched: true, shape: [2]}\n      g: {batched: true}\n  loss:")
    check(text, "arrows[1].into", line_of(text, "    into: z"), ["sends messages of feature shape [1]", "field b.z has shape [2]", "make the field's shape []"])


def test_missing_map_for_different_shapes_is_located_at_the_arrow():
    text = mutate("    kind: loss\n    shape: [3]\n", "    kind: loss\n    shape: [4]\n")
    check(text, "arrows[2].map", line_of(text, "  - name: b->loss"), ["different shapes", "needs a 'map'"], col=5)


def test_bad_index_map_syntax():
    text = mutate("    map: i -> i j\n", "    map: i => i j\n")
    check(text, "arrows[0].map", line_of(text, "    map: i => i j"), ["expected one '->' as in 'i j -> j'", "'i => i j'"])


def test_index_map_rank_mismatch():
    text = mutate("    map: i -> i j\n", "    map: i k -> i j\n")
    check(text, "arrows[0].map", line_of(text, "    map: i k -> i j"), ["left side names 2 axes (i k)", "source group has shape [2] (1 axes)"])


def test_index_map_size_mismatch():
    text = mutate("    map: j -> i j\n", "    map: i -> i j\n")
    check(text, "arrows[6].map", line_of(text, "    map: i -> i j", nth=1), ["index 'i' has size 3 in the source group but 2 in the destination group"])


def test_duplicate_arrow_names():
    text = mutate("  - name: loss->b\n", "  - name: b->loss\n")
    n = line_of(text, "  - name: b->loss", nth=1)
    check(text, "arrows[4].name", n, ["arrow name 'b->loss' is already used by arrows[2]", "must be unique"], col=5)


def test_duplicate_yaml_keys():
    text = mutate("    map: i -> i j\n    into: x\n", "    map: i -> i j\n    map: i -> j\n    into: x\n")
    first = line_of(text, "    map: i -> i j")
    check(text, "arrows[0].map", first + 1, [f"duplicate key 'map': it is already defined at line {first}", "remove one"], col=5)


def test_duplicate_group_names():
    text = mutate("  loss:\n", "  b:\n")
    first = line_of(text, "  b:")
    err = check(text, "groups.b", line_of(text, "  b:", nth=1), [f"duplicate key 'b': it is already defined at line {first}"], col=3)
    assert len(err.issues) == 1


def test_empty_graph():
    text = "# nothing here yet\nname: empty\ngroups: {}\n"
    check(text, "groups", 3, ["the graph has no groups", "declare at least one group"], col=1)


def test_python_tag_is_refused():
    text = mutate("name: small\n", "name: !!python/object/apply:os.system [echo hi]\n")
    check(text, "name", 1, ["only plain YAML is accepted", "!!python/object/apply:os.system", "remove the tag"], col=7)


def test_custom_tag_is_refused():
    text = mutate("    inputs: [value]\n", "    inputs: !fields [value]\n")
    check(text, "arrows[0].inputs", line_of(text, "    inputs: !fields [value]"), ["only plain YAML is accepted", "!fields"])


def test_non_utf8_bytes(tmp_path):
    raw = mutate("    kind: weight\n", "    kind: w\xe9ight\n").encode("latin-1")
    offset = raw.index(b"\xe9")
    path = tmp_path / "latin1.yaml"
    path.write_bytes(raw)
    with pytest.raises(mg.GraphSpecError) as info:
        mg.load_graph(path)
    (loc, msg), = info.value.issues
    line = raw[:offset].count(b"\n") + 1
    assert (loc.file, loc.line) == (str(path), line)
    assert str(info.value).startswith(f"{path}:{line}:")
    assert f"byte 0xe9 at byte offset {offset}" in msg and "not valid UTF-8" in msg and "save the file as UTF-8" in msg


def test_control_character():
    text = mutate("name: small\n", "name: sm\x00all\n")
    err = load_error(text)
    (loc, msg), = err.issues
    assert (loc.line, loc.column) == (1, 9) and "U+0000 is not allowed" in msg


def test_syntax_error():
    text = mutate("    into: pred\n", "   into: pred\n")
    n = line_of(text, "   into: pred")
    err = check(text, "", n, ["YAML syntax error", "expected <block end>", "check the indentation"])
    assert str(err).startswith(f"{FILE}:{n}:4: YAML syntax error")


def test_tab_indentation():
    text = mutate("    kind: weight\n", "\tkind: weight\n")
    check(text, "", line_of(text, "\tkind: weight"), ["YAML syntax error", "found character '\\t'", "indent with spaces"], col=1)


def test_unclosed_bracket():
    text = mutate("    inputs: [z, b]\n", "    inputs: [z, b\n")
    err = load_error(text)
    (loc, msg), = err.issues
    assert loc.line == line_of(text, "    into: pred") and "YAML syntax error" in msg and "flow sequence" in msg


def test_two_documents():
    text = BASE + "---\nname: other\n"
    check(text, "", line_of(text, "---"), ["expected a single document", "remove this '---'"])


def test_top_level_is_a_list():
    check("- name: small\n- groups: {}\n", "", 1, ["top level of a graph file must be a mapping", "found a list"], col=1)


def test_empty_document():
    check("# only a comment\n", "", 1, ["must be a mapping", "found an empty document"])


def test_cyclic_alias():
    text = mutate("inputs: {x: x.value, y: loss.target}\n", "inputs: &loop {x: x.value, y: *loop}\n")
    n = line_of(text, "inputs: &loop {x: x.value, y: *loop}")
    check(text, "inputs.y", n, ["cyclic alias", "anchor &loop contains itself"], col=col_of(text, n, "y:"))


def test_cyclic_merge_key():
    text = "name: x\ngroups: &g {<<: *g}\n"
    err = load_error(text)
    (loc, msg), = err.issues
    assert loc.line == 2 and "cyclic alias" in msg


def test_aliases_and_merge_keys_are_plain_yaml():
    text = BASE.replace("      x: {batched: true, constant_along: [1]}\n", "      x: &fwd {batched: true, constant_along: [1]}\n")
    text = text.replace("      g: {batched: true, constant_along: [0]}\n", "      g: {<<: *fwd, constant_along: [0]}\n")
    assert mg.loads_graph(text) == mg.loads_graph(BASE)


def test_alias_bomb_is_refused():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{k}: &a{k} [*a{k - 1}, *a{k - 1}, *a{k - 1}, *a{k - 1}, *a{k - 1}, *a{k - 1}, *a{k - 1}, *a{k - 1}, *a{k - 1}, *a{k - 1}]" for k in range(1, 9)]
    err = load_error("\n".join(lines) + "\n")
    assert "expands to more than" in str(err)


def test_cyclic_phase():
    echo = "  - name: echo\n    from: loss\n    to: b\n    op: identity\n    inputs: [pred]\n    aggregate: sum\n    into: z\n"
    text = mutate("  - name: loss->b\n", echo + "  - name: loss->b\n")
    # located at the first arrow of the cycle
    err = load_error(text)
    assert "arrows of phase 'forward' form a cycle" in str(err) and "echo" in str(err)
    assert "give one explicitly under schedule.phases.forward" in str(err)
    loc, _ = err.issues[0]
    assert loc.path.startswith("arrows[") and loc.line > 1


TAIL = "inputs: {x: x.value"
SCHEDULE = "schedule:\n  phases:\n    backward: [[loss->b], [b.sgd, b->W], [W.sgd]]\n" + TAIL


def test_schedule_with_explicit_stages_is_valid():
    mg.compile_graph(mg.loads_graph(mutate(TAIL, SCHEDULE)))


def test_schedule_names_unknown_arrow():
    text = mutate(TAIL, SCHEDULE.replace("[W.sgd]]", "[W.sgd], [W.sdg]]"))
    n = line_of(text, "    backward: [[loss->b], [b.sgd, b->W], [W.sgd], [W.sdg]]")
    check(text, "schedule.phases.backward[3][0]", n, ["unknown arrow 'W.sdg'", "Did you mean 'W.sgd'?"], col=col_of(text, n, "W.sdg"))


def test_schedule_misses_an_arrow():
    text = mutate(TAIL, SCHEDULE.replace(", [W.sgd]]", "]"))
    check(text, "schedule.phases.backward", line_of(text, "    backward: [[loss->b], [b.sgd, b->W]]"), ["['W.sgd']", "missing from its stages", "add them to a stage"])


def test_schedule_step_names_unknown_phase():
    text = mutate(TAIL, "schedule:\n  step: [forward, backwards]\n" + TAIL)
    n = line_of(text, "  step: [forward, backwards]")
    err = check(text, "schedule.step[1]", n, ["unknown phase 'backwards'", "Did you mean 'backward'?"], col=col_of(text, n, "backwards"))
    assert len(err.issues) == 1, err  # the backward arrows are not reported as "never run": one typo, one message


def test_phase_never_run_by_step():
    text = mutate(TAIL, "schedule:\n  step: [forward]\n" + TAIL)
    words = ["arrows ['loss->b', 'b.sgd', 'b->W', 'W.sgd'] are in phase 'backward'", "never runs", "add the phase to the step"]
    err = check(text, "arrows[4].phase", line_of(text, "    phase: backward"), words)
    assert len(err.issues) == 1  # one message for the phase, naming its four arrows


def test_edges_out_of_range():
    text = mutate("    inputs: [z, b]\n", "    inputs: [z, b]\n    edges: [[0, 0], [1, 1], [2, 5]]\n")
    n = line_of(text, "    edges: [[0, 0], [1, 1], [2, 5]]")
    check(text, "arrows[2].edges[2]", n, ["destination agent 5 is out of range", "group 'loss' has 3 agents"], col=col_of(text, n, "[2, 5]"))


def test_constant_along_out_of_range():
    text = mutate("      b: {}\n", "      b: {constant_along: [1]}\n")
    n = line_of(text, "      b: {constant_along: [1]}")
    check(text, "groups.b.state.b.constant_along", n, ["axis 1 does not exist", "group 'b' has shape [3] (1 axes)"], col=col_of(text, n, "constant_along"))


def test_constant_along_out_of_range_on_an_inbox():
    text = mutate("g: {batched: true, constant_along: [0]}", "g: {batched: true, constant_along: [2]}")
    n = line_of(text, "      g: {batched: true, constant_along: [2]}")
    check(text, "groups.W.state.g.constant_along", n, ["axis 2 does not exist", "group 'W' has shape [2, 3] (2 axes)"])


def test_conflicting_writes():
    twin = "  - name: b.sgd2\n    from: b\n    to: b\n    phase: backward\n    op: {name: sgd, args: {lr: 0.2}}\n    inputs: [b, g]\n    updates: {b: message}\n"
    text = mutate(TAIL, twin + SCHEDULE.replace("[b.sgd, b->W]", "[b.sgd, b->W, b.sgd2]"))
    check(text, "arrows[8]", line_of(text, "  - name: b.sgd2"), ["arrows 'b.sgd' and 'b.sgd2' both write b.b in the same stage", "only messages sent 'into' one field may share a stage"], col=5)


def test_inbox_aggregates_disagree():
    echo = "  - name: echo\n    from: x\n    to: W\n    op: identity\n    inputs: [value]\n    map: i -> i j\n    aggregate: max\n    into: x\n"
    text = mutate("  - name: W->b\n", echo + "  - name: W->b\n")
    check(text, "arrows[1].aggregate", line_of(text, "    aggregate: max"), ["both send into W.x", "aggregate with 'mean' and 'max'", "use one aggregation"])


def test_io_ref_unknown_field():
    text = mutate("inputs: {x: x.value,", "inputs: {x: x.valu,")
    n = line_of(text, "inputs: {x: x.valu, y: loss.target}")
    check(text, "inputs.x", n, ["group 'x' has no state field 'valu'", "Did you mean 'value'?"], col=col_of(text, n, "x:"))


def test_several_errors_are_all_reported():
    text = mutate("    shape: [2, 3]\n", "    shap: [2, 3]\n")
    text = mutate("aggregate: sum", "aggregate: avg", text)
    text = mutate("    kind: bias\n", "", text)
    text = mutate("std: 0.05", "std: zero", text)
    err = load_error(text)
    paths = {loc.path for loc, _ in err.issues}
    assert {"groups.W.shap", "arrows[1].aggregate", "groups.b.kind", "groups.W.state.w.init.std"} <= paths
    assert str(err).startswith(f"{len(err.issues)} problems in graph:\n")
    for loc, msg in err.issues:
        assert f"  {FILE}:{loc.line}:{loc.column} {loc.path}: {msg}" in str(err)


def test_several_verify_errors_are_all_reported():
    text = mutate("    op: l2_grad\n", "    op: l2_gard\n")
    text = mutate("    map: j -> i j\n", "    map: j -> i\n", text)
    text = mutate("    into: pred\n", "    into: prd\n", text)
    err = load_error(text)
    lines = {loc.path: loc.line for loc, _ in err.issues}
    assert lines == {
        "arrows[4].op": line_of(text, "    op: l2_gard"),
        "arrows[6].map": line_of(text, "    map: j -> i"),
        "arrows[2].into": line_of(text, "    into: prd"),
    }


def test_file_too_large(tmp_path, monkeypatch):
    from mplp_graph.config import load

    path = tmp_path / "huge.yaml"
    path.write_text(BASE + "#" * 2000 + "\n")
    monkeypatch.setattr(load, "MAX_BYTES", 1000)
    with pytest.raises(mg.GraphSpecError, match=r"huge\.yaml: file is \d[\d,]* bytes, more than the limit of 1,000"):
        mg.load_graph(path)
    with pytest.raises(mg.GraphSpecError, match="more than the limit"):
        mg.loads_graph(BASE)


def test_load_graph_names_the_file(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(mutate("    op: l2_grad\n", "    op: l2_gard\n"))
    with pytest.raises(mg.GraphSpecError) as info:
        mg.load_graph(path)
    assert str(info.value).startswith(f"{path}:{line_of(path.read_text(), '    op: l2_gard')}:5 arrows[4].op: unknown op")


# ---------------------------------------------------------------------------------------------
# the committed JSON schema stays current


def test_json_schema_is_current():
    committed = json.loads((ROOT / "docs" / "graph.schema.json").read_text())
    assert committed == mg.GraphSpec.model_json_schema(by_alias=True), (
        "docs/graph.schema.json is stale; regenerate it with "
        "json.dumps(mg.GraphSpec.model_json_schema(by_alias=True), indent=2)"
    )


def test_yaml_reference_example_is_skip_mlp():
    """docs/yaml.md shows graphs/skip_mlp.yaml in full; keep the two identical."""
    doc = (ROOT / "docs" / "yaml.md").read_text()
    start = doc.index("```yaml\n", doc.index("## A complete example")) + len("```yaml\n")
    example = doc[start : doc.index("```\n", start)]
    assert example == (ROOT / "graphs" / "skip_mlp.yaml").read_text()
