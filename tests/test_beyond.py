"""Beyond feedforward (issue 8): skip/residual DAGs, an unrolled RNN and a cellular grid as
templates and YAML files; custom schedules (repeated phases, random stage orders, random
subsets of firing agents); non-differentiable agents; the hybrid gradient + message protocol.

Invariants checked: the backprop protocol on the skip DAG and on the RNN (backprop through time)
equals ``jax.grad`` + SGD, both through the graph's own forward phase and against nets written
directly in jax.numpy; a declared schedule changes the order in which agents are updated, as
seen in their state; random schedules follow their draws and agree with the reference
interpreter; errors are located and say what to do.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mplp_graph as mg
from mplp_graph.cli import main as cli
from mplp_graph.ir.spec import FieldSpec, GroupSpec, RandomSpec
from mplp_graph.runtime import draws
from mplp_graph.runtime.interpret import interpret_step
from mplp_graph.runtime.oracle import blocking_arrows, check_differentiable, default_wrt, forward_grad, sgd_reference
from mplp_graph.templates.grid import grid, neighbour_edges
from mplp_graph.templates.mplp import mplp_feedforward
from mplp_graph.templates.recurrent import rnn
from mplp_graph.templates.skip import mplp_skip, skip_feedforward
from random_graphs import random_graph
from test_interpreter import assert_close, check_against_interpreter

ROOT = Path(__file__).resolve().parents[1]
FILES = ("residual_mlp", "rnn", "rnn_mplp", "life_grid", "async_diffusion")
HOLE = np.ones((8, 8), bool)
HOLE[3:5, 2:6] = False
GLIDER = ((0, 1), (1, 2), (2, 0), (2, 1), (2, 2))


def run_steps(prog, state, batches, params=None):
    step = jax.jit(prog.step)
    for b in batches:
        state, out = step({} if params is None else params, state, b)
    return state


# ---------------------------------------------------------------------------------------------
# templates and their YAML files: validate, compile, run, draw


TEMPLATES = {
    "skip": lambda: skip_feedforward((2, 5, 5, 5, 3), skips=[(0, 3), (1, 4)], residual=[(1, 3)]),
    "skip_ce": lambda: skip_feedforward((3, 4, 4, 3), skips=[(0, 2)], activation="sigmoid", loss="ce"),
    "mplp_skip": lambda: mplp_skip((1, 4, 4, 4, 1), skips=[(0, 4), (2, 4)], residual=[(1, 3)], msg=2, hidden=3),
    "mplp_skip_mlp_layers": lambda: mplp_skip((1, 4, 4, 1), skips=[(1, 3)], learner="mlp", msg=2, sharing="layers"),
    "rnn": lambda: rnn(2, 4, 1, 3),
    "rnn_none": lambda: rnn(1, 3, 2, 2, "relu", protocol="none"),
    "grid": lambda: grid(5, 6, mask=HOLE[:5, :6], wrap=False),
    "grid_async": lambda: grid(4, 4, rule="diffuse", neighbourhood="von_neumann", fire=0.3, rounds=2),
    "hybrid": lambda: mplp_feedforward((2, 3, 2), "sigmoid", "ce", msg=2, hidden=2, hybrid=True),
}


def fake_batch(spec: mg.GraphSpec, b: int) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for key, ref in spec.inputs.items():
        g, f = ref.split(".")
        grp = spec.groups[g]
        out[key] = rng.uniform(-1, 1, (b, *grp.shape)).astype(np.float32)
    return out


@pytest.mark.parametrize("make", TEMPLATES.values(), ids=TEMPLATES.keys())
def test_template_verifies_compiles_runs_and_draws(make, tmp_path):
    spec = mg.verify(make())
    assert mg.loads_graph(mg.dump_graph(spec)) == spec  # YAML round trip
    prog = mg.compile_graph(spec)
    state = prog.init(jax.random.PRNGKey(0), 3)
    new, out = jax.jit(prog.step)(prog.init_params(jax.random.PRNGKey(1)), state, fake_batch(spec, 3))
    for g, fields in state.items():
        for f, v in fields.items():
            assert new[g][f].shape == v.shape and new[g][f].dtype == v.dtype, f"{g}.{f}"
            assert bool(jnp.all(jnp.isfinite(new[g][f]))), f"{g}.{f}"
    assert set(out) == set(spec.outputs)
    path = mg.draw_graph(spec, tmp_path / "g.png")
    assert Path(path).stat().st_size > 5_000


@pytest.mark.parametrize("name", FILES)
def test_graph_file_equals_its_template(name):
    import importlib.util

    loader = importlib.util.spec_from_file_location("make_graphs", ROOT / "experiments" / "beyond" / "make_graphs.py")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    assert mg.load_graph(ROOT / "graphs" / f"{name}.yaml") == module.graphs()[name][0]


def test_cli_validates_and_draws_the_graph_files(tmp_path, capsys):
    paths = [str(ROOT / "graphs" / f"{n}.yaml") for n in FILES]
    assert cli(["validate", *paths]) == 0
    assert capsys.readouterr().out.count(": ok (graph") == len(FILES)
    for p in paths:
        out = tmp_path / (Path(p).stem + ".png")
        assert cli(["draw", p, "-o", str(out)]) == 0
        assert out.stat().st_size > 5_000


def test_templates_without_links_are_the_chain_templates():
    sizes = (1, 4, 3, 1)
    plain, chain = skip_feedforward(sizes), mg.feedforward(sizes)
    assert (plain.groups, plain.arrows) == (chain.groups, chain.arrows)
    plain, chain = mplp_skip(sizes, msg=2, hidden=3), mplp_feedforward(sizes, msg=2, hidden=3)
    assert (plain.groups, plain.arrows) == (chain.groups, chain.arrows)


def test_skip_links_are_checked():
    with pytest.raises(ValueError, match="must go forward over at least one layer"):
        skip_feedforward((1, 4, 4, 1), skips=[(1, 2)])
    with pytest.raises(ValueError, match="must go forward"):
        skip_feedforward((1, 4, 4, 1), residual=[(2, 2)])
    with pytest.raises(ValueError, match="needs equal widths"):
        skip_feedforward((1, 4, 5, 1), residual=[(0, 2)])


def test_inboxes_fed_by_several_groups():
    """b2.z sums W2's synapses, S0_3's synapses and the identity from a0 (one stage, one inbox);
    backward, a0.g sums W1's, S1_4's and the identity's gradients."""
    prog = mg.compile_graph(TEMPLATES["skip"]())
    stage_of = {n: k for k, stage in enumerate(prog.schedule.phases["forward"]) for n in stage}
    assert stage_of["W2->b2"] == stage_of["S0_3->b2"] == stage_of["a0=>b2"]
    senders = {a.name for a in prog.spec.arrows if a.phase == "backward" and (a.dst, a.into) == ("a0", "g")}
    assert senders == {"W1->a0", "S1_4->a0", "b2=>a0"}


# ---------------------------------------------------------------------------------------------
# the backprop oracle on (a) the skip/residual DAG and (b) the unrolled RNN


def direct_skip_loss(p, x, y, act, loss):
    """pre_a2 = a1 W2 + b2 + x S0_3 + a0 + a1; pred = a2 W3 + b3 + a0 S1_4 (sizes (2,5,5,5,3))."""
    f = {"relu": jax.nn.relu, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid}[act]
    pre0 = x @ p["W0"] + p["b0"]
    pre1 = f(pre0) @ p["W1"] + p["b1"]
    pre2 = f(pre1) @ p["W2"] + p["b2"] + x @ p["S0_3"] + f(pre0) + f(pre1)
    pred = f(pre2) @ p["W3"] + p["b3"] + f(pre0) @ p["S1_4"]
    return jnp.mean(jnp.sum(0.5 * (y - pred) ** 2, -1))


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_backprop_on_skip_dag_equals_jax_grad(act):
    spec = skip_feedforward((2, 5, 5, 5, 3), skips=[(0, 3), (1, 4)], residual=[(1, 3), (2, 3)], activation=act, lr=0.1)
    prog = mg.compile_graph(spec)
    rng = np.random.default_rng(1)
    state = prog.init(jax.random.PRNGKey(2), 4)
    for l in range(4):
        state[f"b{l}"]["b"] = jnp.asarray(rng.normal(scale=0.1, size=state[f"b{l}"]["b"].shape), jnp.float32)
    batches = [{"x": rng.normal(size=(4, 2)).astype(np.float32), "y": rng.normal(size=(4, 3)).astype(np.float32)} for _ in range(3)]
    wrt = default_wrt(spec)
    assert set(wrt) == {"W0", "W1", "W2", "W3", "b0", "b1", "b2", "b3", "S0_3", "S1_4"}
    want = sgd_reference(prog, state, batches, 0.1, wrt)  # jax.grad through the graph's forward phase
    p = {g: state[g][fs[0]] for g, fs in wrt.items()}  # the same net in plain jax.numpy
    for b in batches:
        grads = jax.grad(direct_skip_loss)(p, b["x"], b["y"], act, "l2")
        p = {g: v - 0.1 * grads[g] for g, v in p.items()}
    got = run_steps(prog, state, batches)
    for g, fs in wrt.items():
        np.testing.assert_allclose(got[g][fs[0]], want[g][fs[0]], atol=1e-5, rtol=1e-5, err_msg=g)
        np.testing.assert_allclose(got[g][fs[0]], p[g], atol=1e-5, rtol=1e-5, err_msg=g)
    assert float(jnp.abs(got["S1_4"]["w"] - state["S1_4"]["w"]).max()) > 1e-4


def direct_rnn_loss(p, x, y, act):
    f = {"tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu}[act]
    h = jnp.zeros((x.shape[0], p["Wh"].shape[0]))
    for t in range(x.shape[1]):
        h = f(x[:, t] @ p["Wx"] + h @ p["Wh"] + p["b"])
    pred = h @ p["Wo"] + p["bo"]
    return jnp.mean(jnp.sum(0.5 * (y - pred) ** 2, -1))


@pytest.mark.parametrize("steps,act", [(1, "tanh"), (3, "tanh"), (4, "sigmoid"), (2, "relu")])
def test_backprop_through_time_equals_jax_grad(steps, act):
    spec = rnn(2, 5, 3, steps, act, lr=0.1)
    prog = mg.compile_graph(spec)
    rng = np.random.default_rng(steps)
    state = prog.init(jax.random.PRNGKey(steps), 4)
    state["Wh"]["w"] = state["Wh"]["w"] * 10  # a recurrent signal well above rounding
    state["b"]["b"] = jnp.asarray(rng.normal(scale=0.1, size=5), jnp.float32)
    batches = [{"x": rng.normal(size=(4, steps, 2)).astype(np.float32), "y": rng.normal(size=(4, 3)).astype(np.float32)} for _ in range(3)]
    names = {"Wx": "w", "Wh": "w", "b": "b", "Wo": "w", "bo": "b"}
    wrt = {g: [f] for g, f in names.items() if g != "Wh" or steps > 1}
    want = sgd_reference(prog, state, batches, 0.1, wrt)
    p = {g: state[g][f] for g, f in names.items()}
    for b in batches:
        grads = jax.grad(direct_rnn_loss)(p, b["x"], b["y"], act)
        p = {g: v - 0.1 * grads[g] for g, v in p.items()}
    got = run_steps(prog, state, batches)
    for g, f in names.items():
        np.testing.assert_allclose(got[g][f], p[g], atol=1e-5, rtol=1e-5, err_msg=g)
        if g in want:
            np.testing.assert_allclose(got[g][f], want[g][f], atol=1e-5, rtol=1e-5, err_msg=g)
    if steps > 1:
        assert float(jnp.abs(got["Wh"]["w"] - state["Wh"]["w"]).max()) > 1e-4


# ---------------------------------------------------------------------------------------------
# custom schedules, observable through agent state

ORDER = """\
name: order
groups:
  c:
    kind: counter
    state:
      log: {}   # each stage appends its digit: the number spells the order the stages ran in
  clock:
    kind: clock
    state:
      t: {dtype: int32}
arrows:
  - {name: A, from: c, to: c, phase: p, op: {name: affine, args: {a: 10, b: 1}}, inputs: [log], updates: {log: message}}
  - {name: B, from: c, to: c, phase: p, op: {name: affine, args: {a: 10, b: 2}}, inputs: [log], updates: {log: message}}
  - {name: C, from: c, to: c, phase: p, op: {name: affine, args: {a: 10, b: 3}}, inputs: [log], updates: {log: message}}
schedule:
  phases:
    p: STAGES
  step: STEP
  RANDOM
  rng: clock.t
outputs:
  log: c.log
"""


def order_graph(stages="[[A], [B], [C]]", step="[p]", random="random: {}") -> mg.GraphSpec:
    return mg.loads_graph(ORDER.replace("STAGES", stages).replace("STEP", step).replace("RANDOM", random), filename="order.yaml")


def logs(spec: mg.GraphSpec, n_steps: int) -> list[int]:
    """The log after each of ``n_steps`` steps (reset to 0 before each)."""
    prog = mg.compile_graph(spec)
    step = jax.jit(prog.step)
    state = prog.init(jax.random.PRNGKey(0))
    out = []
    for _ in range(n_steps):
        state = {**state, "c": {"log": jnp.zeros((), jnp.float32)}}
        state, o = step({}, state, {})
        out.append(int(round(float(o["log"]))))
    return out


def test_declared_stage_order_is_the_execution_order():
    assert logs(order_graph(), 2) == [123, 123]
    assert logs(order_graph("[[C], [A], [B]]"), 1) == [312]


def test_a_phase_listed_several_times_runs_several_rounds():
    assert logs(order_graph("[[B], [A], [C]]", "[p, p]"), 1) == [213213]


def test_shuffled_stages_run_in_the_drawn_order():
    spec = order_graph(random="random: {p: {order: shuffle}}")
    got = logs(spec, 24)
    want = [int("".join(str(int(k) + 1) for k in draws.stage_order(draws.phase_key(t, 0, 0), 3))) for t in range(24)]
    assert got == want
    assert all(sorted(str(v)) == ["1", "2", "3"] for v in got)  # each stage exactly once
    assert len(set(got)) >= 4  # the order does change from step to step


def test_each_run_of_a_shuffled_phase_draws_anew():
    got = logs(order_graph(step="[p, p]", random="random: {p: {order: shuffle}}"), 12)
    first, second = [v // 1000 for v in got], [v % 1000 for v in got]
    assert any(a != b for a, b in zip(first, second))
    want = [int("".join(str(int(k) + 1) for k in draws.stage_order(draws.phase_key(5, 0, 1), 3)))]
    assert second[5:6] == want


def test_firing_agents_follow_their_mask():
    """``fire: p``: only the drawn agents apply the stage's writes; the others keep their value."""
    text = ORDER.replace("  c:\n    kind: counter", "  c:\n    kind: counter\n    shape: [6, 7]")
    spec = mg.loads_graph(text.replace("STAGES", "[[A]]").replace("STEP", "[p]").replace("RANDOM", "random: {p: {fire: 0.4}}").replace("  - {name: B", "#").replace("  - {name: C", "#"))
    prog = mg.compile_graph(spec)
    state = prog.init(jax.random.PRNGKey(0))
    step = jax.jit(prog.step)
    total = np.zeros((6, 7))
    for t in range(5):
        state = {**state, "c": {"log": jnp.full((6, 7), 5.0)}}
        state, out = step({}, state, {})
        mask = np.asarray(draws.fire_mask(draws.phase_key(t, 0, 0), 0, 0, (6, 7), 0.4))
        np.testing.assert_array_equal(np.asarray(out["log"]), np.where(mask, 51.0, 5.0))
        total += mask
    assert int(state["clock"]["t"]) == 5
    assert 0.25 < total.mean() / 5 < 0.55  # about 40% of the agents fire each step


@pytest.mark.parametrize("seed", [3, 8, 21, 30])
def test_random_schedules_match_the_interpreter(seed):
    """Random graphs (inboxes, edge lists, fields stored once along axes...) with every phase
    shuffled and firing a random subset: compiled step == reference interpreter."""
    base = random_graph(seed)
    groups = {**base.groups, "clock": GroupSpec(kind="clock", state={"t": FieldSpec(dtype="int32")})}
    phases = {a.phase for a in base.arrows}
    schedule = base.schedule.model_copy(update={"random": {p: RandomSpec(order="shuffle", fire=0.6) for p in phases}, "rng": "clock.t"})
    check_against_interpreter(base.model_copy(update={"groups": groups, "schedule": schedule}), seed)


def test_partial_writes_are_carried_between_steps():
    """A field written by a phase with ``fire < 1`` keeps old values, so step_carry carries it."""
    spec = grid(5, 5, rule="diffuse", fire=0.5)
    spec = spec.model_copy(update={"schedule": spec.schedule.model_copy(update={"random": {"sense": RandomSpec(fire=0.5), "update": RandomSpec(fire=0.5)}})})
    prog = mg.compile_graph(spec)
    assert ("cell", "n") in prog.persistent
    state = prog.init(jax.random.PRNGKey(0), 2)
    state["cell"]["s"] = jax.random.uniform(jax.random.PRNGKey(1), (2, 5, 5))
    full, carry = state, prog.carry_of(state)
    for _ in range(3):
        full, _ = prog.step({}, full, {})
        carry, _ = prog.step_carry({}, carry, {})
    assert_close(carry, prog.carry_of(full), "carry")


def test_random_schedules_vmap_over_tasks_with_their_own_counters():
    prog = mg.compile_graph(order_graph(random="random: {p: {order: shuffle}}"))
    states = jax.vmap(lambda t: {"c": {"log": jnp.zeros(())}, "clock": {"t": t}})(jnp.arange(6, dtype=jnp.int32))
    new, out = jax.jit(jax.vmap(lambda s: prog.step({}, s, {})))(states)
    want = [logs_at(t) for t in range(6)]
    assert [int(round(float(v))) for v in out["log"]] == want
    np.testing.assert_array_equal(new["clock"]["t"], np.arange(1, 7))


def logs_at(t: int) -> int:
    return int("".join(str(int(k) + 1) for k in draws.stage_order(draws.phase_key(t, 0, 0), 3)))


def test_printer_shows_random_schedules():
    text = mg.format_graph(order_graph(step="[p, p]", random="random: {p: {order: shuffle, fire: 0.5}}"))
    assert "phase p (stages in random order; agents fire with p=0.5):" in text
    assert text.count("phase p") == 1
    assert "step: p -> p" in text and "rng: clock.t (step counter of the random draws)" in text


# located errors of the schedule grammar


def located(text: str, path: str) -> str:
    with pytest.raises(mg.GraphSpecError) as info:
        mg.loads_graph(text, filename="order.yaml")
    found = [(loc, msg) for loc, msg in info.value.issues if loc.path == path]
    assert found, str(info.value)
    loc, msg = found[0]
    return f"{loc.file}:{loc.line} {msg}"


def test_random_draws_need_a_counter():
    text = ORDER.replace("STAGES", "[[A], [B], [C]]").replace("STEP", "[p]").replace("RANDOM", "random: {p: {order: shuffle}}").replace("  rng: clock.t\n", "")
    msg = located(text, "schedule.random.p")
    n = text.splitlines().index("  random: {p: {order: shuffle}}") + 1
    assert msg.startswith(f"order.yaml:{n} phase 'p' makes random draws") and "add 'rng: group.field' under schedule" in msg


@pytest.mark.parametrize(
    "old,new,path,words",
    [
        ("random: {}", "random: {q: {order: shuffle}}", "schedule.random.q", ["unknown phase 'q'", "Valid names: 'p'"]),
        ("rng: clock.t", "rng: c.log", "schedule.rng", ["must be an int32 scalar", "got float32[]", "rng: clock.t"]),
        ("rng: clock.t", "rng: clock.tt", "schedule.rng", ["no state field 'tt'", "Did you mean 't'?"]),
        ("random: {}", "random: {p: {fire: 0}}", "schedule.random.p.fire", ["greater than 0"]),
        ("random: {}", "random: {p: {order: random}}", "schedule.random.p.order", ["'fixed' or 'shuffle'"]),
        ("inputs: [log], updates: {log: message}}\n  - {name: B", "inputs: [log], into: t, to: clock}\n  - {name: B", None, ["writes clock.t, the step counter"]),
    ],
    ids=["unknown-phase", "counter-dtype", "counter-field", "fire-range", "order-literal", "arrow-writes-counter"],
)
def test_schedule_errors_are_located(old, new, path, words):
    text = ORDER.replace("STAGES", "[[A], [B], [C]]").replace("STEP", "[p]").replace("RANDOM", "random: {}")
    assert text.count(old) == 1
    text = text.replace(old, new)
    if path is None:  # the arrow A now sends into clock.t
        text = text.replace("{name: A, from: c, to: c,", "{name: A, from: c,")
        path = "arrows[0].into"
    msg = located(text, path)
    for w in words:
        assert w in msg, msg


# ---------------------------------------------------------------------------------------------
# the grid: a local rule as a simulation


def test_life_glider_moves_one_cell_diagonally_every_four_steps():
    spec = mg.load_graph(ROOT / "graphs" / "life_grid.yaml")
    prog = mg.compile_graph(spec)
    board = np.zeros((1, 8, 8), np.float32)
    for r, c in GLIDER:
        board[0, r, c] = 1
    state = {"cell": {"s": jnp.asarray(board), "n": jnp.zeros_like(board)}}
    for k in range(1, 4):
        state = run_steps(prog, state, [{}] * 4)
        np.testing.assert_array_equal(state["cell"]["s"], np.roll(board, (k, k), axis=(1, 2)))  # wraps around
    assert int(state["cell"]["s"].sum()) == 5


def test_masked_cells_have_no_edges_and_stay_empty():
    edges = np.asarray(neighbour_edges(8, 8, "moore", HOLE))
    holes = set(np.flatnonzero(~HOLE.ravel()).tolist())
    assert not (set(edges.ravel().tolist()) & holes)
    spec = mg.load_graph(ROOT / "graphs" / "async_diffusion.yaml")
    prog = mg.compile_graph(spec)
    state = prog.init(jax.random.PRNGKey(0), 2)
    state["cell"]["s"] = jnp.broadcast_to(jnp.asarray(HOLE, jnp.float32), (2, 8, 8))  # 1 on the grid, 0 in the hole
    new = run_steps(prog, state, [{}] * 3)
    assert float(jnp.abs(new["cell"]["s"][:, ~HOLE]).max()) == 0.0
    assert float(new["cell"]["s"][:, HOLE].min()) > 0.4  # means of present neighbours only
    want, _ = interpret_step(spec, {}, state, {})
    got, _ = prog.step({}, state, {})
    assert_close(got, want, "async diffusion step")


# ---------------------------------------------------------------------------------------------
# non-differentiable agents


STEP_GRAD = """\
name: stepnet
groups:
  x: {kind: input, shape: [2], state: {value: {batched: true}, g: {batched: true}}}
  y: {kind: activation, shape: [2], state: {h: {batched: true}, g: {batched: true}}}
arrows:
  - {name: x->y, from: x, to: y, op: step, inputs: [value], into: h}
  - {name: y->x, from: y, to: x, phase: backward, op: step_grad, inputs: [h, g], into: g}
"""


def test_backprop_protocol_through_step_is_a_located_error():
    with pytest.raises(mg.GraphSpecError) as info:
        mg.loads_graph(STEP_GRAD, filename="stepnet.yaml")
    msg = str(info.value)
    assert msg.startswith("stepnet.yaml:7:51 arrows[1].op: unknown op 'step_grad': op 'step' has no derivative")
    assert "a backprop protocol cannot pass a gradient through it" in msg and "learned protocol" in msg


def test_oracle_refuses_to_differentiate_through_step(tmp_path):
    spec = mplp_feedforward((1, 4, 4, 1), "step", msg=2, hidden=2)
    with pytest.raises(mg.NotDifferentiableError) as info:
        check_differentiable(spec)
    text = str(info.value)
    assert text.count("has no derivative") == 2  # a0->W1 and a1->W2
    assert "arrows[3].op: arrow 'a0->W1' runs op 'step', which has no derivative" in text
    assert "jax.grad through phase 'forward' would silently return zero gradients" in text
    path = tmp_path / "stepnet.yaml"
    path.write_text(mg.dump_graph(spec))
    with pytest.raises(mg.NotDifferentiableError) as info:
        check_differentiable(mg.load_graph(path), file=path)
    lines = path.read_text().splitlines()
    start = lines.index("- name: a0->W1")
    line = next(k + 1 for k in range(start, len(lines)) if lines[k].startswith("  op:"))
    assert str(info.value).startswith(f"{path}:{line}:3 arrows[3].op: arrow 'a0->W1'")  # the arrow's 'op:' line
    prog = mg.compile_graph(spec)
    with pytest.raises(mg.NotDifferentiableError):
        forward_grad(prog, prog.init(jax.random.PRNGKey(0), 2), {"x": np.zeros((2, 1), np.float32), "y": np.zeros((2, 1), np.float32)})


def test_only_ops_between_parameters_and_loss_block_the_gradient():
    spec = mg.feedforward((2, 3, 1), "relu", protocol="none")
    groups = {**spec.groups, "b0": spec.groups["b0"].model_copy(update={"state": {**spec.groups["b0"].state, "top": FieldSpec(batched=True)}})}
    side = mg.ArrowSpec(name="b0.argmax", src="b0", dst="b0", op="is_max", inputs=("z", "z"), into="top")  # a dead end
    spec = spec.model_copy(update={"groups": groups, "arrows": spec.arrows + (side,)})
    assert blocking_arrows(spec, default_wrt(spec), ("loss", "loss")) == []
    check_differentiable(spec)


@pytest.mark.parametrize("make", [lambda: skip_feedforward((1, 3, 3, 3, 1), residual=[(1, 3)], activation="step"), lambda: rnn(1, 3, 1, 2, "step")])
def test_backprop_templates_refuse_step(make):
    with pytest.raises(mg.NotDifferentiableError, match="has no gradient"):
        make()


def test_mplp_trains_through_step_activations():
    """No gradient is needed: the learned protocol moves every weight of a step net."""
    spec = mplp_skip((1, 4, 4, 1), skips=[(1, 3)], activation="step", msg=2, hidden=2)
    assert {a.op.name for a in spec.arrows if a.phase == "forward"} >= {"step"}
    prog = mg.compile_graph(spec)
    state = prog.init(jax.random.PRNGKey(0), 4)
    x = jnp.linspace(-1, 1, 4)[:, None]
    new = run_steps(prog, state, [{"x": x, "y": jnp.sin(x)}] * 2, prog.init_params(jax.random.PRNGKey(1)))
    for g in ("W0", "W1", "W2", "S1_3"):
        assert float(jnp.abs(new[g]["w"] - state[g]["w"]).max()) > 1e-5, g


# ---------------------------------------------------------------------------------------------
# hybrid: the loss gradient next to the learned message


def test_hybrid_learners_see_the_exact_gradient():
    """With hybrid=True every weight, bias and activation learner gets ``g``, and ``g`` is the
    backprop protocol's gradient at that agent (computed before any update)."""
    sizes = (2, 3, 3, 2)
    spec = mplp_feedforward(sizes, "tanh", msg=2, hidden=2, hybrid=True)
    learners = {a.name: a.inputs for a in spec.arrows if a.op.name == "mplp_gru"}
    assert learners["b2->W2"][-1] == learners["W2->a1"][-1] == learners["a1->b1"][-1] == learners["W0.learn"][-1] == "g"
    plain = {a.name: a.inputs for a in mplp_feedforward(sizes, "tanh", msg=2, hidden=2).arrows if a.op.name == "mplp_gru"}
    assert {n: ins if n == "loss->b2" else ins[:-1] for n, ins in learners.items()} == plain  # g is one more channel, last
    prog, bp = mg.compile_graph(spec), mg.compile_graph(mg.feedforward(sizes, "tanh", lr=0.0))
    state = prog.init(jax.random.PRNGKey(0), 3)
    ref = bp.init(jax.random.PRNGKey(0), 3)
    for g in ("W0", "W1", "W2"):
        ref[g]["w"] = state[g]["w"]
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(3, 2)).astype(np.float32), "y": rng.normal(size=(3, 2)).astype(np.float32)}
    got, _ = jax.jit(prog.step)(prog.init_params(jax.random.PRNGKey(1)), state, batch)
    want, _ = jax.jit(bp.step)({}, ref, batch)  # lr 0: the same gradients, no update
    for g in ("W0", "W1", "W2", "b0", "b1", "b2", "a0", "a1"):
        np.testing.assert_allclose(got[g]["g"], want[g]["g"], rtol=1e-5, atol=1e-7, err_msg=g)
    assert float(jnp.abs(got["W1"]["w"] - state["W1"]["w"]).max()) > 0  # and the learners did update


def test_hybrid_skip_dag_gradients_travel_every_connection():
    """mplp_skip(hybrid=True): the gradient at every agent, skip synapses and residual targets
    included, is skip_feedforward's backprop gradient."""
    sizes, links = (2, 3, 3, 3, 2), dict(skips=[(0, 3), (1, 4)], residual=[(1, 2), (1, 3)])
    spec = mplp_skip(sizes, **links, activation="tanh", msg=2, hidden=2, hybrid=True)
    assert all(a.inputs[-1] == "g" for a in spec.arrows if a.op.name == "mplp_gru" and a.src != "loss")
    prog, bp = mg.compile_graph(spec), mg.compile_graph(skip_feedforward(sizes, **links, activation="tanh", lr=0.0))
    state = prog.init(jax.random.PRNGKey(0), 3)
    ref = bp.init(jax.random.PRNGKey(1), 3)
    for g in ref:
        if "w" in ref[g]:
            ref[g]["w"] = state[g]["w"]
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(3, 2)).astype(np.float32), "y": rng.normal(size=(3, 2)).astype(np.float32)}
    got, _ = jax.jit(prog.step)(prog.init_params(jax.random.PRNGKey(1)), state, batch)
    want, _ = jax.jit(bp.step)({}, ref, batch)
    for g in want:
        if "g" in want[g]:
            np.testing.assert_allclose(got[g]["g"], want[g]["g"], rtol=1e-5, atol=1e-7, err_msg=g)


def test_hybrid_refuses_step():
    with pytest.raises(mg.NotDifferentiableError, match="hybrid=True passes the gradient"):
        mplp_feedforward((1, 3, 1), "step", hybrid=True)


# ---------------------------------------------------------------------------------------------
# the experiment script (its grid part and the results file, quickly)


def test_experiment_script_grid_part(tmp_path):
    import importlib.util

    loader = importlib.util.spec_from_file_location("beyond_run", ROOT / "experiments" / "beyond" / "run.py")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    assert module.main(["grid", "--out", str(tmp_path)]) == 0
    assert module.main(["collect", "--out", str(tmp_path)]) == 0
    import json

    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["experiment"] == "beyond" and doc["metrics"]["grid_glider_shifted_8_cells_after_32_steps"] is True
    assert (tmp_path / "grid" / "grid.png").stat().st_size > 20_000
