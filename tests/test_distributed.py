"""Meta-training as a job of several processes (mplp_graph.distributed, docs/scaling.md): two
processes on localhost with gloo CPU collectives give the single process's meta-loss,
meta-gradient and parameters; a job that loses a process stops with a message naming it and
resumes from its last checkpoint to the parameters of an uninterrupted job; bad settings are
located errors with exit status 2."""

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
STEPS = 40  # long enough that a process can be killed between the first checkpoint (step 4) and the end
CONFIG = {  # the config of tests/scripts/dist_train.py
    "experiment": "dist",
    "graph": {"sizes": [1, 4, 1], "msg": 2, "hidden": 3},
    "task": {"inner_steps": 2, "batch": 4, "cv_points": 6},
    "meta": {"steps": STEPS, "outer_batch": 4, "pool": 8, "checkpoint_every": 4, "stats_rounds": 0},
}


def _env(cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "XLA_FLAGS"))}
    env.update({"PYTHONPATH": str(ROOT), "MPLP_GRAPH_CACHE": str(cache), "MPLP_GRAPH_HEARTBEAT_TIMEOUT": "10", **extra})
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mplp_graph.cli", *args]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 40 meta-steps by one process and, through `mplp-graph launch`, by two."""
    d = tmp_path_factory.mktemp("dist")
    env = _env(d / "cache")
    one = subprocess.run([sys.executable, str(SCRIPT), str(d / "one"), str(STEPS)], env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-3000:]
    two = subprocess.run(_cli("launch", "--processes", "2", "--", sys.executable, str(SCRIPT), str(d / "two"), str(STEPS)),
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert "devices 1 processes 1 mesh False" in one.stdout
    assert "[0] devices 2 processes 2 mesh True" in two.stdout and "[1] devices 2 processes 2 mesh True" in two.stdout
    return d


def _params(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one(runs):
    l1, l2 = float((runs / "one.loss").read_text()), float((runs / "two.loss").read_text())
    assert abs(l1 - l2) <= 1e-6 * abs(l1)
    g1, g2 = _params(runs / "one.grad.npz"), _params(runs / "two.grad.npz")
    assert g1.keys() == g2.keys()
    scale = max(float(np.abs(g).max()) for g in g1.values())
    assert scale > 0
    assert max(float(np.abs(g1[k] - g2[k]).max()) for k in g1) <= 1e-5 * scale
    m1, m2 = _metrics(runs / "one"), _metrics(runs / "two")
    assert [r["step"] for r in m1] == [r["step"] for r in m2] == list(range(1, STEPS + 1))
    np.testing.assert_allclose([r["loss"] for r in m2], [r["loss"] for r in m1], rtol=1e-4)
    p0 = _params(sorted((runs / "one").glob("ckpt_*.npz"))[0])  # parameters moved over the last steps ...
    p1, p2 = _params(runs / "one" / "params.npz"), _params(runs / "two" / "params.npz")
    moved = max(float(np.abs(p1[k] - p0[f"params{k}"]).max()) for k in p1)
    assert moved > 1e-4
    assert max(float(np.abs(p1[k] - p2[k]).max()) for k in p1) <= 1e-2 * moved  # ... the same way in both jobs
    assert not (runs / "two" / ".metrics.jsonl").exists() and sorted(p.name for p in (runs / "two").glob("ckpt_*.json"))[-1] == f"ckpt_{STEPS:08d}.json"


def _start_job(config: Path, run_dir: Path, env: dict, port: int) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(_cli("train", str(config), "--run-dir", str(run_dir), "--no-progress"), env=job_env(2, i, port, env),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]


def test_killed_process_stops_the_job_and_the_job_resumes(runs, tmp_path):
    """Kill process 1 after the first checkpoint: process 0 stops at once naming it, the
    checkpoint stays intact, and the restarted job ends with the uninterrupted job's parameters."""
    from mplp_graph.meta.checkpoint import latest_checkpoint, read_manifest

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    run_dir = tmp_path / "run"
    env = _env(runs / "cache")
    procs = _start_job(config, run_dir, env, free_port())
    deadline = time.monotonic() + 240
    while not (run_dir / "ckpt_00000004.json").exists():
        assert time.monotonic() < deadline and procs[0].poll() is None, procs[0].communicate()[1][-3000:]
        time.sleep(0.01)
    procs[1].send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    _, err0 = procs[0].communicate(timeout=60)
    procs[1].wait()
    assert procs[0].returncode == 3, err0[-3000:]
    assert time.monotonic() - t0 < 30
    assert "process 1 of 2 stopped" in err0 and "restart the whole job" in err0, err0[-2000:]
    ckpt = latest_checkpoint(run_dir)
    step = int(read_manifest(ckpt)["step"])
    assert 4 <= step < STEPS, "the job finished before process 1 was killed"
    restarted = _start_job(config, run_dir, env, free_port())
    for p in restarted:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
    done, reference = _params(run_dir / "params.npz"), _params(runs / "two" / "params.npz")
    assert max(float(np.abs(done[k] - reference[k]).max()) for k in reference) <= 1e-6
    assert [r["loss"] for r in _metrics(run_dir)] == pytest.approx([r["loss"] for r in _metrics(runs / "two")], rel=1e-6)


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
])
def test_bad_job_settings(tmp_path, extra, expected):
    from mplp_graph.distributed import DistributedError, settings_from_env

    with pytest.raises(DistributedError, match=expected.replace("..", r"\.\.").replace("(", r"\(")):
        settings_from_env(extra)


def test_outer_batch_not_divisible_by_the_devices(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "meta": {**CONFIG["meta"], "outer_batch": 3, "shard_tasks": True}}))
    env = _env(tmp_path / "cache", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    out = subprocess.run(_cli("train", str(config), "--run-dir", str(tmp_path / "run")), env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "meta.outer_batch" in out.stderr and "outer batch (3 tasks) must be a multiple of the number of devices it is split over (2" in out.stderr
    assert str(config) in out.stderr and "Traceback" not in out.stderr
