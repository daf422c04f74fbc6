"""Run by tests/test_distributed.py, alone or as every process of a job (mplp-graph launch):
the first meta-step's meta-loss and meta-gradient (RUN_DIR.loss, RUN_DIR.grad.npz), then
``meta.steps`` meta-steps of training into RUN_DIR (mplp_graph.meta.run.train, resumable).
Each process writes its pid to RUN_DIR.pidI. Usage: dist_train.py RUN_DIR STEPS."""
import os
import sys

from mplp_graph import distributed
from mplp_graph.cache import enable_compilation_cache

job = distributed.initialize_from_env()  # before JAX starts its backend
enable_compilation_cache()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from mplp_graph import xla  # noqa: E402
from mplp_graph.meta.checkpoint import atomic_write_bytes, save_params_file  # noqa: E402
from mplp_graph.meta.config import ExperimentConfig  # noqa: E402
from mplp_graph.meta.run import build, initial_params, meta_step, train  # noqa: E402
from mplp_graph.meta.shard import replicate  # noqa: E402
from mplp_graph.meta.step import make_pool  # noqa: E402
from mplp_graph.meta.train import FAST_COMPILE  # noqa: E402

run_dir, steps = sys.argv[1], int(sys.argv[2])
with open(f"{run_dir}.pid{jax.process_index()}", "w") as f:  # for the test that kills one process of the job
    f.write(str(os.getpid()))
CONFIG = {  # tests/test_distributed.py writes the same config to a file for `mplp-graph train`
    "experiment": "dist",
    "graph": {"sizes": [1, 4, 1], "msg": 2, "hidden": 3},
    "task": {"inner_steps": 2, "batch": 4, "cv_points": 6},
    "meta": {"steps": steps, "outer_batch": 4, "pool": 8, "checkpoint_every": 4, "stats_rounds": 0, "fast_compile": True},
}
config = ExperimentConfig.model_validate(CONFIG)
setup = build(config)
step_fn = meta_step(setup)
params = initial_params(setup)
pool = make_pool(setup.prog, jax.random.PRNGKey(config.meta.seed + 1), config.meta.pool)
key = np.asarray(jax.random.fold_in(jax.random.PRNGKey(config.meta.seed + 2), 0))  # the first step's key (meta_train)


def loss_and_grad(p, pool, k):
    return jax.value_and_grad(lambda q: step_fn.batch_loss(q, step_fn.draw(q, pool, k, None))[0])(p)


if step_fn.mesh is not None:
    params, pool = replicate(step_fn.mesh, (params, pool))
    fn = xla.jit(loss_and_grad, FAST_COMPILE, out_shardings=NamedSharding(step_fn.mesh, PartitionSpec()))
else:
    fn = xla.jit(loss_and_grad, FAST_COMPILE)
loss, grad = fn(params, pool, key)
if jax.process_index() == 0:
    save_params_file(f"{run_dir}.grad.npz", grad)
    atomic_write_bytes(f"{run_dir}.loss", repr(float(loss)).encode())
train(config, run_dir, progress=False)
print(f"devices {jax.device_count()} processes {jax.process_count()} mesh {step_fn.mesh is not None}")
