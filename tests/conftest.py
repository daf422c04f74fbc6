"""Test session setup: the persistent XLA compilation cache (MPLP_GRAPH_CACHE=off disables it)
makes reruns of the compile-heavy meta-training tests fast."""

from mplp_graph.cache import enable_compilation_cache

enable_compilation_cache()
