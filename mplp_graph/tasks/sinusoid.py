"""Sinusoid regression tasks (paper 4.1; reference-notes 5.3): y = A sin(x + phase),
A ~ U[0.1, 0.5], phase ~ U[0, pi], x ~ U[-5, 5]."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp


@dataclass(frozen=True)
class SinusoidFamily:
    """A family of tasks; ``sample(key)`` draws one task's inner batches and held-out points.

    ``inner_steps`` x ``batch`` training points (one batch per inner step) and ``cv_points``
    held-out points for the cross-validation loss (the reference uses 5 x 10 = 50, notes 5.3).
    """

    inner_steps: int = 5
    batch: int = 10
    cv_points: int = 50
    amp: tuple[float, float] = (0.1, 0.5)
    phase: tuple[float, float] = (0.0, float(jnp.pi))
    x_range: tuple[float, float] = (-5.0, 5.0)
    eval_points: int = 100

    def sample(self, key: Any) -> dict[str, Any]:
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
        """100 evenly spaced points on the domain (the evaluation protocol, notes 5.6)."""
        x = jnp.linspace(self.x_range[0], self.x_range[1], self.eval_points)[:, None]
        return x, task["amp"] * jnp.sin(x + task["phase"])
