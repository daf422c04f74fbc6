"""The meta-step with its outer batch split over 2 (simulated CPU) devices equals the plain one."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent / "scripts" / "shard_check.py"


def test_sharded_meta_step_equals_plain():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    out = subprocess.run([sys.executable, str(SCRIPT)], check=False, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["devices"] == 2
    assert abs(r["loss_plain"] - r["loss_sharded"]) <= 1e-6 * abs(r["loss_plain"])
    assert r["max_param_move"] > 1e-4  # the step did something ...
    assert r["max_param_diff"] < 1e-2 * r["max_param_move"]  # ... and the same thing on 2 devices
    assert r["all_reduces"] > 0  # the meta-gradient is reduced across devices
    t = json.loads(out.stderr.strip().splitlines()[-1])  # meta.shard_tasks: true trains end to end
    assert t == {"train_steps": 2, "train_finite": True}
