"""Test session setup: the persistent XLA compilation cache (MPLP_GRAPH_CACHE=off disables it)
makes reruns of the compile-heavy meta-training tests fast."""

from mplp_graph.cache import enable_compilation_cache

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
