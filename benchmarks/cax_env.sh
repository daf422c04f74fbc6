#!/usr/bin/env bash
# Makes .venv-cax: a Python >= 3.12 virtual environment with CAX ("Cellular Automata Accelerated
# in JAX", Faldor & Cully, ICLR 2025; PyPI `cax`, which needs Python >= 3.12) and this package
# installed editable, for the benchmark cases tagged "cax" (benchmarks/cases/grids.py):
#
#     bash benchmarks/cax_env.sh && .venv-cax/bin/python -m benchmarks.run_all --tag cax
#
# CAX is a benchmark-only dependency: mplp_graph never imports it. The package's own extra
# `cax` (pyproject.toml) carries the same requirement with a python_version marker.
# PYTHON=/path/to/python3.12 picks the interpreter; otherwise python3.12 (or python3.13) on PATH,
# then pyenv's.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-cax}

find_python() {
    if [[ -n "${PYTHON:-}" ]]; then echo "$PYTHON"; return; fi
    local c
    for c in python3.12 python3.13 \
             "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 \
             "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3.13; do
        if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys, venv; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
            command -v "$c"; return
        fi
    done
    echo "cax_env.sh: no Python >= 3.12 found (CAX needs it); set PYTHON=/path/to/python3.12" >&2
    exit 2
}

PY=$(find_python)
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# the package with the cax extra (cax>=0.4 on Python >= 3.12), and pytest to run the engine's tests there
"$VENV/bin/python" -m pip install -q -e '.[cax]' pytest
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import jax
print("cax", md.version("cax"), "| jax", jax.__version__, "| flax", md.version("flax"), "| python", __import__("sys").version.split()[0])
PY
