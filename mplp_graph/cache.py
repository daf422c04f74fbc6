"""A persistent XLA compilation cache: a meta-step takes ~15-30 s to compile on a 2-core CPU and
~5 s to load from the cache (docs/performance.md, "Compile times")."""

from __future__ import annotations

import os
from pathlib import Path

import jax

ENV_VAR = "MPLP_GRAPH_CACHE"


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Cache compiled programs in ``path`` (default ``$MPLP_GRAPH_CACHE`` or
    ``~/.cache/mplp_graph/xla``; ``MPLP_GRAPH_CACHE=off`` disables). Returns the folder used."""
    where = path if path is not None else os.environ.get(ENV_VAR, str(Path.home() / ".cache" / "mplp_graph" / "xla"))
    if str(where).lower() == "off":
        return None
    folder = Path(where)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # read-only home: run without a cache
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return folder
