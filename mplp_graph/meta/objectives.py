"""Meta-losses (paper 3.1.1, eqs. 9-12; the authors' ``training.py`` ``TrainingRegime.mp_loss``):
hint losses after each inner step on the batch just used (or on the next batch:
``MetaLoss.hint``), and the cross-validation loss on held-out data after k steps."""

from __future__ import annotations

from dataclasses import dataclass
import typing
from typing import Any

import jax
import jax.numpy as jnp

from mplp_graph.runtime.program import Program
from mplp_graph.learners.nets import HIDDEN_NAME
from mplp_graph.meta.config import RematName
from mplp_graph.runtime.state import agent_params, with_agent_params, zeros_state


@dataclass(frozen=True)
class MetaLoss:
    """``hint_weight * mean_i hint_i + cv_weight * cv`` (reference: 0.7 and 0.3; CV-only: 0 and 1)."""

    hint_weight: float = 0.7
    cv_weight: float = 0.3
    remat: bool | str = True  # jax.checkpoint around each inner step: see REMAT
    # inner steps per iteration of the scan's loop (``jax.lax.scan(unroll=...)``; True: all of
    # them, no loop). A loop iteration costs a host round trip on a GPU; on the CPU, compile time
    unroll: int | bool = 1
    # where the hint loss after inner step i is measured: on the batch just used ("current", the
    # paper's), or on the next one, not yet seen ("next": the loss of predicting each batch before
    # training on it; k - 1 hints). A learner can lower the "current" hint by fitting the batch it
    # was just given without learning anything that carries over (experiments/robust/README.md).
    hint: str = "current"

    def __post_init__(self):
        if self.hint not in HINTS:
            raise ValueError(f"hint must be one of {HINTS}, got {self.hint!r}")


HINTS = ("current", "next")

def predict_loss(prog: Program, params: Any, state: Any, x: Any, y: Any) -> Any:
    """Mean elementwise loss of the net whose agent parameters are in ``state`` on ``(x, y)``.

    Runs the forward phase on a fresh zero state sized for ``x`` (carries are untouched)."""
    fresh = with_agent_params(zeros_state(prog.spec, x.shape[0]), agent_params(prog.spec, state))
    _, out = prog.forward(params, fresh, {"x": x, "y": y})
    return jnp.mean(out["loss"])


# What the remat of an inner step keeps from its forward pass (``jax.checkpoint`` policies):
# ``full`` (= True) keeps nothing but the step's inputs and recomputes the whole step in the
# backward pass; ``hidden`` also keeps the learners' hidden layers that follow a hidden-to-hidden
# matmul (the GRU's two 40-wide layers, tagged ``HIDDEN_NAME`` in mplp_graph.learners.nets: 80
# floats per agent-example and step) so that the recompute skips the costliest matmuls; ``dots``
# keeps the output of every matmul; ``none`` (= False) keeps everything (no remat). On the 2-core
# CPU the partial policies are slower than ``full`` (storing and reloading the kept layers costs
# more memory traffic than the matmuls they save): docs/performance.md, benchmark case ``mnist_remat``.
REMAT = typing.get_args(RematName)


def remat_policy(remat: bool | str) -> tuple[bool, Any]:
    """``(wrap the step in jax.checkpoint?, its policy)`` for a :data:`REMAT` name or a bool."""
    name = ("full" if remat else "none") if isinstance(remat, bool) else remat
    if name == "full":
        return True, None
    if name == "hidden":
        return True, jax.checkpoint_policies.save_only_these_names(HIDDEN_NAME)
    if name == "dots":
        return True, jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    if name == "none":
        return False, None
    raise ValueError(f"remat must be true, false or one of {REMAT}, got {remat!r}")


def inner_loop(prog: Program, params: Any, prior: Any, xt: Any, yt: Any, remat: bool | str = True, unroll: int | bool = 1,
               hint: str = "current") -> tuple[Any, Any]:
    """Run ``k`` inner steps from ``prior``; returns the final carry (persistent fields) and the
    hint losses: ``(k,)`` on the batch each step used, or with ``hint="next"`` ``(k - 1,)`` on
    the batch the next step will use (:class:`MetaLoss`). ``unroll``: steps per loop iteration
    (``jax.lax.scan``)."""
    carry = prog.carry_of(with_agent_params(zeros_state(prog.spec, xt.shape[1]), prior))
    if hint == "next" and xt.shape[0] < 2:
        raise ValueError("hint 'next' measures each step's net on the next step's batch: it needs at least 2 inner steps")
    # the batch each step's hint is measured on: its own, or the next one (the last step's,
    # wrapped around to the first batch, is dropped below)
    xh, yh = (xt, yt) if hint == "current" else (jnp.roll(xt, -1, axis=0), jnp.roll(yt, -1, axis=0))

    def body(carry, batches):
        x, y, x_hint, y_hint = batches
        carry, _ = prog.step_carry(params, carry, {"x": x, "y": y})  # weights, biases, GRU carries
        return carry, predict_loss(prog, params, carry, x_hint, y_hint)  # theta_{i+1}

    # remat: recompute each inner step's activations in the backward pass instead of storing
    # them (on a 2-core CPU: ~30% faster meta-steps, a third of the memory; benchmarks/)
    wrap, policy = remat_policy(remat)
    carry, hints = jax.lax.scan(jax.checkpoint(body, policy=policy) if wrap else body, carry, (xt, yt, xh, yh), unroll=unroll)
    return carry, (hints if hint == "current" else hints[:-1])


def task_loss(prog: Program, objective: MetaLoss, params: Any, prior: Any, task: dict[str, Any]) -> tuple[Any, dict]:
    state, hints = inner_loop(prog, params, prior, task["xt"], task["yt"], objective.remat, objective.unroll, objective.hint)
    cv = predict_loss(prog, params, state, task["xe"], task["ye"])
    total = objective.hint_weight * jnp.mean(hints) + objective.cv_weight * cv
    return total, {"hint": jnp.mean(hints), "cv": cv}
