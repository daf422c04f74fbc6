"""Groups of agents split across devices (mplp_graph.compile.partition): a dense MPLP net with
its hidden layer split, and a grid cellular automaton split by rows, step to step as the
unsplit programs on simulated CPU devices; the compile report names the split groups and the
collectives XLA inserted; a split that cannot be made is a located error."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "agent_shard_check.py"


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    full = {**{k: v for k, v in os.environ.items() if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"))},
            "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, *args], env=full, capture_output=True, text=True, timeout=300)


def test_split_groups_step_as_unsplit_on_4_devices():
    out = _run(str(SCRIPT), "4")
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["devices"] == 4
    m = r["mplp"]
    assert m["moved"] > 1e-4  # the learned protocol changed the weights ...
    assert m["diff"] <= 1e-5 * max(m["scale"], 1.0)  # ... and the split program computed the same states and outputs
    assert m["w0_devices"] == 4  # W0.w lies in four pieces
    assert sum(m["collectives"].values()) > 0  # messages between the pieces of the hidden layer
    assert [row[:4] for row in m["split"]] == [["W0", 1, 8, 4], ["b0", 0, 8, 4], ["a0", 0, 8, 4], ["W1", 0, 8, 4]]
    assert "x" not in m["split"][0][4] and "x" in m["split"][3][4]  # W0.x is stored once along axis 1: replicated
    g = r["grid"]
    assert g["moved"] > 1e-3 and g["diff"] <= 1e-6 and g["cell_devices"] == 4
    assert sum(g["collectives"].values()) > 0  # the stencil reads neighbouring rows on other devices


def test_inspect_reports_the_split_and_rejects_bad_axes(tmp_path):
    graph = str(ROOT / "graphs" / "life_grid.yaml")
    out = _run("-m", "mplp_graph.cli", "inspect", graph, "--shard", "cell:1", "--cpu-devices", "2")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "split across 2 devices" in out.stdout and "collectives per step" in out.stdout
    lines = out.stdout.splitlines()
    table = lines[next(i for i, ln in enumerate(lines) if ln.startswith("split across")) + 3]  # title, header, rule, first row
    assert table.split() == ["cell", "1", "8", "4", "s,", "n"]
    for shard, expected in (("cell:2", "group 'cell' has agent axes 0..1 (shape [8, 8]); found axis 2"),
                            ("cells:0", "has no group 'cells'"),
                            ("cell:0", "agent axis 0 of group 'cell' has 8 agents, not a multiple of the 3 devices"),
                            ("cell", "expected GROUP:AXIS")):
        bad = _run("-m", "mplp_graph.cli", "inspect", graph, "--shard", shard, "--cpu-devices", "3")
        assert bad.returncode == 2, (shard, bad.stderr[-2000:])
        assert expected in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def test_config_shard_agents_is_checked_against_graph_and_devices(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "graph": {"sizes": [1, 6, 1], "msg": 2, "hidden": 3},
        "task": {"inner_steps": 2, "batch": 4, "cv_points": 6},
        "meta": {"steps": 2, "outer_batch": 2, "pool": 4, "stats_rounds": 0, "shard_agents": {"W0": 1, "a0": 1}},
    }))
    out = _run("-m", "mplp_graph.cli", "train", str(config), "--run-dir", str(tmp_path / "run"), XLA_FLAGS="--xla_force_host_platform_device_count=4")
    assert out.returncode == 2, out.stderr[-2000:]
    assert "meta.shard_agents.W0" in out.stderr and "6 agents, not a multiple of the 4 devices" in out.stderr
    assert "meta.shard_agents.a0" in out.stderr and "group 'a0' has agent axes 0..0 (shape [6]); found axis 1" in out.stderr
    assert str(config) in out.stderr and not (tmp_path / "run").exists()
