"""A function over the leading axis of its arguments (the tasks of an outer batch, the runs of
an evaluation), either vmapped or one item after another.

``"vmap"`` batches the items into one program; ``"map"`` runs them in a loop
(``jax.lax.map``); ``"auto"`` is ``"map"`` on the CPU and ``"vmap"`` elsewhere. On the CPU the
loop is faster: under ``vmap`` every learner's matmuls carry the item axis, and XLA's CPU
backend lays out their parameter gradients (a dot over that axis too) with transposed copies of
the ``(rows, features)`` cotangents; one item at a time avoids them and keeps each item's
working set smaller. Measured side by side (docs/mplp.md, "The outer batch, vmapped or in a
loop"): an MNIST meta-step with 4 tasks 4.97 s in a loop vs 7.62 s vmapped, the 100-run MNIST
evaluation 29.1 vs 36.5 s (the sinusoid's, with its small learners, 1.0 vs 0.91 s). A GPU wants
the batch: one program, fewer and larger kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

MODES = ("auto", "vmap", "map")


def resolve(mode: str) -> str:
    """``mode`` with ``"auto"`` resolved for the default backend: ``"map"`` or ``"vmap"``."""
    if mode not in MODES:
        raise ValueError(f"the batch mode must be one of {', '.join(MODES)}; found {mode!r}")
    if mode == "auto":
        return "map" if jax.default_backend() == "cpu" else "vmap"
    return mode


def over_leading_axis(fn: Callable, args: tuple, mode: str = "auto") -> Any:
    """``fn(*item_args)`` for each item along the leading axis of ``args`` (a tuple of pytrees),
    stacked along a new leading axis. A single item runs unbatched whatever ``mode``."""
    n = jax.tree_util.tree_leaves(args)[0].shape[0]
    if n == 1:
        out = fn(*jax.tree_util.tree_map(lambda a: a[0], args))
        return jax.tree_util.tree_map(lambda a: a[None], out)
    if resolve(mode) == "map":
        return jax.lax.map(lambda a: fn(*a), args)
    return jax.vmap(fn)(*args)
