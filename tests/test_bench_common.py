"""benchmarks/bench_common.py: the accelerator lock that lets benchmark processes compile side by
side while their timed sections run one at a time (experiments/device/gpu_bench.sh)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_common  # noqa: E402

HOLD = """
import sys, time
sys.path.insert(0, sys.argv[1])
import bench_common
with bench_common.exclusive_device():
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_exclusive_device_waits_for_another_process(tmp_path, monkeypatch):
    lock = tmp_path / "bench.lock"
    monkeypatch.setenv(bench_common.LOCK_ENV, str(lock))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(BENCH), "1.5"], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, bench_common.LOCK_ENV: str(lock)})
    try:
        assert holder.stdout.readline().strip() == "held"  # the other process is inside its timed section
        t0 = time.perf_counter()
        with bench_common.exclusive_device() as waited:
            inside = time.perf_counter() - t0
        # in only once the holder let go (it sleeps 1.5 s inside), and the wait it reports is that time
        assert waited >= 0.5 and abs(waited - inside) < 0.2, (waited, inside)
    finally:
        holder.wait(timeout=30)
    assert holder.returncode == 0


def test_exclusive_device_without_the_variable_holds_nothing(monkeypatch):
    monkeypatch.delenv(bench_common.LOCK_ENV, raising=False)
    with bench_common.exclusive_device() as waited:
        assert waited == 0.0
    import jax

    if jax.default_backend() == "cpu":
        assert bench_common.device_peak_mib() is None  # the CPU backend keeps no peak count
