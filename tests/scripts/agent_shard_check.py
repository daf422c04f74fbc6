"""Run by tests/test_agent_shard.py in a subprocess (the CPU device count is fixed before JAX
starts): steps of a dense MPLP net with its hidden layer split over N simulated devices, and of
a grid cellular automaton split by rows, against the same programs unsplit. Usage:
agent_shard_check.py N; prints one JSON line."""
import sys

import jax

jax.config.update("jax_num_cpu_devices", int(sys.argv[1]))

import json  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import mplp_graph as mg  # noqa: E402
from mplp_graph.compile.partition import count_collectives, device_mesh, state_shardings  # noqa: E402
from mplp_graph.templates.grid import grid  # noqa: E402
from mplp_graph.templates.mplp import mplp_feedforward  # noqa: E402

mesh = device_mesh(1, len(jax.devices()))
HIDDEN = {"W0": 1, "b0": 0, "a0": 0, "W1": 0}  # the first hidden layer's units: W0's columns, W1's rows


def run(prog, params, state, batches):
    """Steps of ``prog`` from ``state``; also the collectives of its compiled step."""
    if prog.partition is not None:
        state = jax.device_put(state, state_shardings(prog.spec, prog.partition, state))
    step = jax.jit(prog.step).lower(params, state, batches[0]).compile()  # one compile: run it, read its HLO
    outs = []
    for batch in batches:
        state, out = step(params, state, batch)
        outs.append(out)
    return state, outs, count_collectives(step.as_text())


def max_diff(a, b):
    return max(float(jnp.abs(x - y).max()) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def split_devices(state, group, field):
    return len({s.device for s in state[group][field].addressable_shards if s.data.size})


result = {"devices": len(jax.devices())}

# a dense MPLP net (learned protocol: forward and backward message passing, GRU learners)
prog = mg.compile_graph(mplp_feedforward((1, 8, 8, 1), msg=2, hidden=3))
params = prog.init_params(jax.random.PRNGKey(0))
state = prog.init(jax.random.PRNGKey(1), 4)
xs = jax.random.uniform(jax.random.PRNGKey(2), (3, 4, 1), minval=-5.0, maxval=5.0)
batches = [{"x": x, "y": jnp.sin(x)} for x in xs]
plain_state, plain_out, _ = run(prog, params, state, batches)
split = prog.shard_agents(mesh, HIDDEN)
split_state, split_out, collectives = run(split, params, state, batches)
result["mplp"] = {
    "diff": max(max_diff(plain_state, split_state), max_diff(plain_out, split_out)),
    "scale": max(float(jnp.abs(x).max()) for x in jax.tree_util.tree_leaves(plain_out)),
    "moved": max_diff(plain_state["W1"]["w"], state["W1"]["w"]),
    "w0_devices": split_devices(split_state, "W0", "w"),
    "collectives": collectives,
    "split": [list(r) for r in split.report(4, flops=False).split],
}

# a grid cellular automaton (edge-list stencil), rows split
spec = grid(16, 16, rule="diffuse", wrap=True)
prog = mg.compile_graph(spec)
state = prog.init(jax.random.PRNGKey(3), 2)
state["cell"]["s"] = jax.random.uniform(jax.random.PRNGKey(4), state["cell"]["s"].shape)
batches = [{}] * 3  # the automaton has no inputs
plain_state, _, _ = run(prog, {}, state, batches)
split = prog.shard_agents(mesh, {"cell": 0})
split_state, _, collectives = run(split, {}, state, batches)
result["grid"] = {
    "diff": max_diff(plain_state, split_state),
    "moved": max_diff(plain_state["cell"]["s"], state["cell"]["s"]),
    "cell_devices": split_devices(split_state, "cell", "s"),
    "collectives": collectives,
}
print(json.dumps(result))
