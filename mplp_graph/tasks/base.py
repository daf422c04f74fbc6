"""What a task family is: the one interface between the learning layer and the data.

A *task* is what one inner loop learns from (paper section 3.1.1): ``K`` inner batches, one
per inner step, and held-out points for the meta-loss's cross-validation term. A *task family*
draws tasks. Every family, built in (sinusoid, MNIST, sequences, linear teachers) or a user's own
(``task: {family: "my_module:make_family"}`` in an experiment config), has the same shape:

* ``inner_steps`` (``K``) and ``batch`` (``B``): the inner loop's length and batch size;
* ``metrics``: the per-step evaluation metrics it declares, the first one primary (``"loss"``:
  the graph's mean elementwise loss, lower is better; ``"accuracy"``: argmax agreement in
  percent, higher is better; ``"seen_loss"``: the loss on the inner batches seen so far;
  :data:`METRICS`);
* ``load()``: the family's arrays (a data set), loaded once and handed back to ``sample`` and
  ``eval_tasks`` as ``data``, so that meta-steps take them as an argument instead of baking them
  into the compiled program; ``None`` for synthetic families;
* ``sample(key, data)``: one meta-training task, a dict of arrays with at least

  ========  ================  ==========================================================
  ``xt``    ``(K, B, *x)``    the inner batches' inputs (the graph's batch key ``x``)
  ``yt``    ``(K, B, *y)``    their targets (batch key ``y``)
  ``xe``    ``(N, *x)``       held-out inputs (the cross-validation loss after ``K`` steps)
  ``ye``    ``(N, *y)``       held-out targets
  ========  ================  ==========================================================

  and whatever else describes the task (a sinusoid's ``amp`` and ``phase``); ``sample`` must be
  traceable (``jax.vmap`` draws an outer batch of tasks in one program);
* ``eval_tasks(key, runs, data, split)``: the evaluation protocol's tasks for ``runs`` runs,
  stacked, with ``xt``/``yt`` as above and per-step evaluation sets ``xs`` ``(runs, K + 1, N,
  *x)``, ``ys``: the metrics after ``i`` inner updates are measured on ``xs[:, i]``. It also
  returns one PRNG key per run (``(runs, 2)``), from which each run draws its random prior.
  ``split`` is ``"test"`` (final figures) or ``"validation"`` (model selection); a family
  without such a distinction treats them alike.

:func:`check_family` checks a user's family against this interface and says what is missing.
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol, runtime_checkable

# metric name -> (direction, description); the evaluation harness computes them
# (mplp_graph.meta.evaluate)
METRICS = {
    "loss": ("lower", "mean elementwise loss of the graph's loss output"),
    "accuracy": ("higher", "percentage of examples whose argmax prediction is the argmax target"),
    # measured on the inner batches, not on xs: after i updates, the mean loss over every example
    # of batches 1..i (the examples seen so far); at step 0, over the first batch
    "seen_loss": ("lower", "mean elementwise loss on the inner-batch examples seen so far"),
}
SPLITS = ("test", "validation")
TASK_KEYS = ("xt", "yt", "xe", "ye")
EVAL_KEYS = ("xt", "yt", "xs", "ys")


@runtime_checkable
class TaskFamily(Protocol):
    """The interface above (module docstring)."""

    inner_steps: int
    batch: int
    metrics: tuple[str, ...]

    def load(self) -> Any: ...

    def sample(self, key: Any, data: Any) -> dict[str, Any]: ...

    def eval_tasks(self, key: Any, runs: int, data: Any, split: str = "test") -> tuple[dict[str, Any], Any]: ...


def lower_is_better(metric: str) -> bool:
    return METRICS[metric][0] == "lower"


def check_family(family: Any, where: str = "task family") -> list[str]:
    """What ``family`` lacks to be a :class:`TaskFamily`: one sentence per problem (empty: none)."""
    problems = []
    for attr in ("inner_steps", "batch"):
        value = getattr(family, attr, None)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            problems.append(f"{where} needs an integer attribute {attr!r} >= 1, found {value!r}")
    metrics = getattr(family, "metrics", None)
    if not isinstance(metrics, tuple) or not metrics or any(m not in METRICS for m in metrics):
        problems.append(f"{where} needs 'metrics', a non-empty tuple of names from {sorted(METRICS)}, found {metrics!r}")
    for name, n_args in (("load", 0), ("sample", 2), ("eval_tasks", 3)):
        fn = getattr(family, name, None)
        if not callable(fn):
            problems.append(f"{where} needs a method {name}() (mplp_graph.tasks.base.TaskFamily)")
            continue
        try:
            inspect.signature(fn).bind(*([None] * n_args))
        except TypeError:
            problems.append(f"{where}.{name} must accept {n_args} positional argument(s) (see mplp_graph.tasks.base.TaskFamily)")
        except ValueError:  # no signature available (a builtin): accept it
            pass
    return problems
