"""The registry of benchmark cases: every module of this package defines ``CASES``, a tuple of
:class:`benchmarks.harness.Case`. A module that fails to import because an optional package is
missing (ImportError) is listed in :func:`unavailable` and the others still load."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from benchmarks.harness import Case


@cache
def _load() -> tuple[dict[str, Case], dict[str, str]]:
    cases: dict[str, Case] = {}
    missing: dict[str, str] = {}
    for mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        try:
            module = importlib.import_module(f"{__name__}.{mod}")
        except ImportError as e:
            missing[mod] = f"{type(e).__name__}: {e}"
            continue
        for case in getattr(module, "CASES", ()):
            if case.name in cases:
                raise ValueError(f"benchmark case {case.name!r} is defined twice (benchmarks/cases/{mod}.py and another module)")
            cases[case.name] = case
    return cases, missing


def all_cases() -> dict[str, Case]:
    """``{name: case}`` over every importable module of benchmarks/cases/, in module order."""
    return dict(_load()[0])


def unavailable() -> dict[str, str]:
    """``{module: reason}`` for the case modules that could not be imported."""
    return dict(_load()[1])
