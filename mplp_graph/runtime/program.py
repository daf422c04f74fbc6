"""compile_graph(spec) -> Program: the compiler's static data with the methods that run it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import jax

from mplp_graph.compile.pipeline import CompiledGraph, compile_spec
from mplp_graph.compile.report import CompileReport, compile_report
from mplp_graph.ir.spec import GraphSpec
from mplp_graph.runtime import execute
from mplp_graph.runtime.state import init_state


@dataclass(frozen=True, eq=False)
class Program(CompiledGraph):
    """A compiled graph. Every method is a pure function of its arguments (jit/vmap/scan-able);
    the program itself is static data (hashable by identity)."""

    @classmethod
    def of(cls, compiled: CompiledGraph) -> Program:
        """The program running ``compiled`` (the same fields, shared, not copied)."""
        return cls(**{f.name: getattr(compiled, f.name) for f in dataclasses.fields(compiled)})

    def init(self, key: Any, batch_size: int = 1) -> dict[str, dict[str, Any]]:
        """Fresh agent state ``{group: {field: array}}``."""
        return init_state(self.spec, key, batch_size)

    def init_params(self, key: Any) -> dict[str, Any]:
        """Parameters of the parametrised ops, one entry per share key."""
        params: dict[str, Any] = {}
        for k, plan in enumerate(self.plans):
            if plan.op.init is None:
                continue
            if isinstance(plan.share, tuple):  # multi-part op: params[key][part]
                missing = [(part, sk) for part, sk in plan.share if part not in params.get(sk, {})]
                if missing:
                    tree = plan.op.init(jax.random.fold_in(key, k), plan.in_features, plan.args)
                    for part, sk in missing:
                        params.setdefault(sk, {})[part] = tree[part]
            elif plan.share not in params:
                params[plan.share] = plan.op.init(jax.random.fold_in(key, k), plan.in_features, plan.args)
        return params

    def step(self, params: Any, state: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """Feed ``batch``, run the phases of ``schedule.step``; returns ``(state, outputs)``."""
        return execute.step(self, params, state, batch)

    def step_with_side(self, params: Any, state: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, Any], dict]:
        """Like :meth:`step`, also returning the ops' side outputs ``{arrow: {name: value}}``."""
        side: dict = {}
        state, out = execute.step(self, params, state, batch, side)
        return state, out, side

    def init_carry(self, key: Any, batch_size: int = 1) -> dict[str, dict[str, Any]]:
        """The persistent part of a fresh state (see :meth:`step_carry`)."""
        return self.carry_of(self.init(key, batch_size))

    def carry_of(self, state: Any) -> dict[str, dict[str, Any]]:
        """The persistent fields of a full state: what :meth:`step_carry` takes and returns.
        Groups without persistent fields are left out (a smaller pytree: less dispatch work
        per jitted call)."""
        return execute.carry_of(self, state)

    def step_carry(self, params: Any, carry: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """:meth:`step` on the persistent fields only (weights, biases, recurrent carries).

        Step-local fields (overwritten every step before being read) start as zeros that the
        compiler removes; use this in ``lax.scan`` loops over steps."""
        return execute.step_carry(self, params, carry, batch)

    def run_phase(self, phase: str, params: Any, state: Any) -> Any:
        return execute.run_phase(self, phase, params, state)

    def forward(self, params: Any, state: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """Feed ``batch`` and run only the ``forward`` phase."""
        state = execute.feed(self, state, batch)
        state = execute.run_phase(self, "forward", params, state)
        return state, execute.outputs(self, state)

    def shard_agents(self, mesh: Any, axes: dict[str, int]) -> Program:
        """This program with the agent axes ``{group: axis}`` split over the ``"agents"`` axis
        of ``mesh`` (:mod:`mplp_graph.compile.partition`, docs/scaling.md): the same results,
        the split groups' state spread over the devices. An empty ``axes``: not split."""
        from mplp_graph.compile.partition import plan

        return dataclasses.replace(self, partition=plan(self.spec, mesh, axes) if axes else None)

    def report(self, batch_size: int = 1, *, flops: bool = True) -> CompileReport:
        """What the compiler made of the graph (:func:`mplp_graph.compile.report.compile_report`)."""
        return compile_report(self, batch_size, flops=flops)


def compile_graph(spec: GraphSpec) -> Program:
    """Compile ``spec`` (:func:`mplp_graph.compile.pipeline.compile_spec`: verify, resolve,
    schedule, group, liveness) into a :class:`Program`."""
    return Program.of(compile_spec(spec))
