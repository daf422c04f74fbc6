"""The package layering of mplp_graph/, read from the source with ``ast``.

Every import counts, including those inside functions and ``if TYPE_CHECKING`` blocks: a lazy
import still ties the two packages together (and usually hides a cycle). The units are the
subpackages (``ir``, ``compile``, ``runtime``, ``config``, ...) and the top-level modules
(``cli``, ``errors``, ``reference``, ``xla``, ``cache``, and ``mplp_graph`` for
``mplp_graph/__init__.py``). The rules:

* no import cycle between units (so none between modules of different units either);
* ``ir`` <- ``compile`` <- ``runtime``: the IR imports neither the compiler nor the runtime,
  and the compiler, which makes static data, does not import the runtime that runs it;
* no private name (``_x``) is imported from another unit.

Failures name the importing file and line.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "mplp_graph"
FORBIDDEN = {("ir", "compile"), ("ir", "runtime"), ("compile", "runtime")}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    where: str  # file:line of the import statement
    target: str  # the imported module
    name: str | None  # the name a from-import takes from ``target`` (None: the module itself)


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package under ``root``."""
    files = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def unit(module: str) -> str:
    """The layering unit of a module: its subpackage, or itself for a top-level module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imports(root: Path) -> list[Import]:
    files = module_files(root)
    found = []
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            where = f"{path.relative_to(root)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Import):
                found += [Import(module, where, a.name, None) for a in node.names if a.name.split(".")[0] == PACKAGE]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolved against the importing module's package
                    package = module.split(".") if is_package else module.split(".")[:-1]
                    package = package[: len(package) - node.level + 1]
                    base = ".".join(package + ([base] if base else []))
                if base.split(".")[0] != PACKAGE:
                    continue
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    found.append(Import(module, where, sub, None) if sub in files else Import(module, where, base, a.name))
    return found


def unit_edges(found: Iterable[Import]) -> dict[tuple[str, str], list[Import]]:
    edges: dict[tuple[str, str], list[Import]] = {}
    for imp in found:
        a, b = unit(imp.module), unit(imp.target)
        if a != b:
            edges.setdefault((a, b), []).append(imp)
    return edges


def describe(imp: Import) -> str:
    what = f"{imp.target}.{imp.name}" if imp.name else imp.target
    return f"{imp.where}: {imp.module} imports {what}"


def module_cycle_problems(found: Iterable[Import]) -> list[str]:
    """Import cycles among modules that span more than one unit, each with its import lines."""
    graph = nx.DiGraph()
    for imp in found:
        if imp.module != imp.target:
            graph.add_edge(imp.module, imp.target, imp=imp)
    problems = []
    for component in nx.strongly_connected_components(graph):
        if len({unit(m) for m in component}) < 2:
            continue
        cycle = nx.find_cycle(graph.subgraph(component))
        lines = "\n  ".join(describe(graph.edges[u, v]["imp"]) for u, v in cycle)
        problems.append(f"import cycle {' -> '.join([u for u, _ in cycle] + [cycle[0][0]])}:\n  {lines}")
    return problems


def unit_cycle_problems(found: Iterable[Import]) -> list[str]:
    edges = unit_edges(found)
    graph = nx.DiGraph(list(edges))
    problems = []
    for cycle in nx.simple_cycles(graph):
        steps = list(zip(cycle, cycle[1:] + cycle[:1]))
        lines = "\n  ".join(describe(edges[step][0]) for step in steps)
        problems.append(f"package cycle {' -> '.join(cycle + cycle[:1])}, for example:\n  {lines}")
    return problems


def layer_problems(found: Iterable[Import]) -> list[str]:
    return [
        f"{describe(imp)} ({a} must not import {b})"
        for (a, b), imps in sorted(unit_edges(found).items())
        if (a, b) in FORBIDDEN
        for imp in imps
    ]


def private_problems(found: Iterable[Import]) -> list[str]:
    def private(name: str) -> bool:
        return name.startswith("_") and not name.endswith("__")

    return [
        f"{describe(imp)}: a private name of another package; give it a public name where it is defined"
        for imp in found
        if unit(imp.module) != unit(imp.target)
        and (private(imp.name or "") or any(private(part) for part in imp.target.split(".")))
    ]


# ---------------------------------------------------------------------------------------------
# the package


@functools.cache
def package_imports() -> tuple[Import, ...]:
    return tuple(imports(ROOT))


def report(problems: list[str]) -> None:
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def test_the_package_has_the_units_it_is_checked_for():
    units = {unit(m) for m in module_files(ROOT)}
    assert {"ir", "compile", "runtime", "config", "ops", "meta", "cli", PACKAGE} <= units
    assert ("meta", "runtime") in unit_edges(package_imports())  # the imports are found at all


def test_no_cycle_between_modules_of_different_packages():
    report(module_cycle_problems(package_imports()))


def test_no_cycle_between_packages():
    report(unit_cycle_problems(package_imports()))


def test_ir_compile_runtime_layers():
    report(layer_problems(package_imports()))


def test_no_private_name_crosses_packages():
    report(private_problems(package_imports()))


# ---------------------------------------------------------------------------------------------
# the checker itself, on a small package that breaks every rule


def test_the_checker_finds_what_it_looks_for(tmp_path):
    files = {
        "__init__.py": "",
        "ir/__init__.py": "",
        "ir/spec.py": "def f():\n    from mplp_graph.compile.passes import g  # a lazy import counts\n",
        "compile/__init__.py": "",
        "compile/passes.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mplp_graph.runtime.run import Program\n",
        "runtime/__init__.py": "",
        "runtime/run.py": "from ..ir.spec import _hidden\n",
    }
    for name, text in files.items():
        path = tmp_path / PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    found = imports(tmp_path)
    cycles = module_cycle_problems(found)
    assert len(cycles) == 1 and "mplp_graph/ir/spec.py:2: mplp_graph.ir.spec imports mplp_graph.compile.passes.g" in cycles[0]
    assert len(unit_cycle_problems(found)) == 1
    layers = layer_problems(found)
    assert [p.split(": ")[0] for p in layers] == ["mplp_graph/compile/passes.py:3", "mplp_graph/ir/spec.py:2"]
    assert private_problems(found) == [
        "mplp_graph/runtime/run.py:1: mplp_graph.runtime.run imports mplp_graph.ir.spec._hidden: a private name of "
        "another package; give it a public name where it is defined"
    ]
