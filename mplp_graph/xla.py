"""XLA compile options the library applies to the programs it jits (meta-step, evaluations).

On the CPU, jaxlib 0.10's XLA hands matmuls and reductions to the YNNPACK library by default
(``xla_cpu_experimental_ynn_fusion_type``: individual dots and reductions). For MPLP's shapes
its reductions are slow: summing the weight learner's ``(8, 144, 50, 104)`` first-layer gradient
over the batch axis took 32 ms per inner step (644 ms per MNIST meta-step in a profiler trace)
against 0.2-1 ms for XLA's own loops, and its dots were no faster. :data:`CPU_OPTIONS` switches
those fusions off: the MNIST meta-step then takes 0.63x the time, side by side in
``python -m benchmarks.run_all --case mnist_kernels`` (docs/performance.md, "The learners on the CPU").
Other backends get no options. ``MPLP_XLA_DEFAULTS=1`` in the environment keeps XLA's defaults
everywhere (for comparisons); an XLA that does not know the option is left alone.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

import jax

CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.lru_cache(maxsize=None)
def _supported(backend: str) -> bool:
    """Whether this XLA accepts :data:`CPU_OPTIONS` (compiles a one-op program with them on the
    default backend, which ``backend`` names: the cache key)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_OPTIONS).lower(1.0).compile()
        return True
    except Exception:  # an unknown option name is an INVALID_ARGUMENT at compile time
        return False


def default_options() -> dict[str, Any]:
    """The compile options for the default backend: :data:`CPU_OPTIONS` on the CPU, else none."""
    backend = jax.default_backend()
    if backend != "cpu" or os.environ.get("MPLP_XLA_DEFAULTS") == "1" or not _supported(backend):
        return {}
    return dict(CPU_OPTIONS)


def compiler_options(extra: Any = None) -> dict[str, Any] | None:
    """:func:`default_options` updated with ``extra`` (a dict or (name, value) pairs); None when empty."""
    opts = {**default_options(), **dict(extra or ())}
    return opts or None


def jit(fn: Callable, options: Any = None, **kw) -> Callable:
    """``jax.jit(fn, **kw)`` compiled with :func:`compiler_options` (``options``: extra ones)."""
    return jax.jit(fn, compiler_options=compiler_options(options), **kw)
