"""``mplp-graph launch --processes N -- COMMAND...``: a job of N processes on this machine.

Starts COMMAND N times with the variables :mod:`mplp_graph.distributed` reads
(``JAX_COORDINATOR_ADDRESS=localhost:PORT``, ``JAX_NUM_PROCESSES=N``, ``JAX_PROCESS_ID=i``),
prefixes each output line with ``[i]``, and waits. When one process fails, the others get
``grace`` seconds to stop on their own (they notice in their next collective operation), then
are terminated. The exit status is 0 when every process succeeded, else that of the first
process that failed. On several hosts, a batch system (SLURM's ``srun``) or one shell per host
plays this part (docs/scaling.md).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO

from mplp_graph.distributed import COORDINATOR, EXIT_LOST_PROCESS, NUM_PROCESSES, PROCESS_ID


def free_port() -> int:
    """A TCP port nothing listens on now (the coordinator binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def job_env(processes: int, process_id: int, port: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of process ``process_id`` of a job on this machine."""
    env = dict(os.environ if base is None else base)
    env.update({COORDINATOR: f"localhost:{port}", NUM_PROCESSES: str(processes), PROCESS_ID: str(process_id)})
    env.setdefault("PYTHONUNBUFFERED", "1")  # lines appear as they are written
    return env


def _pump(stream: IO[str], prefix: str, out: IO[str]) -> None:
    for line in stream:
        out.write(prefix + line)
        out.flush()


def _describe(status: int) -> str:
    if status == EXIT_LOST_PROCESS:
        return f"exited with status {status} (it lost another process of the job)"
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


def launch(command: Sequence[str], processes: int, *, port: int | None = None, grace: float = 60.0) -> int:
    """Run ``command`` as a job of ``processes`` processes on this machine; returns the job's
    exit status (module docstring)."""
    port = port or free_port()
    procs: list[subprocess.Popen] = []
    pumps = []
    try:
        for i in range(processes):
            p = subprocess.Popen(list(command), env=job_env(processes, i, port), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, bufsize=1)
            procs.append(p)
            t = threading.Thread(target=_pump, args=(p.stdout, f"[{i}] ", sys.stdout), daemon=True)
            t.start()
            pumps.append(t)
    except OSError as e:
        for p in procs:
            p.kill()
        raise FileNotFoundError(e.errno, f"cannot start {command[0]!r}: {e.strerror}", command[0]) from None
    first_failure: tuple[int, int] | None = None
    deadline = terminated = None
    try:
        while any(p.poll() is None for p in procs):
            now = time.monotonic()
            if first_failure is None:
                failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode not in (None, 0)]
                failed.sort(key=lambda f: f[1] == EXIT_LOST_PROCESS)  # a process that only lost another is not the cause
                if failed:
                    first_failure, deadline = failed[0], now + grace
                    print(f"launch: process {failed[0][0]} {_describe(failed[0][1])}; waiting up to {grace:.0f} s for the others to stop",
                          file=sys.stderr, flush=True)
            elif terminated is None and now > deadline:
                terminated = now
                for i, p in enumerate(procs):
                    if p.poll() is None:
                        print(f"launch: process {i} still runs {grace:.0f} s after process {first_failure[0]} failed; terminating it",
                              file=sys.stderr, flush=True)
                        p.terminate()
            elif terminated is not None and now > terminated + 10.0:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.05)
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        return 130
    for t in pumps:
        t.join(timeout=5)
    failed = sorted(((i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0), key=lambda f: f[1] == EXIT_LOST_PROCESS)
    if first_failure is None and failed:
        first_failure = failed[0]
    if first_failure is None:
        return 0
    i, status = first_failure
    others = "; ".join(f"process {j} {_describe(st)}" for j, st in failed if j != i)
    print(f"launch: the job failed: process {i} {_describe(status)}" + (f"; {others}" if others else ""), file=sys.stderr, flush=True)
    return status if status > 0 else 128 - status
