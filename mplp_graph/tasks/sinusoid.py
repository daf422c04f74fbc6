"""Sinusoid regression tasks (paper 4.1; the authors' ``sinusoidals.py``): y = A sin(x + phase),
A ~ U[0.1, 0.5], phase ~ U[0, pi], x ~ U[-5, 5]."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp


@dataclass(frozen=True)
class SinusoidFamily:
    """A family of tasks (:class:`mplp_graph.tasks.base.TaskFamily`); ``sample(key, data=None)``
    draws one task's inner batches and held-out points (the family has no data set).

    ``inner_steps`` x ``batch`` training points (one batch per inner step) and ``cv_points``
    held-out points for the cross-validation loss (the authors' ``mplp_sinusoid_5x10.ipynb`` uses
    5 x 10 = 50).
    """

    inner_steps: int = 5
    batch: int = 10
    cv_points: int = 50
    amp: tuple[float, float] = (0.1, 0.5)
    phase: tuple[float, float] = (0.0, float(jnp.pi))
    x_range: tuple[float, float] = (-5.0, 5.0)
    eval_points: int = 100
    metrics: tuple[str, ...] = ("loss", "seen_loss")

    def load(self) -> None:
        return None

    def sample(self, key: Any, data: Any = None) -> dict[str, Any]:
        ka, kp, kt, ke = jax.random.split(key, 4)
        amp = jax.random.uniform(ka, (), minval=self.amp[0], maxval=self.amp[1])
        ph = jax.random.uniform(kp, (), minval=self.phase[0], maxval=self.phase[1])
        lo, hi = self.x_range
        xt = jax.random.uniform(kt, (self.inner_steps, self.batch, 1), minval=lo, maxval=hi)  # (K, B, 1)
        xe = jax.random.uniform(ke, (self.cv_points, 1), minval=lo, maxval=hi)  # (N, 1)
        return {
            "amp": amp,
            "phase": ph,
            "xt": xt,
            "yt": amp * jnp.sin(xt + ph),
            "xe": xe,
            "ye": amp * jnp.sin(xe + ph),
        }

    def eval_grid(self, task: dict[str, Any]) -> tuple[Any, Any]:
        """100 evenly spaced points on the domain (docs/mplp.md, "The evaluation protocol")."""
        x = jnp.linspace(self.x_range[0], self.x_range[1], self.eval_points)[:, None]
        return x, task["amp"] * jnp.sin(x + task["phase"])

    def eval_tasks(self, key: Any, runs: int, data: Any = None, split: str = "test") -> tuple[dict[str, Any], Any]:
        """The evaluation protocol (docs/mplp.md): run ``r`` splits ``split(key, runs)[r]`` into its
        prior's key and its task's key; every step is measured on the same 100-point grid.
        Synthetic tasks: ``split`` makes no difference."""
        return _eval_tasks(self, key, runs)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _eval_tasks(family: SinusoidFamily, key: Any, runs: int) -> tuple[dict[str, Any], Any]:
    keys = jax.vmap(jax.random.split)(jax.random.split(key, runs))  # (runs, 2, 2): prior, task
    tasks = jax.vmap(family.sample)(keys[:, 1])
    xg, yg = jax.vmap(family.eval_grid)(tasks)  # (runs, N, 1)
    tile = lambda a: jnp.broadcast_to(a[:, None], (runs, family.inner_steps + 1, *a.shape[1:]))  # noqa: E731
    return {**tasks, "xs": tile(xg), "ys": tile(yg)}, keys[:, 0]
