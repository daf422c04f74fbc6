"""Checks shared by the meta-training tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from mplp_graph.meta.step import FROZEN_STATS


def check_meta_gradient(grads: Any, mask: Any, must_be_zero: Callable[[str], bool] = lambda name: False) -> None:
    """Every leaf of ``grads`` is finite; every trainable leaf (``mask`` > 0) gets a non-zero
    meta-gradient, except those ``must_be_zero(path)`` names, whose gradient must be exactly zero
    (a part that provably never reaches the loss); the frozen leaves are standardizer statistics."""
    flat_g = jax.tree_util.tree_leaves_with_path(grads)
    flat_m = jax.tree_util.tree_leaves(mask)
    assert len(flat_g) == len(flat_m)
    for (path, g), m in zip(flat_g, flat_m):
        name = jax.tree_util.keystr(path)
        g = np.asarray(g)
        assert np.all(np.isfinite(g)), f"non-finite meta-gradient at {name}"
        if float(np.max(m)) == 0:
            assert name.split("'")[-2] in FROZEN_STATS, f"{name} is frozen but is no standardizer statistic"
        elif must_be_zero(name):
            assert not np.any(g != 0), f"{name} should get no meta-gradient"
        else:
            assert np.abs(g).max() > 0, f"zero meta-gradient at {name}"
