"""Sequence tasks for recurrent graphs (:func:`mplp_graph.templates.mplp_recurrent.mplp_rnn`):
continue a sinusoid one sample ahead.

A task is one sinusoid ``s(u) = A sin(omega u + phase)``; an example is a window of ``window``
(``T``) consecutive samples ``x_k = s(u0 + k dt)``, ``k < T``, from a random start ``u0``, and its
target is the next sample ``y = s(u0 + T dt)``. The inner loop learns to predict the next value
of one sinusoid from a short history; the amplitude, frequency and phase vary from task to task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from mplp_graph.tasks.base import SPLITS


@dataclass(frozen=True)
class SineContinuation:
    """Next-sample prediction on random sinusoids (module docstring); a
    :class:`~mplp_graph.tasks.base.TaskFamily`.

    Per task: amplitude ``A ~ U[amp]`` (0.1-0.5, the sinusoid task's range, paper 4.1), angular
    frequency ``omega ~ U[freq]`` (0.5-2 rad per unit of ``u``), phase ``~ U[phase]`` (0-2 pi).
    Per example: a start ``u0 ~ U[start]`` (0-10). Samples are ``dt`` (0.3) apart, so a window
    of ``T = 6`` covers ``omega T dt`` = 0.9-3.6 rad, 1/7 to 4/7 of a period.

    Arrays: ``xt (K, B, T, 1)``, ``yt (K, B, 1)`` (``K = inner_steps``, ``B = batch``), held-out
    ``xe (N, T, 1)``, ``ye (N, 1)`` (``N = cv_points``): the graph's ``x.value [B, T, n_in]`` and
    ``loss.target [B, n_out]`` with ``n_in = n_out = 1``.
    """

    inner_steps: int = 5
    batch: int = 10
    cv_points: int = 50
    window: int = 6
    dt: float = 0.3
    amp: tuple[float, float] = (0.1, 0.5)
    freq: tuple[float, float] = (0.5, 2.0)
    phase: tuple[float, float] = (0.0, 2.0 * float(jnp.pi))
    start: tuple[float, float] = (0.0, 10.0)
    metrics: tuple[str, ...] = ("loss",)

    def load(self) -> None:
        """Synthetic: no data set."""
        return None

    def windows(self, key: Any, n: tuple[int, ...], amp: Any, freq: Any, phase: Any) -> tuple[Any, Any]:
        """``n`` windows ``(*n, T, 1)`` of one sinusoid from random starts, and their next samples ``(*n, 1)``."""
        u0 = jax.random.uniform(key, (*n, 1), minval=self.start[0], maxval=self.start[1])
        u = u0 + self.dt * jnp.arange(self.window + 1, dtype=jnp.float32)  # (*n, T + 1)
        s = amp * jnp.sin(freq * u + phase)
        return s[..., :-1, None], s[..., -1:]

    def sample(self, key: Any, data: Any = None) -> dict[str, Any]:
        """One task: its sinusoid's ``amp``, ``freq``, ``phase``, the inner batches and held-out windows."""
        ka, kf, kp, kt, ke = jax.random.split(key, 5)
        amp = jax.random.uniform(ka, (), minval=self.amp[0], maxval=self.amp[1])
        freq = jax.random.uniform(kf, (), minval=self.freq[0], maxval=self.freq[1])
        ph = jax.random.uniform(kp, (), minval=self.phase[0], maxval=self.phase[1])
        xt, yt = self.windows(kt, (self.inner_steps, self.batch), amp, freq, ph)
        xe, ye = self.windows(ke, (self.cv_points,), amp, freq, ph)
        return {"amp": amp, "freq": freq, "phase": ph, "xt": xt, "yt": yt, "xe": xe, "ye": ye}

    def eval_tasks(self, key: Any, runs: int, data: Any = None, split: str = "test") -> tuple[dict[str, Any], Any]:
        """``runs`` tasks, stacked, with ``xs (runs, K + 1, N, T, 1)``/``ys``: the same ``N``
        held-out windows after every inner step; and one prior key per run ``(runs, 2)``. The
        family has no separate validation tasks: ``split`` ``"test"`` and ``"validation"`` draw alike."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        k_prior, k_task = jax.vmap(lambda k: tuple(jax.random.split(k)))(jax.random.split(key, runs))
        tasks = jax.vmap(lambda k: self.sample(k, data))(k_task)
        tile = lambda a: jnp.broadcast_to(a[:, None], (a.shape[0], self.inner_steps + 1, *a.shape[1:]))  # noqa: E731
        tasks["xs"], tasks["ys"] = tile(tasks["xe"]), tile(tasks["ye"])
        return tasks, k_prior
