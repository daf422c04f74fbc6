"""The NaN/Inf guard of meta-training: where did the first non-finite value come from?

A meta-step reports ``finite`` (meta-loss and every meta-gradient leaf finite); when it is
False, :func:`meta_train <mplp_graph.meta.train.meta_train>` does not apply the step and calls
:func:`diagnose`, which re-runs the failing step's tasks outside the training program:

1. the learner parameters, the tasks' arrays and the priors: which leaves are not finite;
2. the inner loop, with every op wrapped to report, as a side output (``side_*``, collected by
   :meth:`Program.step_with_side`), whether its inputs, its parameters and its outputs are
   finite. The first arrow, in execution order, whose outputs are not finite is the culprit; its
   inputs and parameters tell whether it produced the value or passed on a bad input;
3. when every arrow's outputs were finite (or there is no program to trace): the meta-loss and
   the meta-gradient, per leaf (its top-level keys are the share keys: arrow or learner names).

The diagnosis uses the step function's own interface (:class:`mplp_graph.meta.step.StepFunction`:
``draw``, ``batch_loss``, ``inner``): it traces arrow by arrow for :class:`MetaStep` and the
MAML+MPLP :class:`JointStep`, and reports parameters, loss and gradient for MAML.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from mplp_graph import xla
from mplp_graph.errors import MplpGraphError
from mplp_graph.runtime.state import with_agent_params, zeros_state

PROBES = ("side_probe_inputs", "side_probe_params", "side_probe_outputs")


class NonFiniteError(MplpGraphError, FloatingPointError):
    """Meta-training met a non-finite meta-loss or meta-gradient. ``step`` is the failing
    meta-step (1-based), ``diagnosis`` what :func:`diagnose` found."""

    def __init__(self, message: str, step: int, diagnosis: Diagnosis):
        super().__init__(message)
        self.step = step
        self.diagnosis = diagnosis


@dataclass(frozen=True)
class Culprit:
    """The first arrow whose outputs were not finite."""

    arrow: str
    op: str
    params: tuple[str, ...]  # the parameter entries it reads: "params['W1.learn']['norm']"
    inner_step: int  # 1-based
    task: int  # index in the outer batch
    bad_inputs: bool  # its inputs were already not finite
    bad_params: bool  # its parameters were not finite

    def describe(self) -> str:
        where = f"in inner step {self.inner_step} of task {self.task} of the outer batch"
        if self.bad_params:
            why = f"its parameters are not finite ({', '.join(self.params)})"
        elif self.bad_inputs:
            why = "its inputs were already not finite (from the prior or the task data, see above)"
        else:
            why = "its inputs and parameters were finite: the op itself produced it"
        reads = f", parameters {', '.join(self.params)}" if self.params else ""
        return f"arrow {self.arrow!r} (op {self.op}{reads}) was the first to output a non-finite value, {where}; {why}"


@dataclass(frozen=True)
class Diagnosis:
    loss: float | None  # the meta-loss recomputed by the diagnosis (None: not available)
    bad_params: tuple[str, ...]  # non-finite leaves of the meta-parameters
    bad_grads: tuple[str, ...]  # non-finite leaves of the meta-gradient
    bad_data: tuple[str, ...]  # non-finite task arrays or prior leaves
    culprit: Culprit | None
    notes: tuple[str, ...] = ()

    @property
    def groups(self) -> tuple[str, ...]:
        """Top-level parameter keys (arrow / share-key names) involved, most specific first."""
        keys = list(self.culprit.params) if self.culprit else []
        keys += list(self.bad_params) + list(self.bad_grads)
        return tuple(dict.fromkeys(_top_key(k) for k in keys if _top_key(k)))

    def describe(self) -> str:
        lines = []
        if self.loss is not None:
            lines.append(f"recomputed meta-loss: {self.loss}")
        if self.bad_params:
            lines.append(f"non-finite meta-parameters: {_listing(self.bad_params)}")
        if self.bad_data:
            lines.append(f"non-finite task data or priors: {_listing(self.bad_data)}")
        if self.bad_grads:
            lines.append(f"non-finite meta-gradient leaves: {_listing(self.bad_grads)}")
        if self.culprit is not None:
            lines.append(self.culprit.describe())
        lines += list(self.notes)
        return "\n  ".join(lines)


def _listing(paths: tuple[str, ...], limit: int = 6) -> str:
    return ", ".join(paths[:limit]) + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _top_key(path: str) -> str | None:
    """``"params['W1.learn']['net']"`` -> ``"W1.learn"``."""
    start = path.find("['")
    if start < 0:
        return None
    end = path.find("']", start)
    return path[start + 2 : end] if end > start else None


def nonfinite_leaves(tree: Any, prefix: str) -> tuple[str, ...]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    bad = jax.device_get([jnp.logical_not(jnp.all(jnp.isfinite(jnp.asarray(x)))) for _, x in leaves])
    return tuple(prefix + jax.tree_util.keystr(p) for (p, _), b in zip(leaves, bad) if b)


# ---------------------------------------------------------------------------------------------
# the probe program: every op also reports the finiteness of what it reads and writes


def _all_finite(values: list[Any]) -> Any:
    flags = [jnp.all(jnp.isfinite(v)) for v in values if jnp.issubdtype(jnp.asarray(v).dtype, jnp.inexact)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


def _probe_op(op: Any) -> Any:
    def apply(params, inputs, args):
        out = dict(op.apply(params, inputs, args))
        out[PROBES[0]] = _all_finite(list(inputs))
        out[PROBES[1]] = _all_finite(jax.tree_util.tree_leaves(params))
        out[PROBES[2]] = _all_finite([v for k, v in out.items() if not k.startswith("side_")])
        return out

    # no fused shortcuts (bilinear einsum, batch-mean apply): every arrow goes through apply
    return dataclasses.replace(op, apply=apply, bilinear=False, mean_apply=None)


def probe_program(prog: Any) -> Any:
    """``prog`` with every op wrapped to report finiteness as side outputs."""
    plans = tuple(dataclasses.replace(p, op=_probe_op(p.op)) for p in prog.plans)
    by_name = {p.name: p for p in plans}
    phases = {
        phase: tuple(tuple(dataclasses.replace(k, arrows=tuple(by_name[a.name] for a in k.arrows)) for k in stage) for stage in stages)
        for phase, stages in prog.phases.items()
    }
    return dataclasses.replace(prog, plans=plans, phases=phases)


def execution_order(prog: Any) -> list[str]:
    names = [a.name for phase in prog.step_phases for stage in prog.phases[phase] for k in stage for a in k.arrows]
    return list(dict.fromkeys(names))


def _param_refs(plan: Any) -> tuple[str, ...]:
    if plan.op.init is None or plan.share is None:
        return ()
    if isinstance(plan.share, tuple):
        return tuple(f"params[{key!r}][{part!r}]" for part, key in plan.share)
    return (f"params[{plan.share!r}]",)


def trace_inner_loop(prog: Any, params: Any, priors: Any, tasks: dict[str, Any]) -> dict[str, Any]:
    """``{arrow: (inputs_ok, params_ok, outputs_ok)}``, each ``(outer_batch, k)`` booleans."""
    return _tracer(prog)(params, priors, tasks)


@functools.lru_cache(maxsize=4)
def _tracer(prog: Any) -> Any:
    """The jitted trace of ``prog`` (one compilation per program and shapes)."""
    probe = probe_program(prog)

    def one(params, prior, task):
        state = with_agent_params(zeros_state(prog.spec, task["xt"].shape[1]), prior)

        def body(state, xy):
            state, _, side = probe.step_with_side(params, state, {"x": xy[0], "y": xy[1]})
            return state, {a: tuple(s[p] for p in PROBES) for a, s in side.items() if PROBES[0] in s}

        return jax.lax.scan(body, state, (task["xt"], task["yt"]))[1]

    return xla.jit(jax.vmap(one, in_axes=(None, 0, 0)))


def first_culprit(prog: Any, flags: dict[str, Any]) -> Culprit | None:
    flags = jax.device_get(flags)
    plans = {p.name: p for p in prog.plans}
    n_steps = next(iter(flags.values()))[2].shape[1] if flags else 0
    for k in range(n_steps):
        for name in execution_order(prog):
            if name not in flags:
                continue
            ins, pars, outs = flags[name]
            bad = [b for b in range(outs.shape[0]) if not outs[b, k]]
            if bad:
                b = bad[0]
                plan = plans[name]
                return Culprit(name, plan.op.name, _param_refs(plan), k + 1, b, not bool(ins[b, k]), not bool(pars[b, k]))
    return None


def diagnose(step_fn: Any, params: Any, pool: Any, key: Any, data: Any = None) -> Diagnosis:
    """Find where the meta-step at ``key`` (the key the step function received) went non-finite.
    ``step_fn`` is a :class:`mplp_graph.meta.step.StepFunction`: its ``draw`` gives the step's
    tasks and priors, its ``inner`` the learned protocol to trace (None: loss and gradient only)."""
    notes: list[str] = []
    bad_params = nonfinite_leaves(params, "params")
    drawn = step_fn.draw(params, pool, key, data)
    inner = step_fn.inner(params, drawn)
    bad_data = nonfinite_leaves(drawn["tasks"], "task")
    culprit = None
    if inner is not None:
        prog, learner, priors = inner
        bad_data += nonfinite_leaves(priors, "prior")
        try:
            culprit = first_culprit(prog, trace_inner_loop(prog, learner, priors, drawn["tasks"]))
        except MplpGraphError as e:  # e.g. a shuffled phase cannot report side outputs
            notes.append(f"no per-arrow trace: {e}")
    if culprit is not None:  # found in the forward computation: no need to compile the meta-gradient
        return Diagnosis(None, bad_params, (), bad_data, culprit, tuple(notes))
    loss, grads = xla.jit(jax.value_and_grad(lambda p: step_fn.batch_loss(p, drawn)[0]))(params)
    loss = float(loss)
    bad_grads = nonfinite_leaves(grads, "grad")
    if not jnp.isfinite(loss) and inner is not None and not notes:
        notes.append("every arrow's outputs were finite in the inner steps: the hint or CV loss itself is not finite")
    elif jnp.isfinite(loss) and bad_grads:
        notes.append("the loss is finite but its gradient is not: a non-finite derivative in the backward pass")
    elif jnp.isfinite(loss):
        notes.append("the diagnosis recomputed a finite loss and gradient: the failure did not reproduce outside the training program")
    return Diagnosis(loss, bad_params, bad_grads, bad_data, culprit, tuple(notes))
