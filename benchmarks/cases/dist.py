"""Meta-steps split over processes and devices (docs/scaling.md), each measured in processes of
its own (tag ``separate``: run with ``--tag dist`` or ``--case``):

* ``dist_sinusoid_meta_step``: the paper's sinusoid meta-step (a (1, 20, 20, 1) net, 5 inner steps
  of batch 10) with an outer batch of 8 tasks, by 2 processes x 1 CPU device (``engine``:
  ``mplp-graph launch``, gloo collectives) and by 1 process (``one_process``);
* ``dist_weak_scaling``: one process with 1, 2, 4 simulated CPU devices, 2 tasks per device (outer
  batch 2, 4, 8, ``meta.shard_tasks``).

One timed unit is the whole launch (start-up, compile, 1 + 20 meta-steps): the row's ``*_ms``
are those wall times; the figure is in ``check``: each variant's median seconds per meta-step over
the 20 steps after the compile, measured inside the worker, and the ratios. On one 2-core CPU
neither split can be faster: the processes or simulated devices share the same two cores; the
point is that the split runs, and what it costs. ``python -m benchmarks.cases.dist worker ...`` is
what each measured process runs.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, Case, Variant

TIMED_STEPS = 20
TASKS_PER_DEVICE = 2


def worker(out: str, outer_batch: int, devices: int, shard: bool) -> None:
    """One process: build the sinusoid meta-step, compile it, time TIMED_STEPS steps."""
    from mplp_graph import distributed

    job = distributed.initialize_from_env()
    import jax

    if job is None and devices > 1:  # simulated devices, set before JAX starts its backend
        jax.config.update("jax_num_cpu_devices", devices)
    import numpy as np

    from mplp_graph.meta.config import ExperimentConfig
    from mplp_graph.meta.run import build, initial_params, meta_step
    from mplp_graph.meta.shard import replicate
    from mplp_graph.meta.step import make_pool, trainable_mask
    from mplp_graph.meta.train import _jitted

    config = ExperimentConfig.model_validate({"meta": {"outer_batch": outer_batch, "pool": 32, "stats_rounds": 0, "shard_tasks": shard}})
    setup = build(config)
    step_fn = meta_step(setup)
    params = initial_params(setup)
    pool = make_pool(setup.prog, jax.random.PRNGKey(1), config.meta.pool)
    opt, mask = step_fn.init_opt_state(params), trainable_mask(params)
    if step_fn.mesh is not None:
        params, opt, mask, pool = replicate(step_fn.mesh, (params, opt, mask, pool))
    step = _jitted(step_fn)
    key = jax.random.PRNGKey(2)
    t0 = time.perf_counter()
    params, opt, m = step(params, opt, mask, pool, np.asarray(jax.random.fold_in(key, 0)), None)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    times = []
    for s in range(1, TIMED_STEPS + 1):
        t = time.perf_counter()
        params, opt, m = step(params, opt, mask, pool, np.asarray(jax.random.fold_in(key, s)), None)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    if jax.process_index() == 0:
        Path(out).write_text(json.dumps({
            "processes": jax.process_count(), "devices": jax.device_count(), "outer_batch": outer_batch,
            "compile_and_first_step_s": round(compile_s, 2), "median_step_s": round(float(np.median(times)), 5),
            "min_step_s": round(float(np.min(times)), 5), "loss": float(m["loss"]),
        }))


def _measure(outer_batch: int, devices: int, processes: int, shard: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "XLA_FLAGS"))}
    env.update(PYTHONPATH=str(ROOT), MPLP_GRAPH_CACHE="off")
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "row.json"
        cmd = [sys.executable, "-m", "benchmarks.cases.dist", "worker", str(out), str(outer_batch), str(devices), str(int(shard))]
        if processes > 1:
            cmd = [sys.executable, "-m", "mplp_graph.cli", "launch", "--processes", str(processes), "--", *cmd]
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"{cmd} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
        return json.loads(out.read_text())


def _variant(name: str, outer_batch: int, devices: int, processes: int, shard: bool) -> Variant:
    return Variant(name, lambda: (lambda: _measure(outer_batch, devices, processes, shard)),
                   note=f"{processes} process(es) x {devices} CPU device(s), outer batch {outer_batch}")


def _per_step(outs: dict[str, Any], same_tasks: bool = True) -> dict:
    """The per-step figures of each worker; with ``same_tasks`` (one outer batch split
    differently) their first meta-losses must agree."""
    base = next(iter(outs.values()))
    for k, o in outs.items():
        assert math.isfinite(o["loss"]), f"{k}: loss {o['loss']}"
        assert not same_tasks or abs(o["loss"] - base["loss"]) <= 1e-4 * abs(base["loss"]), f"{k}: loss {o['loss']} vs {base['loss']}"
    return {"median_step_s": {k: o["median_step_s"] for k, o in outs.items()},
            "ratio_to_first": {k: round(o["median_step_s"] / base["median_step_s"], 3) for k, o in outs.items()},
            "workers": outs}


CASES = (
    Case("dist_sinusoid_meta_step", (_variant("engine", 8, 1, 2, True), _variant("one_process", 8, 1, 1, False)), baseline="one_process",
         check=_per_step, rounds=1, tags=("separate", "dist"),
         params={"experiment": "sinusoid defaults", "outer_batch": 8, "timed_steps": TIMED_STEPS, "unit": "one launch (see check for s per meta-step)"}),
    Case("dist_weak_scaling", tuple(_variant(f"devices_{n}" if n > 1 else "engine", TASKS_PER_DEVICE * n, n, 1, True) for n in (1, 2, 4)),
         baseline="devices_4", check=lambda outs: _per_step(outs, same_tasks=False), rounds=1, tags=("separate", "dist"),
         params={"tasks_per_device": TASKS_PER_DEVICE, "timed_steps": TIMED_STEPS, "unit": "one process (see check for s per meta-step)"}),
)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "worker":
        worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), bool(int(sys.argv[5])))
    else:
        raise SystemExit("usage: python -m benchmarks.cases.dist worker OUT OUTER_BATCH DEVICES SHARD (run the cases with python -m benchmarks.run_all --tag dist)")
