"""Random linear teachers (docs/custom-graph.md): each task is a linear map
``teacher ~ N(0, 1)^(n_in x n_out)``, inputs ``x ~ N(0, 1)^n_in``, targets ``y = x @ teacher``
(plus ``N(0, noise^2)`` on the observed targets when ``noise > 0``).

A :class:`~mplp_graph.tasks.base.TaskFamily` for graphs with batch keys ``x`` ``[B, n_in]`` and
``y`` ``[B, n_out]``, e.g. graphs/sparse_dense_mplp.yaml and examples/custom_graph.yaml (whose
linear model can fit every task exactly when ``noise`` is 0).
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from mplp_graph.tasks.base import SPLITS


@dataclass(frozen=True)
class LinearTeacher:
    """A family of random linear regression tasks (module docstring).

    ``inner_steps`` x ``batch`` training points (one batch per inner step), ``cv_points``
    held-out points for the meta-loss's cross-validation term, ``eval_points`` points for the
    evaluation protocol. ``noise``: the standard deviation of Gaussian noise added to the
    targets a learner sees (``yt`` and ``ye``); the evaluation targets ``ys`` stay noise-free,
    so the evaluation loss measures the distance to the teacher's map (0 when it is recovered).
    """

    n_in: int = 4
    n_out: int = 2
    inner_steps: int = 5
    batch: int = 8
    cv_points: int = 32
    eval_points: int = 100
    noise: float = 0.0
    metrics: tuple[str, ...] = ("loss",)

    def load(self) -> None:
        """Synthetic tasks: no data set."""
        return None

    def _draw(self, key: Any) -> dict[str, Any]:
        """One task (as :meth:`sample`) with its evaluation points ``xs`` ``(eval_points, n_in)``
        and noise-free targets ``ys``.

        Every Gaussian number of the task comes from ONE ``jax.random.normal`` call, cut into
        pieces: a program with one random draw compiles several times faster on the CPU than
        one with a draw per array, and gives the same distribution."""
        k, b, n, m = self.inner_steps, self.batch, self.n_in, self.n_out
        shapes = {"teacher": (n, m), "xt": (k, b, n), "xe": (self.cv_points, n), "xs": (self.eval_points, n),
                  "nt": (k, b, m), "ne": (self.cv_points, m)}  # nt, ne: the target noise
        sizes = [math.prod(s) for s in shapes.values()]
        flat = jax.random.normal(key, (sum(sizes),))
        parts = jnp.split(flat, list(itertools.accumulate(sizes))[:-1])
        d = {name: part.reshape(shape) for (name, shape), part in zip(shapes.items(), parts)}
        teacher, xt, xe, xs = d["teacher"], d["xt"], d["xe"], d["xs"]
        yt, ye = xt @ teacher, xe @ teacher
        if self.noise:  # a Python float: decided when tracing (noise 0 leaves the targets exact)
            yt, ye = yt + self.noise * d["nt"], ye + self.noise * d["ne"]
        return {"xt": xt, "yt": yt, "xe": xe, "ye": ye, "teacher": teacher, "xs": xs, "ys": xs @ teacher}

    def sample(self, key: Any, data: Any = None) -> dict[str, Any]:
        """One meta-training task: ``xt`` ``(K, B, n_in)``, ``yt`` ``(K, B, n_out)``, ``xe``
        ``(cv_points, n_in)``, ``ye``, and the ``teacher`` ``(n_in, n_out)``. Traceable and
        vmap-able; ``data`` (from :meth:`load`) is None and ignored."""
        task = self._draw(key)
        return {name: task[name] for name in ("xt", "yt", "xe", "ye", "teacher")}

    def eval_tasks(self, key: Any, runs: int, data: Any = None, split: str = "test") -> tuple[dict[str, Any], Any]:
        """The evaluation protocol's tasks for ``runs`` runs, and one prior key per run.

        Run ``r`` uses ``k = split(key, runs)[r]`` and ``kp, kt = split(k)``: its prior is drawn
        from ``kp`` (the returned ``(runs, 2)`` keys), its task from ``kt``: the same ``xt``,
        ``yt``, ``teacher`` as ``sample(kt)``, and ``eval_points`` noise-free evaluation points
        drawn once per run and tiled over the ``K + 1`` measurements (before any update and
        after each), ``xs`` ``(runs, K + 1, eval_points, n_in)``, ``ys`` ``(..., n_out)``.

        ``split``: ``"test"`` or ``"validation"``; tasks are synthetic, drawn fresh from the
        key, so there is no held-out pool to split and both give the same tasks for the same
        key (use different keys for model selection and for the final figures)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return self._eval_tasks(key, runs)

    @functools.partial(jax.jit, static_argnums=(0, 2))  # one program (the family is hashable)
    def _eval_tasks(self, key: Any, runs: int) -> tuple[dict[str, Any], Any]:
        steps = self.inner_steps + 1

        def one(k):
            kp, kt = jax.random.split(k)
            task = self._draw(kt)
            tile = lambda a: jnp.broadcast_to(a, (steps, *a.shape))  # noqa: E731
            return {"xt": task["xt"], "yt": task["yt"], "xs": tile(task["xs"]), "ys": tile(task["ys"]), "teacher": task["teacher"]}, kp

        return jax.vmap(one)(jax.random.split(key, runs))
