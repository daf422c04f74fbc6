"""Run by tests/test_shard.py in a subprocess: XLA_FLAGS must be set before JAX starts."""
import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import json
import numpy as np

import jax
import jax.numpy as jnp

import mplp_graph as mg
from mplp_graph.meta.objectives import MetaLoss
from mplp_graph.meta.shard import replicate, task_mesh
from mplp_graph.meta.step import MetaStep, adam, make_pool, trainable_mask
from mplp_graph.tasks.sinusoid import SinusoidFamily
from mplp_graph.templates.mplp import mplp_feedforward

fam = SinusoidFamily(inner_steps=2, batch=4, cv_points=6)
prog = mg.compile_graph(mplp_feedforward((1, 4, 1), msg=2, hidden=3))
params = prog.init_params(jax.random.PRNGKey(0))
pool = make_pool(prog, jax.random.PRNGKey(1), 8)
mask = trainable_mask(params)
plain = MetaStep(prog, fam.sample, MetaLoss(), 4, adam(1e-3))
mesh = task_mesh()
sharded = MetaStep(prog, fam.sample, MetaLoss(), 4, adam(1e-3), mesh=mesh)
opt = plain.init_opt_state(params)
jplain = jax.jit(plain.__call__)
a = jplain(params, opt, mask, pool, jax.random.PRNGKey(2))
rp, ro, rm, rpool = replicate(mesh, (params, opt, mask, pool))
f = jax.jit(sharded.__call__).lower(rp, ro, rm, rpool, jax.random.PRNGKey(2)).compile()  # one compile: run it, read its HLO
b = f(rp, ro, rm, rpool, jax.random.PRNGKey(2))
err = max(float(jnp.abs(x - y).max()) for x, y in zip(jax.tree_util.tree_leaves(a[0]), jax.tree_util.tree_leaves(b[0])))
moved = max(float(jnp.abs(x - y).max()) for x, y in zip(jax.tree_util.tree_leaves(a[0]), jax.tree_util.tree_leaves(params)))
hlo = f.as_text()
shardings = {str(x.sharding.device_set) for x in jax.tree_util.tree_leaves(b[0])}
print(json.dumps({"devices": len(jax.devices()), "loss_plain": float(a[2]["loss"]), "loss_sharded": float(b[2]["loss"]),
                  "max_param_diff": err, "max_param_move": moved, "all_reduces": hlo.count("all-reduce("), "param_device_sets": len(shardings)}))

# end to end: a sharded config trains (2 steps) and checkpoints
import sys
import tempfile

from mplp_graph.meta.config import ExperimentConfig
from mplp_graph.meta.run import train

cfg = ExperimentConfig.model_validate({
    "graph": {"sizes": [1, 4, 1], "msg": 2, "hidden": 3},
    "task": {"inner_steps": 2, "batch": 4, "cv_points": 6},
    "meta": {"steps": 2, "outer_batch": 2, "pool": 4, "checkpoint_every": 1, "shard_tasks": True},
})
with tempfile.TemporaryDirectory() as d:
    _, hist = train(cfg, d, progress=False)
    print(json.dumps({"train_steps": len(hist), "train_finite": all(h["loss"] == h["loss"] for h in hist)}), file=sys.stderr)

# a sweep of 2 runs split over the 2 devices (meta_train(..., runs=2, mesh=...)): one meta-step, against each
# run's step by the plain program compiled above (meta_train's step s of run i uses fold_in(key_i, s))
from mplp_graph.meta.sweep import stack, unstack  # noqa: E402
from mplp_graph.meta.train import meta_train  # noqa: E402

run_params = [prog.init_params(jax.random.PRNGKey(s)) for s in (0, 1)]
run_pools = [make_pool(prog, jax.random.PRNGKey(10 + s), 8) for s in (0, 1)]
run_keys = [jax.random.PRNGKey(20 + s) for s in (0, 1)]
steps_alone = [jplain(p, plain.init_opt_state(p), mask, q, jax.random.fold_in(k, 0)) for p, q, k in zip(run_params, run_pools, run_keys)]
alone = [s[0] for s in steps_alone]
with tempfile.TemporaryDirectory() as d:
    split, hist = meta_train(plain, stack(run_params), mask, stack(run_pools), jnp.stack(run_keys), 1, d, runs=2, progress=False, mesh=mesh)
    saved = dict(np.load(d + "/params.npz"))
pairs = [(x, y, p) for i in (0, 1) for x, y, p in zip(jax.tree_util.tree_leaves(alone[i]), jax.tree_util.tree_leaves(unstack(split, i)),
                                                      jax.tree_util.tree_leaves(run_params[i]))]
print(json.dumps({"sweep_diff": max(float(jnp.abs(x - y).max()) for x, y, _ in pairs),
                  "sweep_moved": max(float(jnp.abs(x - p).max()) for x, _, p in pairs),
                  "sweep_devices": len(jax.tree_util.tree_leaves(split)[0].sharding.device_set),
                  "sweep_rows": len(hist), "sweep_saved_runs": {v.shape[0] for v in saved.values()} == {2},
                  "sweep_loss": hist[0]["loss"], "alone_loss": [float(s[2]["loss"]) for s in steps_alone]}))
