"""Test session setup: the persistent XLA compilation cache (MPLP_GRAPH_CACHE=off disables it)
makes reruns of the compile-heavy meta-training tests fast. Under pytest-xdist (.ci/run runs
``-n 2``) each worker, and the processes its tests start, use a cache folder of their own, so
that two processes never write one cache entry at the same time."""

import os
from pathlib import Path

from mplp_graph.cache import ENV_VAR, enable_compilation_cache

_worker = os.environ.get("PYTEST_XDIST_WORKER")
if _worker and os.environ.get(ENV_VAR, "").lower() != "off":
    _base = os.environ.get(ENV_VAR) or str(Path.home() / ".cache" / "mplp_graph" / "xla")
    os.environ[ENV_VAR] = str(Path(_base) / f"worker-{_worker}")

enable_compilation_cache()


import gc

import jax
import pytest


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """After each test module, drop the compiled programs it left in JAX's and the library's
    caches: one process runs the whole suite, and the executables of every module's meta-steps
    otherwise stay resident to the end (a full run crashed inside XLA's compiler late in the
    suite, after all the earlier modules' programs had piled up)."""
    yield
    from mplp_graph.meta import evaluate, guard, train

    for cached in (train._jitted, train._jitted_runs, evaluate._runner, guard._tracer):
        cached.cache_clear()
    jax.clear_caches()
    gc.collect()
