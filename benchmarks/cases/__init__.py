"""The registry of benchmark cases: every module of this package defines ``CASES``, a tuple of
:class:`benchmarks.harness.Case`. A module that fails to import because an optional package is
missing (ImportError) is listed in :func:`unavailable` and the others still load."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from functools import cache
from typing import Any

from benchmarks.harness import Case


def collect(modules: list[str], import_module: Callable[[str], Any]) -> tuple[dict[str, Case], dict[str, str]]:
    """``({case name: case}, {module: reason})`` over ``modules`` imported with
    ``import_module``: the cases of every module's ``CASES``; the modules that raised ImportError
    (an optional package missing) with the reason. A case name defined twice is a ValueError."""
    cases: dict[str, Case] = {}
    where: dict[str, str] = {}
    missing: dict[str, str] = {}
    for mod in modules:
        try:
            module = import_module(mod)
        except ImportError as e:
            missing[mod] = f"{type(e).__name__}: {e}"
            continue
        for case in getattr(module, "CASES", ()):
            if case.name in cases:
                raise ValueError(f"benchmark case {case.name!r} is defined twice: in {where[case.name]} and in {mod}")
            cases[case.name], where[case.name] = case, mod
    return cases, missing


@cache
def _load() -> tuple[dict[str, Case], dict[str, str]]:
    names = sorted(m.name for m in pkgutil.iter_modules(__path__))
    return collect(names, lambda mod: importlib.import_module(f"{__name__}.{mod}"))


def all_cases() -> dict[str, Case]:
    """``{name: case}`` over every importable module of benchmarks/cases/, in module order."""
    return dict(_load()[0])


def unavailable() -> dict[str, str]:
    """``{module: reason}`` for the case modules that could not be imported."""
    return dict(_load()[1])
