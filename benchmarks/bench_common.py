"""Helpers shared by the benchmark scripts: git facts, the machine line, atomic JSON results."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def machine_line() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()}-core CPU ({model}), {platform.system()} {platform.release()}, python {platform.python_version()}"


def result_header(name: str, argv: list[str] | None, note: str = "") -> dict[str, Any]:
    """The fields every results file starts with: benchmark, command, machine, jax, git, date, note."""
    import sys
    import time

    import jax

    return {
        "benchmark": name,
        "command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
        "machine": machine_line(),
        "jax": jax.__version__,
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "note": note,
    }


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def mnist_eval_setup(**graph: Any) -> tuple[Any, Any, Any]:
    """``(setup, untrained learner params, prepared MNIST splits)`` for the MNIST experiment config
    (experiments/mnist/config.yaml, one statistics round) with ``graph`` keys overridden, e.g.
    ``first_layer="rows"``; needs MNIST (docs/data.md)."""
    from mplp_graph.meta.config import apply_overrides, load_experiment_config
    from mplp_graph.meta.run import build, initial_params, load_mnist_splits

    config = load_experiment_config(ROOT / "experiments" / "mnist" / "config.yaml")
    config = apply_overrides(config, {"meta.stats_rounds": 1, **{f"graph.{k}": v for k, v in graph.items()}}, "benchmark")
    prepared, meta = load_mnist_splits(config)
    setup = build(config, data=meta)
    return setup, initial_params(setup), prepared
