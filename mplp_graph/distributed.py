"""Several cooperating processes: JAX's multi-controller runtime (``jax.distributed``).

Every process runs the same program (``mplp-graph train CONFIG``, or a script calling
:func:`mplp_graph.meta.train.meta_train`); :func:`initialize_from_env` connects them before
JAX starts its backend, after which ``jax.devices()`` lists the devices of all processes and a
mesh over them (:func:`mplp_graph.meta.shard.task_mesh`) splits the outer batch across
processes. docs/scaling.md is the user's guide.

Which processes form a job comes from the environment, as ``jax.distributed.initialize``
reads it:

* ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0, which runs the coordinator),
  ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``: any launcher (``mplp-graph launch``, a shell
  loop, ssh, a batch system's prolog) sets these three;
* inside a SLURM step with more than one task (``srun``), nothing: JAX reads ``SLURM_*``.

``MPLP_GRAPH_INIT_TIMEOUT`` (seconds, default 120) bounds the wait for the coordinator and for
every process to join; ``MPLP_GRAPH_HEARTBEAT_TIMEOUT`` (default 30) is how long a silent
process is taken for alive. CPU processes exchange data with gloo over TCP.

When a process dies, the others fail in their next collective operation;
:func:`lost_process_error` turns that failure into :class:`LostProcessError`, which names the
lost process when it can (processes publish their host and pid when they join). Uncaught, it
ends the process at once with status 3 (:func:`exit_lost`).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping

from mplp_graph.errors import MplpGraphError

COORDINATOR = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES = "JAX_NUM_PROCESSES"
PROCESS_ID = "JAX_PROCESS_ID"
INIT_TIMEOUT = "MPLP_GRAPH_INIT_TIMEOUT"
HEARTBEAT_TIMEOUT = "MPLP_GRAPH_HEARTBEAT_TIMEOUT"
DEFAULT_INIT_TIMEOUT = 120
DEFAULT_HEARTBEAT_TIMEOUT = 30
EXIT_LOST_PROCESS = 3  # CLI status when another process of the job was lost
_KEY = "mplp_graph/process/"  # coordinator key-value store: where each process runs


class DistributedError(MplpGraphError):
    """The processes of a job cannot be started or connected as configured."""


class LostProcessError(MplpGraphError):
    """Another process of a running job stopped; this process cannot go on."""


@dataclass(frozen=True)
class Settings:
    """How this process joins a job. ``coordinator`` None: let JAX detect a cluster (SLURM)."""

    coordinator: str | None
    num_processes: int | None
    process_id: int | None
    init_timeout: int = DEFAULT_INIT_TIMEOUT
    heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT

    def describe(self) -> str:
        if self.coordinator is None:
            return "a SLURM step (JAX reads SLURM_* for the coordinator, process count and id)"
        return f"process {self.process_id} of {self.num_processes}, coordinator {self.coordinator}"


def _int(env: Mapping[str, str], name: str, default: int | None, low: int) -> int | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < low:
        raise DistributedError(f"environment variable {name}: expected an integer >= {low}, found {raw!r}")
    return value


def settings_from_env(env: Mapping[str, str] | None = None) -> Settings | None:
    """The job this process belongs to, from the environment; None for a single process.
    Raises :class:`DistributedError` naming the variable that is missing or malformed."""
    env = os.environ if env is None else env
    init_timeout = _int(env, INIT_TIMEOUT, DEFAULT_INIT_TIMEOUT, 1)
    heartbeat = _int(env, HEARTBEAT_TIMEOUT, DEFAULT_HEARTBEAT_TIMEOUT, 1)
    address = env.get(COORDINATOR)
    if not address:
        given = [v for v in (NUM_PROCESSES, PROCESS_ID) if env.get(v)]
        if given:
            raise DistributedError(f"{', '.join(given)} set but {COORDINATOR} is not: set {COORDINATOR}=HOST:PORT (process 0's host and a free port) "
                                   "in every process, or unset them for a single process")
        ntasks = _int(env, "SLURM_NTASKS", 1, 1) if "SLURM_STEP_ID" in env else 1
        if ntasks > 1:
            return Settings(None, None, None, init_timeout, heartbeat)
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(f"environment variable {COORDINATOR}: expected HOST:PORT (e.g. node001:12355), found {address!r}")
    n = _int(env, NUM_PROCESSES, None, 1)
    i = _int(env, PROCESS_ID, None, 0)
    missing = [name for name, v in ((NUM_PROCESSES, n), (PROCESS_ID, i)) if v is None]
    if missing:
        raise DistributedError(f"{COORDINATOR} is set but {' and '.join(missing)} not: every process needs {NUM_PROCESSES} (how many) and "
                               f"{PROCESS_ID} (0 .. {NUM_PROCESSES}-1)")
    if i >= n:
        raise DistributedError(f"environment variable {PROCESS_ID}={i}: expected 0 .. {n - 1} ({NUM_PROCESSES}={n})")
    return Settings(address, n, i, init_timeout, heartbeat)


def _reachable(address: str, timeout: float = 1.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def _watchdog(settings: Settings) -> threading.Timer:
    """Exit with status 2 and a clear message if joining the job takes longer than the timeout
    (the runtime's own timeout aborts the process from C++, with a stack trace)."""

    def fire() -> None:
        if settings.coordinator is not None and not _reachable(settings.coordinator):
            why = (f"nothing answers at {settings.coordinator}: start process 0 with the same {COORDINATOR}, check the host name and that "
                   "the port is open between the hosts")
        else:
            why = (f"the coordinator answers, but not all {settings.num_processes or 'SLURM'} processes joined: start every process "
                   f"(each with its own {PROCESS_ID}) and check that they use the same {COORDINATOR}")
        sys.stderr.write(f"mplp-graph: {settings.describe()}: could not join the job within {settings.init_timeout} s "
                         f"({INIT_TIMEOUT}); {why}\n")
        sys.stderr.flush()
        os._exit(2)

    timer = threading.Timer(settings.init_timeout, fire)
    timer.daemon = True
    return timer


def initialize(settings: Settings) -> None:
    """Join the job: ``jax.distributed.initialize`` with gloo CPU collectives, the timeouts of
    ``settings``, and a clear exit (status 2) when the job does not form in time. Must run
    before JAX starts its backend (before the first ``jax.devices()`` or computation)."""
    import jax
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        raise DistributedError("JAX already started its backend in this process, so it cannot join a multi-process job: "
                               "call mplp_graph.distributed.initialize_from_env() before any JAX computation")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    timer = _watchdog(settings)
    timer.start()
    try:
        # the runtime's own timeout is longer than the watchdog's, so the clear message comes first
        jax.distributed.initialize(
            settings.coordinator, settings.num_processes, settings.process_id,
            initialization_timeout=settings.init_timeout + 30, heartbeat_timeout_seconds=settings.heartbeat_timeout,
            shutdown_timeout_seconds=max(settings.heartbeat_timeout, 30),
        )
    finally:
        timer.cancel()
    _publish_identity()
    _install_excepthook()


def _install_excepthook() -> None:
    """An uncaught :class:`LostProcessError` ends the process through :func:`exit_lost` (a
    normal exit would wait for the lost process at the runtime's shutdown barrier, then abort
    with a stack trace), in scripts as in the CLI."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        if isinstance(value, LostProcessError):
            exit_lost(value)
        previous(kind, value, tb)

    sys.excepthook = hook


def initialize_from_env(env: Mapping[str, str] | None = None) -> Settings | None:
    """:func:`initialize` from :func:`settings_from_env`; nothing for a single process.
    Returns the settings used (None: single process)."""
    settings = settings_from_env(env)
    if settings is not None:
        initialize(settings)
    return settings


def _client() -> Any:
    from jax._src import distributed

    return distributed.global_state.client


def _publish_identity() -> None:
    import jax

    client = _client()
    if client is not None:
        client.key_value_set(f"{_KEY}{jax.process_index()}", f"{socket.gethostname()} {os.getpid()}")


def process_count() -> int:
    import jax

    return jax.process_count()


def is_main_process() -> bool:
    """True in process 0, the one that writes metrics, checkpoints and results."""
    import jax

    return jax.process_index() == 0


# ---------------------------------------------------------------------------------------------
# a lost process


COLLECTIVE_FAILURES = ("gloo", "connection closed", "connection reset", "unavailable", "socket closed", "broken pipe")


def is_collective_failure(err: BaseException) -> bool:
    """Whether ``err`` is a failed cross-process operation (only in a multi-process job)."""
    if process_count() < 2:
        return False
    text = str(err).lower()
    return any(s in text for s in COLLECTIVE_FAILURES)


def _identities() -> dict[int, tuple[str, int]]:
    out: dict[int, tuple[str, int]] = {}
    client = _client()
    for i in range(process_count()):
        try:
            host, pid = client.key_value_try_get(f"{_KEY}{i}").split()
            out[i] = (host, int(pid))
        except Exception:  # noqa: BLE001 - the coordinator itself may be gone
            continue
    return out


def _alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (a zombie, dead but not yet reaped by its
    parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc: trust the signal check


def lost_processes() -> tuple[list[int], list[int]]:
    """``(lost, unknown)``: processes known to have stopped (same host, pid gone), and those on
    other hosts whose state this process cannot see."""
    import jax

    me = jax.process_index()
    known = _identities()
    here = socket.gethostname()
    lost, unknown = [], []
    for i in range(process_count()):
        if i == me:
            continue
        if i in known and known[i][0] == here:
            if not _alive(known[i][1]):
                lost.append(i)
        else:
            unknown.append(i)
    return lost, unknown


def lost_process_error(err: BaseException, note: str = "") -> LostProcessError:
    """A :class:`LostProcessError` for the collective failure ``err``, naming the lost
    process(es) where they ran on this host. ``note``: what the caller knows (the checkpoint
    to resume from)."""
    import jax

    n = process_count()
    deadline = time.monotonic() + 2.0
    lost, unknown = lost_processes()
    while not lost and time.monotonic() < deadline:  # a pid disappears a moment after its socket
        time.sleep(0.1)
        lost, unknown = lost_processes()
    if lost:
        who = f"process{'es' if len(lost) > 1 else ''} {', '.join(map(str, lost))} of {n} stopped"
    elif unknown:
        who = f"another process of the {n} stopped or lost its connection (one of processes {', '.join(map(str, unknown))}, on other hosts)"
    else:
        who = f"another process of the {n} lost its connection"
    first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
    text = f"process {jax.process_index()}: {who}, so this process stops too ({first})"
    return LostProcessError(text + (f". {note}" if note else ""))


def exit_lost(err: LostProcessError) -> None:
    """Print ``err`` and end the process at once with :data:`EXIT_LOST_PROCESS`: a normal exit
    would wait at the runtime's shutdown barrier for the lost process and then abort."""
    sys.stdout.flush()
    sys.stderr.write(f"mplp-graph: {err}\n")
    sys.stderr.flush()
    os._exit(EXIT_LOST_PROCESS)
