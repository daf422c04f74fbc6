"""Helpers shared by the benchmark scripts: git facts, the machine line, atomic JSON results."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import tempfile
import time
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
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),  # uncommitted changes to tracked files
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


def device_peak_mib() -> float | None:
    """Peak memory in use on the first JAX device so far (MiB), where the backend reports it (GPU);
    None on the CPU, whose backend keeps no such count (the benchmarks report peak RSS there)."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else round(peak / 2**20, 1)


LOCK_ENV = "MPLP_BENCH_LOCK"


@contextlib.contextmanager
def exclusive_device():
    """Hold the file lock named by ``$MPLP_BENCH_LOCK`` (if set) around a timed section.

    Several benchmark processes can then compile side by side (compilation runs on the host's
    cores) while their timed sections run one at a time, each with the accelerator to itself
    (experiments/device/gpu_bench.sh). Yields the seconds spent waiting for the lock. Without the
    variable it holds nothing."""
    path = os.environ.get(LOCK_ENV)
    if not path:
        yield 0.0
        return
    import fcntl
    import time

    with open(path, "a") as f:
        t0 = time.perf_counter()
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield time.perf_counter() - t0
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def round_order(names: list, r: int) -> list:
    """``names`` rotated by ``r``: the order of timing round ``r``, so that no contender is
    always first (or always right after another) in interleaved rounds."""
    return names[r % len(names) :] + names[: r % len(names)]


def interleaved_call_times(fns: dict[str, Any], reps: int) -> dict[str, list[float]]:
    """Seconds of each call of every function of ``fns`` (no arguments), ``reps`` rounds of one
    call each, the order rotating (:func:`round_order`)."""
    import jax

    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(reps):
        for name in round_order(names, r):
            t0 = time.perf_counter()
            jax.block_until_ready(fns[name]())
            times[name].append(time.perf_counter() - t0)
    return times


def mnist_eval_setup(**graph: Any) -> tuple[Any, Any]:
    """``(setup, untrained learner params)`` for the MNIST experiment config
    (experiments/mnist/config.yaml, one statistics round) with ``graph`` keys overridden, e.g.
    ``first_layer="rows"``; ``setup.family`` and ``setup.data`` are the MNIST task family and its
    arrays (the evaluation protocol's inputs). Needs MNIST (docs/data.md)."""
    from mplp_graph.meta.config import apply_overrides, load_experiment_config
    from mplp_graph.meta.run import build, initial_params

    config = load_experiment_config(ROOT / "experiments" / "mnist" / "config.yaml")
    config = apply_overrides(config, {"meta.stats_rounds": 1, **{f"graph.{k}": v for k, v in graph.items()}}, "benchmark")
    setup = build(config)
    return setup, initial_params(setup)
