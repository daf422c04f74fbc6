"""benchmarks/harness.py: the row a case produces (medians, ratio, compile time, skipped variants),
the check that runs before any timing, atomic result files, the accelerator lock, and the table
``python -m benchmarks.run_all --table`` prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import jax.numpy as jnp
import pytest

from benchmarks import harness
from benchmarks.harness import Case, Variant, run_case
from benchmarks.run_all import format_table, load_rows, main as run_all_main


def _sleeper(seconds: float, value: float, first_extra: float = 0.0):
    """A build returning a thunk that sleeps ``seconds`` (plus ``first_extra`` on its first call,
    standing in for compilation) and returns ``value`` as a JAX array."""

    def build():
        calls = []

        def thunk():
            time.sleep(seconds + (first_extra if not calls else 0.0))
            calls.append(1)
            return jnp.float32(value)

        return thunk

    return build


def _missing():
    raise ImportError("No module named 'cax'")


def _agree(outs):
    diff = float(abs(outs["engine"] - outs["direct"]))
    assert diff < 1e-6, f"engine and direct differ by {diff}"
    return {"max_abs_diff": diff}


def test_row_format_ratio_compile_and_skipped_variant():
    case = Case(
        name="fake",
        variants=(Variant("engine", _sleeper(0.02, 1.0, first_extra=0.2)), Variant("direct", _sleeper(0.01, 1.0)),
                  Variant("cax", _missing, note="optional")),
        check=_agree, rounds=3, calls=2, params={"n": 4},
        derived=lambda med: {"engine_calls_per_s": 1 / med["engine"]},
    )
    row = run_case(case, command="python -m benchmarks.run_all --case fake")
    assert row["name"] == "fake" and row["params"] == {"n": 4}
    assert row["skipped"] == {"cax": "ImportError: No module named 'cax'"} and row["cax_ms"] is None
    assert set(row["variants"]) == {"engine", "direct"}
    eng, dire = row["variants"]["engine"], row["variants"]["direct"]
    assert eng["n"] == dire["n"] == 6  # rounds x calls
    assert 18 <= eng["median_ms"] < 60 and 9 <= dire["median_ms"] < 50
    assert eng["p10_ms"] <= eng["median_ms"] <= eng["p90_ms"]
    assert row["engine_ms"] == eng["median_ms"] and row["direct_ms"] == dire["median_ms"]
    assert row["ratio"] == pytest.approx(eng["median_ms"] / dire["median_ms"], rel=1e-3)
    # the first call's extra 0.2 s is the "compilation"
    assert eng["first_call_s"] >= 0.21 and eng["compile_s"] == pytest.approx(eng["first_call_s"] - eng["median_ms"] / 1e3, abs=2e-3)
    assert 0.15 < row["compile_s"]["engine"] < 0.5 and row["compile_s"]["direct"] < 0.1
    assert row["check"] == {"max_abs_diff": 0.0}
    assert row["derived"]["engine_calls_per_s"] == pytest.approx(1e3 / eng["median_ms"], rel=1e-3)
    assert eng["peak_mib"] is None or eng["peak_mib"] >= 0
    for key in ("machine", "commit", "dirty", "date", "command", "jax"):
        assert key in row
    json.dumps(row)  # a JSON document as it stands


def test_rounds_rotate_the_order():
    order = []

    def build(name):
        return lambda: (lambda: order.append(name))

    run_case(Case("order", (Variant("a", build("a")), Variant("b", build("b")), Variant("c", build("c"))), baseline="b"), rounds=3)
    timed = order[3:]  # after the three first calls
    assert timed == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]


def test_check_failure_raises_before_timing():
    timed = []

    def build(value):
        def make():
            def thunk():
                timed.append(value)
                return jnp.float32(value)
            return thunk
        return make

    case = Case("disagree", (Variant("engine", build(1.0)), Variant("direct", build(2.0))), check=_agree)
    with pytest.raises(AssertionError, match="differ by 1.0"):
        run_case(case)
    assert timed == [1.0, 2.0]  # the first calls only


def test_every_variant_skipped_is_an_error():
    with pytest.raises(ValueError, match="every variant was skipped"):
        run_case(Case("none", (Variant("cax", _missing),)))


def test_write_json_atomic_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "row.json"
    harness.write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        harness.write_json_atomic(path, {"a": object()})  # not serializable: fails half-way through
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["row.json"]  # no temporary file left


def test_table_from_results_folder(tmp_path, capsys):
    row = run_case(Case("mnist_meta_step", (Variant("engine", _sleeper(0.001, 1.0)), Variant("direct", _sleeper(0.001, 1.0))), rounds=1))
    harness.write_row(row, tmp_path)
    (tmp_path / "old_format.json").write_text('{"benchmark": "x", "rows": []}')
    assert [r["name"] for r in load_rows(tmp_path)] == ["mnist_meta_step"]
    assert run_all_main(["--table", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["case", "engine_ms", "direct_ms", "ratio"]
    assert out[1].startswith("mnist_meta_step") and "TF 800 ms" in out[1]  # the anchor beside the engine
    assert format_table([row]).splitlines()[1] == out[1]


HOLD = """
import sys, time
from benchmarks import harness
with harness.exclusive_device():
    print("held", flush=True)
    time.sleep(float(sys.argv[1]))
"""


def test_exclusive_device_waits_for_another_process(tmp_path, monkeypatch):
    lock = tmp_path / "bench.lock"
    monkeypatch.setenv(harness.LOCK_ENV, str(lock))
    env = {**os.environ, harness.LOCK_ENV: str(lock), "PYTHONPATH": os.pathsep.join([str(harness.ROOT), os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, "1.5"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"  # the other process is inside its timed section
        t0 = time.perf_counter()
        with harness.exclusive_device() as waited:
            inside = time.perf_counter() - t0
        assert waited >= 0.5 and abs(waited - inside) < 0.2, (waited, inside)
    finally:
        holder.wait(timeout=30)
    assert holder.returncode == 0


def test_exclusive_device_without_the_variable_holds_nothing(monkeypatch):
    monkeypatch.delenv(harness.LOCK_ENV, raising=False)
    with harness.exclusive_device() as waited:
        assert waited == 0.0
    import jax

    if jax.default_backend() == "cpu":
        assert harness.device_peak_mib() is None  # the CPU backend keeps no peak count


def test_peak_memory_sees_an_allocation():
    import numpy as np

    with harness.PeakMemory() as m:
        a = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        del a
    if m.mib is not None:  # /proc available
        assert m.mib >= 50, m.mib


def test_case_modules_missing_an_optional_package_are_skipped():
    from types import SimpleNamespace

    from benchmarks.cases import collect

    one = Case("one", (Variant("engine", _sleeper(0, 1.0)),))
    modules = {"a": SimpleNamespace(CASES=(one,)), "b": None, "c": SimpleNamespace(CASES=())}

    def importer(name):
        if modules[name] is None:
            raise ModuleNotFoundError("No module named 'cax'")
        return modules[name]

    cases, missing = collect(["a", "b", "c"], importer)
    assert cases == {"one": one} and missing == {"b": "ModuleNotFoundError: No module named 'cax'"}
    with pytest.raises(ValueError, match="'one' is defined twice: in a and in d"):
        collect(["a", "d"], lambda name: modules["a"])


def test_every_registered_case_is_well_formed():
    from benchmarks.cases import all_cases

    cases = all_cases()
    assert {"mnist_meta_step", "sinusoid_meta_step", "mnist784_meta_step"} <= set(cases)
    for case in cases.values():
        names = [v.name for v in case.variants]
        assert len(set(names)) == len(names) and case.rounds >= 1 and case.calls >= 1, case.name
        assert len(names) == 1 or case.baseline in names, f"{case.name}: baseline {case.baseline!r} is not a variant"


def test_run_all_reports_a_failing_case_and_runs_the_others(tmp_path, monkeypatch, capsys):
    import benchmarks.cases as registry

    bad = Case("bad", (Variant("engine", _sleeper(0, 1.0)), Variant("direct", _sleeper(0, 2.0))), check=_agree, rounds=1)
    good = Case("good", (Variant("engine", _sleeper(0, 1.0)), Variant("direct", _sleeper(0, 1.0))), check=_agree, rounds=1)
    monkeypatch.setattr(registry, "all_cases", lambda: {"bad": bad, "good": good})
    monkeypatch.setattr(registry, "unavailable", lambda: {})
    assert run_all_main(["--case", "bad", "good", "--out-dir", str(tmp_path)]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["good.json"]
    assert "case bad failed (no row written): AssertionError: engine and direct differ by 1.0" in capsys.readouterr().err
