"""The benchmark harness: declarative cases, one way of timing them, one row format.

A :class:`Case` names what it measures and lists its :class:`Variant` s (the engine, a hand-written
jax.numpy version, another library, ...). :func:`run_case` builds every variant (untimed, but its
wall time and memory are recorded), calls each once (the first call: trace + compile + run), hands
those first outputs to the case's ``check`` (the variants must agree before anything is timed),
then times interleaved rounds: each round calls every variant ``calls`` times, the order rotating
from round to round so that no variant is always first (or always right after another).

The row (:func:`run_case`'s result; docs/performance.md shows the table ``python -m
benchmarks.run_all`` prints from them) holds, per variant, the median / p10 / p90 of the timed
calls, the first call's wall time, ``compile_s`` (first call minus median call: compilation plus
first-run overhead), the build's wall time and the peak memory growth during the build and first
call (peak resident set size of the process on the CPU, read from ``/proc/self/status`` after
resetting its high-water mark; the device's peak bytes where the backend reports them), and the
facts that make it reproducible: machine, JAX version, git commit, date, command.

Timed sections hold the file lock named by ``$MPLP_BENCH_LOCK`` when it is set
(:func:`exclusive_device`): several benchmark processes may then compile side by side while their
timed rounds run one at a time (experiments/device/gpu_bench.sh).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
LOCK_ENV = "MPLP_BENCH_LOCK"


@dataclass(frozen=True)
class Variant:
    """One contender of a case. ``build()`` does the untimed set-up and returns a zero-argument
    thunk; one call of the thunk is one timed unit (the harness blocks on its result with
    ``jax.block_until_ready``). A ``build`` that raises ImportError (an optional package missing)
    skips the variant."""

    name: str
    build: Callable[[], Callable[[], Any]]
    note: str = ""


@dataclass(frozen=True)
class Case:
    """What one row measures. The first variant is the subject; ``ratio`` = its median / the
    ``baseline`` variant's median. ``check`` gets ``{variant: output of its first call}``, raises
    AssertionError when they disagree and may return figures to record. ``derived`` maps
    ``{variant: median seconds}`` to extra figures."""

    name: str
    variants: tuple[Variant, ...]
    baseline: str = "direct"
    check: Callable[[dict[str, Any]], dict | None] | None = None
    rounds: int = 5
    calls: int = 1
    params: dict = field(default_factory=dict)
    derived: Callable[[dict[str, float]], dict] | None = None
    tags: tuple[str, ...] = ()
    note: str = ""


# ---------------------------------------------------------------------------------------------
# facts about the run


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def machine_line() -> str:
    """CPU count and model, OS, Python, and the first JAX device when it is not the CPU."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    line = f"{os.cpu_count()}-core CPU ({model}), {platform.system()} {platform.release()}, python {platform.python_version()}"
    import jax

    dev = jax.devices()[0]
    return line if dev.platform == "cpu" else f"{line}, {dev.platform} {dev.device_kind}"


@functools.cache
def _code_version() -> tuple[str, bool]:
    """The commit and whether tracked files differed from it, taken once per process (the first
    time a row is made, before any case ran): the code the process runs, even when commits are
    made while it does."""
    return _git("rev-parse", "--short", "HEAD"), bool(_git("status", "--porcelain", "--untracked-files=no"))


def run_facts(command: str | None = None) -> dict[str, Any]:
    """The fields every row ends with: machine, commit, dirty (uncommitted changes to tracked
    files), date, command, jax."""
    import jax

    commit, dirty = _code_version()
    return {
        "machine": machine_line(),
        "commit": commit,
        "dirty": dirty,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": command if command is not None else "python " + " ".join(sys.argv),
        "jax": jax.__version__,
    }


def write_json_atomic(path: Path, data: Any) -> None:
    """``data`` as indented JSON at ``path`` through a temporary file in the same folder and a
    rename: a reader never sees a half-written file."""
    path = Path(path)
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


@contextlib.contextmanager
def exclusive_device():
    """Hold the file lock named by ``$MPLP_BENCH_LOCK`` (if set) around a timed section; yields
    the seconds spent waiting for it. Without the variable it holds nothing."""
    path = os.environ.get(LOCK_ENV)
    if not path:
        yield 0.0
        return
    import fcntl

    with open(path, "a") as f:
        t0 = time.perf_counter()
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield time.perf_counter() - t0
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------
# memory


def _status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_rss_peak() -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _device_stats() -> dict | None:
    import jax

    stats = jax.devices()[0].memory_stats()
    return stats if stats and "peak_bytes_in_use" in stats else None


def device_peak_mib() -> float | None:
    """Peak memory in use on the first JAX device so far (MiB), where the backend reports it (GPU);
    None on the CPU, whose backend keeps no such count."""
    stats = _device_stats()
    return None if stats is None else round(stats["peak_bytes_in_use"] / 2**20, 1)


class PeakMemory:
    """The growth of peak memory over a section: ``with PeakMemory() as m: ...; m.mib``.

    With a device that reports memory statistics: its peak bytes in use minus the bytes in use at
    the start (an upper bound when an earlier section had set a higher peak, since the backend's
    peak cannot be reset). Otherwise the process's peak resident set size minus its RSS at the
    start, the high-water mark reset first; None where /proc is not available. Memory freed by an
    earlier section and reused counts as no growth, so the variants after the first of a case
    may show less than they would alone."""

    def __enter__(self) -> PeakMemory:
        self.mib: float | None = None
        self._dev = _device_stats()
        if self._dev is not None:
            self._start = self._dev["bytes_in_use"]
        else:
            self._ok = _reset_rss_peak()
            self._start = _status_kib("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self._dev is not None:
            self.mib = round((_device_stats()["peak_bytes_in_use"] - self._start) / 2**20, 1)
            return
        peak = _status_kib("VmHWM")
        if self._ok and peak is not None and self._start is not None:
            self.mib = round(max(peak - self._start, 0) / 1024, 1)


# ---------------------------------------------------------------------------------------------
# timing


def round_order(names: list, r: int) -> list:
    """``names`` rotated by ``r``: the order of timing round ``r``."""
    k = r % len(names) if names else 0
    return names[k:] + names[:k]


def _percentile(xs: list[float], q: float) -> float:
    """Linear-interpolated ``q``-quantile (0..1) of ``xs``."""
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 4)


def _jsonable(x: Any) -> Any:
    """Numbers from numpy/JAX as plain floats/ints, containers recursively."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, bool, int, float)) or x is None:
        return x
    try:
        return x.item()  # numpy / JAX scalar
    except (AttributeError, ValueError):
        return str(x)


def run_case(case: Case, rounds: int | None = None, command: str | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Build, check and time ``case``; returns its row (module docstring; format:
    docs/performance.md). ``rounds`` overrides ``case.rounds``. Raises AssertionError when
    ``case.check`` finds the variants disagree, ValueError when every variant was skipped."""
    import jax

    say = log or (lambda s: None)
    rounds = case.rounds if rounds is None else rounds
    if rounds < 1 or case.calls < 1:
        raise ValueError(f"case {case.name!r}: rounds and calls must be >= 1 (got rounds={rounds}, calls={case.calls})")
    names = [v.name for v in case.variants]
    if len(set(names)) != len(names):
        raise ValueError(f"case {case.name!r}: variant names repeat: {names}")
    _code_version()
    jax.block_until_ready(jax.jit(lambda x: x + 1)(1.0))  # the backend started: not charged to the first variant
    thunks: dict[str, Callable[[], Any]] = {}
    first_out: dict[str, Any] = {}
    info: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for v in case.variants:
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            try:
                thunk = v.build()
            except ImportError as e:
                skipped[v.name] = f"{type(e).__name__}: {e}"
                say(f"  {v.name}: skipped ({e})")
                continue
            t1 = time.perf_counter()
            first_out[v.name] = jax.block_until_ready(thunk())
            t2 = time.perf_counter()
        thunks[v.name] = thunk
        info[v.name] = {"build_s": round(t1 - t0, 3), "first_call_s": round(t2 - t1, 3), "peak_mib": mem.mib}
        say(f"  {v.name}: built in {t1 - t0:.1f} s, first call {t2 - t1:.2f} s, peak +{mem.mib} MiB")
    if not thunks:
        raise ValueError(f"case {case.name!r}: every variant was skipped: {skipped}")
    checked = case.check(first_out) if case.check is not None else None
    del first_out
    times: dict[str, list[float]] = {n: [] for n in thunks}
    with exclusive_device() as waited:
        for r in range(rounds):
            for n in round_order(list(thunks), r):
                for _ in range(case.calls):
                    t0 = time.perf_counter()
                    jax.block_until_ready(thunks[n]())
                    times[n].append(time.perf_counter() - t0)
    medians = {n: statistics.median(ts) for n, ts in times.items()}
    variants: dict[str, dict[str, Any]] = {}
    for v in case.variants:
        if v.name in skipped:
            continue
        ts = times[v.name]
        variants[v.name] = {
            "median_ms": _ms(medians[v.name]), "p10_ms": _ms(_percentile(ts, 0.1)), "p90_ms": _ms(_percentile(ts, 0.9)),
            "first_call_s": info[v.name]["first_call_s"],
            "compile_s": round(info[v.name]["first_call_s"] - medians[v.name], 3),
            "build_s": info[v.name]["build_s"], "peak_mib": info[v.name]["peak_mib"], "n": len(ts),
            **({"note": v.note} if v.note else {}),
        }
    subject = names[0]
    ratio = None
    if subject in medians and case.baseline in medians and case.baseline != subject:
        ratio = round(medians[subject] / medians[case.baseline], 4)
    row: dict[str, Any] = {"name": case.name, "params": _jsonable(case.params)}
    for n in names:
        row[f"{n}_ms"] = variants[n]["median_ms"] if n in variants else None
    row.update({
        "ratio": ratio,
        "baseline": case.baseline,
        "variants": variants,
        "compile_s": {n: variants[n]["compile_s"] for n in variants},
        "check": _jsonable(checked or {}),
        "derived": _jsonable(case.derived(medians) if case.derived is not None else {}),
        "skipped": skipped,
        "rounds": rounds,
        "calls": case.calls,
        "lock_wait_s": round(waited, 3),
        "note": case.note,
        "backend": jax.default_backend(),
    })
    row.update(run_facts(command))
    return row


def write_row(row: dict, out_dir: Path = RESULTS) -> Path:
    """``row`` to ``out_dir/<name>.json`` (atomically); returns the path."""
    path = Path(out_dir) / f"{row['name']}.json"
    write_json_atomic(path, row)
    return path
