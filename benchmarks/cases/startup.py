"""Start-up: the wall time of ``mplp-graph train CONFIG --steps 1`` in a fresh process without
any compilation cache (``MPLP_GRAPH_CACHE=off``): import, build (programs, data), learner init and
the statistics rollouts, the meta-step's trace + XLA compile + first run, the results written.
What a user waits for before the first meta-step on a new machine. One timed unit is one such
process, so every call is a "first call" (the row's ``compile_s`` is about zero; the median is
the figure). Variants: the config as it is (``engine``) and with ``meta.fast_compile: true``
(XLA optimization level 1 for the meta-step)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from benchmarks.harness import ROOT, Case, Variant


def _train(config: Path, overrides: dict[str, Any]) -> Variant:
    def build():
        tmp = Path(tempfile.mkdtemp(prefix="mplp_startup_"))
        doc = yaml.safe_load(config.read_text())
        for dotted, value in overrides.items():
            section, key = dotted.split(".")
            doc[section][key] = value
        cfg = tmp / "config.yaml"
        cfg.write_text(yaml.safe_dump(doc))
        env = {**os.environ, "MPLP_GRAPH_CACHE": "off", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

        def run() -> dict:
            run_dir = Path(tempfile.mkdtemp(prefix="run_", dir=tmp))
            cmd = [sys.executable, "-m", "mplp_graph.cli", "train", str(cfg), "--steps", "1", "--no-progress", "--no-resume", "--run-dir", str(run_dir)]
            done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-2000:]}")
            lines = (run_dir / "metrics.jsonl").read_text().splitlines()
            return json.loads(lines[-1])

        return run

    name = "engine" if not overrides else "_".join(k.split(".")[-1] for k in overrides)
    return Variant(name, build, note=f"overrides {overrides}" if overrides else "")


def _finite_first_step(outs: dict[str, Any]) -> dict:
    losses = {k: out.get("loss") for k, out in outs.items()}
    for k, loss in losses.items():
        assert isinstance(loss, (int, float)) and math.isfinite(loss), f"{k}: the first meta-step's loss is {loss!r}"
    return {"first_step_loss": losses}


def startup_case(experiment: str, variants: tuple[dict, ...], rounds: int, tags: tuple = ()) -> Case:
    config = ROOT / "experiments" / experiment / "config.yaml"
    return Case(
        name=f"startup_{experiment}", variants=tuple(_train(config, o) for o in variants), baseline="fast_compile",
        check=_finite_first_step, rounds=rounds,
        params={"config": str(config.relative_to(ROOT)), "command": "mplp-graph train CONFIG --steps 1 (fresh process, MPLP_GRAPH_CACHE=off)",
                "unit": "one fresh process up to the end of the first meta-step"},
        tags=("startup", "slow", *tags),
    )


CASES = (
    startup_case("mnist", ({}, {"meta.fast_compile": True}), rounds=2),
    startup_case("sinusoid", ({},), rounds=1),
)
