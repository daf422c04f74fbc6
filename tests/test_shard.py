"""The meta-step with its outer batch split over 2 (simulated CPU) devices equals the plain one,
and so does a sweep whose runs are split over them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "scripts" / "shard_check.py"


def test_sharded_meta_step_equals_plain():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    out = subprocess.run([sys.executable, str(SCRIPT)], check=False, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    r = {k: v for line in out.stdout.strip().splitlines() if line.startswith("{") for k, v in json.loads(line).items()}
    assert r["devices"] == 2
    assert abs(r["loss_plain"] - r["loss_sharded"]) <= 1e-6 * abs(r["loss_plain"])
    assert r["max_param_move"] > 1e-4  # the step did something ...
    assert r["max_param_diff"] < 1e-2 * r["max_param_move"]  # ... and the same thing on 2 devices
    assert r["all_reduces"] > 0  # the meta-gradient is reduced across devices
    t = json.loads(next(ln for ln in out.stderr.splitlines() if '"train_steps"' in ln))  # meta.shard_tasks: true trains end to end
    assert t == {"train_steps": 2, "train_finite": True}
    # a sweep's runs split over the devices (meta_train(..., runs=2, mesh=...)): each run's parameters as alone
    assert r["sweep_devices"] == 2 and r["sweep_rows"] == 1 and r["sweep_saved_runs"]
    assert r["sweep_loss"] == pytest.approx(r["alone_loss"], rel=1e-5)  # the same meta-losses ...
    # ... and updates: Adam's first step, g / (|g| + eps) per element, magnifies float rounding where |g| ~ eps
    assert r["sweep_moved"] > 1e-4 and r["sweep_diff"] < 5e-2 * r["sweep_moved"]
