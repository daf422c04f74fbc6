"""Meta-training as a job of several processes (mplp_graph.distributed, docs/scaling.md): two
processes on localhost (gloo CPU collectives, started by `mplp-graph launch`) give the single
process's meta-loss and meta-gradient; when one process of the job is killed the other stops
at once naming it, the last checkpoint stays intact, and the restarted job ends with the
parameters of an uninterrupted run; bad settings are located errors with exit status 2."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from mplp_graph.launch import free_port, job_env

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "dist_train.py"
STEPS = 24  # long enough that a process can be killed between the first checkpoint (step 4) and the end
CONFIG = {  # the config of tests/scripts/dist_train.py
    "experiment": "dist",
    "graph": {"sizes": [1, 4, 1], "msg": 2, "hidden": 3},
    "task": {"inner_steps": 2, "batch": 4, "cv_points": 6},
    "meta": {"steps": STEPS, "outer_batch": 4, "pool": 8, "checkpoint_every": 4, "stats_rounds": 0, "fast_compile": True},
}


def _env(cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "XLA_FLAGS"))}
    env.update({"PYTHONPATH": str(ROOT), "MPLP_GRAPH_CACHE": str(cache), "MPLP_GRAPH_HEARTBEAT_TIMEOUT": "10", **extra})
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mplp_graph.cli", *args]


def _params(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process runs the meta-steps uninterrupted; beside it, `mplp-graph launch` runs them
    as a job of two processes, whose process 1 is killed after the first checkpoint; then the
    job is launched again and resumes. Returns the folder and what the interrupted job said."""
    d = tmp_path_factory.mktemp("dist")
    env = _env(d / "cache")
    launch = _cli("launch", "--processes", "2", "--grace", "20", "--", sys.executable, str(SCRIPT), str(d / "two"), str(STEPS))
    one = subprocess.Popen([sys.executable, str(SCRIPT), str(d / "one"), str(STEPS)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    two = subprocess.Popen(launch, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (d / "two" / "ckpt_00000004.json").exists():
        assert time.monotonic() < deadline and two.poll() is None, two.communicate()[0][-3000:]
        time.sleep(0.01)
    os.kill(int((d / "two.pid1").read_text()), signal.SIGKILL)
    t0 = time.monotonic()
    out, err = two.communicate(timeout=120)
    interrupted = {"status": two.returncode, "out": out, "err": err, "stop_s": time.monotonic() - t0}
    from mplp_graph.meta.checkpoint import latest_checkpoint, load_checkpoint, read_manifest

    ckpt = latest_checkpoint(d / "two")  # intact: its checksum and arrays are checked on loading
    interrupted["step"] = int(read_manifest(ckpt)["step"])
    interrupted["arrays"] = len(load_checkpoint(ckpt, {})[1]["arrays"])
    again = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "[0] devices 2 processes 2 mesh True" in again.stdout and "[1] devices 2 processes 2 mesh True" in again.stdout
    o1, e1 = one.communicate(timeout=300)
    assert one.returncode == 0, o1[-2000:] + e1[-3000:]
    assert "devices 1 processes 1 mesh False" in o1
    return d, interrupted


def test_two_processes_match_one(runs):
    d, _ = runs
    l1, l2 = float((d / "one.loss").read_text()), float((d / "two.loss").read_text())
    assert abs(l1 - l2) <= 1e-6 * abs(l1)
    g1, g2 = _params(d / "one.grad.npz"), _params(d / "two.grad.npz")
    assert g1.keys() == g2.keys()
    scale = max(float(np.abs(g).max()) for g in g1.values())
    assert scale > 0
    assert max(float(np.abs(g1[k] - g2[k]).max()) for k in g1) <= 1e-5 * scale


def test_killed_process_stops_the_job_and_the_job_resumes(runs):
    d, interrupted = runs
    # the job's status is the killed process's; process 0 stopped on its own, at once
    assert interrupted["status"] == 128 + signal.SIGKILL and interrupted["stop_s"] < 60, interrupted["out"][-3000:] + interrupted["err"][-2000:]
    assert "[0] mplp-graph: process 0: process 1 of 2 stopped" in interrupted["out"], interrupted["out"][-3000:]
    assert "restart the whole job" in interrupted["out"] and "launch: the job failed: process 1 was killed by SIGKILL" in interrupted["err"]
    assert 4 <= interrupted["step"] < STEPS and interrupted["arrays"] > 0, "the job finished before process 1 was killed"
    # the resumed job: every row and the final parameters of the uninterrupted run (one process: float32 rounding)
    m1, m2 = _metrics(d / "one"), _metrics(d / "two")
    assert [r["step"] for r in m1] == [r["step"] for r in m2] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([r["loss"] for r in m2], [r["loss"] for r in m1], rtol=1e-4)
    p0 = _params(sorted((d / "one").glob("ckpt_*.npz"))[0])  # parameters moved over the last steps ...
    p1, p2 = _params(d / "one" / "params.npz"), _params(d / "two" / "params.npz")
    moved = max(float(np.abs(p1[k] - p0[f"params{k}"]).max()) for k in p1)
    assert moved > 1e-4
    assert max(float(np.abs(p1[k] - p2[k]).max()) for k in p1) <= 1e-2 * moved  # ... the same way in both
    assert sorted(p.name for p in (d / "two").glob("ckpt_*.json"))[-1] == f"ckpt_{STEPS:08d}.json"
    assert not list((d / "two").glob(".*"))  # no temporary file left


def test_unreachable_coordinator_is_a_clear_error_within_the_timeout(tmp_path):
    env = _env(tmp_path / "cache", MPLP_GRAPH_INIT_TIMEOUT="3")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    t0 = time.monotonic()
    out = subprocess.run(_cli("train", str(config), "--run-dir", str(tmp_path / "run")), env=job_env(2, 1, free_port(), env),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert time.monotonic() - t0 < 60
    assert "process 1 of 2" in out.stderr and "could not join the job within 3 s" in out.stderr and "nothing answers at localhost:" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra, expected", [
    ({"JAX_COORDINATOR_ADDRESS": "localhost:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}, "JAX_PROCESS_ID=2: expected 0 .. 1"),
    ({"JAX_COORDINATOR_ADDRESS": "localhost", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "expected HOST:PORT"),
    ({"JAX_NUM_PROCESSES": "2"}, "JAX_NUM_PROCESSES set but JAX_COORDINATOR_ADDRESS is not"),
    ({"JAX_COORDINATOR_ADDRESS": "localhost:1234", "JAX_PROCESS_ID": "0"}, "JAX_NUM_PROCESSES not"),
])
def test_bad_job_settings(extra, expected):
    from mplp_graph.distributed import DistributedError, settings_from_env

    with pytest.raises(DistributedError) as err:
        settings_from_env(extra)
    assert expected in str(err.value)


def test_outer_batch_not_divisible_by_the_devices(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "meta": {**CONFIG["meta"], "outer_batch": 3, "shard_tasks": True}}))
    env = _env(tmp_path / "cache", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    out = subprocess.run(_cli("train", str(config), "--run-dir", str(tmp_path / "run")), env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "meta.outer_batch" in out.stderr and "outer batch (3 tasks) must be a multiple of the number of devices it is split over (2" in out.stderr
    assert str(config) in out.stderr and "Traceback" not in out.stderr
