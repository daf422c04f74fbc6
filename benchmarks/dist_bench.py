"""Meta-steps split over processes and devices (docs/scaling.md): two benchmark rows.

* ``multiprocess_sinusoid_meta_step``: the paper's sinusoid meta-step (a (1, 20, 20, 1) net, 5
  inner steps of batch 10) with an outer batch of 8 tasks, by 1 process (1 CPU device) and by 2
  processes x 1 CPU device on this machine (``mplp_graph.launch``, gloo collectives): seconds
  per meta-step and their ratio (the cost of splitting the tasks across processes);
* ``weak_scaling_tasks``: one process with 1, 2, 4 simulated CPU devices, 2 tasks per device
  (outer batch 2, 4, 8, ``meta.shard_tasks``): seconds per meta-step.

On one 2-core CPU neither can be faster: the processes or simulated devices share the same two
cores. The point is that the split runs, and what it costs. Run: ``python benchmarks/dist_bench.py``
(about 5-10 minutes on a 2-core CPU); writes ``benchmarks/results/dist_bench.json``. Self-contained:
``python benchmarks/dist_bench.py worker ...`` is what each measured process runs.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "dist_bench.json"
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
        cmd = [sys.executable, __file__, "worker", str(out), str(outer_batch), str(devices), str(int(shard))]
        if processes > 1:
            cmd = [sys.executable, "-m", "mplp_graph.cli", "launch", "--processes", str(processes), "--", *cmd]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"{cmd} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
        return json.loads(out.read_text())


def main() -> None:
    one = _measure(8, 1, 1, shard=False)
    two = _measure(8, 1, 2, shard=True)
    weak = [_measure(TASKS_PER_DEVICE * n, n, 1, shard=True) for n in (1, 2, 4)]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    import jax

    doc = {
        "benchmark": "dist_bench",
        "command": "python benchmarks/dist_bench.py",
        "machine": f"{os.cpu_count()}-core CPU, {platform.system()} {platform.release()}, python {platform.python_version()}, no GPU",
        "jax": jax.__version__,
        "git_commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_average_at_end": list(os.getloadavg()),
        "note": (f"seconds per meta-step: median of {TIMED_STEPS} steps after the compile. The machine's 2 cores were shared with other "
                 "jobs (see load_average_at_end), so the figures are noisy; on 2 shared cores neither split can be faster than one process."),
        "rows": [
            {"name": "multiprocess_sinusoid_meta_step", "what": "sinusoid meta-step, (1, 20, 20, 1) net, outer batch 8: 2 processes x 1 CPU "
             "device (gloo, localhost) vs 1 process", "one_process": one, "two_processes": two,
             "ratio_two_over_one": round(two["median_step_s"] / one["median_step_s"], 3),
             "loss_difference": abs(two["loss"] - one["loss"])},
            {"name": "weak_scaling_tasks", "what": f"sinusoid meta-step, {TASKS_PER_DEVICE} tasks per simulated CPU device, 1 process",
             "points": weak,
             "ratio_to_one_device": [round(w["median_step_s"] / weak[0]["median_step_s"], 3) for w in weak]},
        ],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=RESULTS.parent, prefix=".dist_bench.")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    os.replace(tmp, RESULTS)
    print(json.dumps(doc["rows"], indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), bool(int(sys.argv[5])))
    else:
        main()
