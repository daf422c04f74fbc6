"""The op registry: what an arrow can run.

An op is written for one agent: every input arrives with layout ``[..., *feature]`` where the
leading axes (batch, agent axes) broadcast, and a scalar field arrives with one trailing feature
axis of size 1. The op returns a dict of named outputs in the same layout. ``message`` is the
output that travels along the arrow; other outputs can be written back into source fields
through the arrow's ``updates``.

Ops are registered with :func:`register_op`; learners (issue: MPLP) register the same way with
an ``init`` that creates their parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

Shape = tuple[int, ...]
Args = Mapping[str, Any]
InferFn = Callable[[tuple[Shape, ...], Args], dict[str, Shape]]
ApplyFn = Callable[[Any, tuple[Any, ...], Args], dict[str, Any]]
InitFn = Callable[[Any, tuple[Shape, ...], Args], Any]


class OpShapeError(ValueError):
    """Raised by an op's ``infer`` when its inputs do not fit; the verifier locates it."""


@dataclass(frozen=True)
class Op:
    """A registered op.

    Attributes:
      name: the name used in YAML (``op: mul``).
      arity: number of inputs, or ``None`` for any number.
      infer: feature shapes of the outputs from the feature shapes of the inputs.
      apply: ``apply(params, inputs, args) -> {output: array}``.
      init: ``init(key, input_feature_shapes, args) -> params`` for ops with parameters, else None.
      bilinear: the op is ``message = a * b``; with ``sum``/``mean`` aggregation the compiler lowers
        it to one ``einsum`` instead of a broadcast product followed by a reduction.
      differentiable: False for ops with no useful gradient (step, sign); the backprop oracle
        refuses graphs that need a gradient through them.
      arg_names: the static arguments the op accepts (checked by the verifier).
      doc: one line for ``inspect`` and the docs.
      param_parts: for ops whose parameters come in parts that arrows may share separately
        (e.g. a learner's network shared across layers, its standardizer per layer): the part
        names; ``init`` then returns ``{part: params}`` and ``apply`` receives the same structure.
        ``None``: one undivided parameter tree.

      mean_apply: optional fused form of ``apply`` followed by the batch mean (outputs with a
        batch axis of size 1). Used when every output of the arrow is written into fields without
        a batch axis (paper eq. 4), e.g. ``sgd_mul``'s ``p - lr * mean_b(x_i g_j)`` as one matmul.

    Outputs whose names start with ``side_`` are side outputs: never routed, collected by
    :meth:`Program.step_with_side` (used e.g. for statistics of an initialisation rollout).
    """

    name: str
    arity: int | None
    infer: InferFn
    apply: ApplyFn
    init: InitFn | None = None
    bilinear: bool = False
    differentiable: bool = True
    arg_names: tuple[str, ...] = ()
    required_args: tuple[str, ...] = ()
    doc: str = ""
    outputs: tuple[str, ...] = field(default=("message",))
    param_parts: tuple[str, ...] | None = None
    mean_apply: ApplyFn | None = None


_REGISTRY: dict[str, Op] = {}


def register_op(op: Op, *, replace: bool = False) -> Op:
    """Add ``op`` to the registry. Re-registering a name needs ``replace=True``."""
    if op.name in _REGISTRY and not replace:
        raise ValueError(f"op {op.name!r} is already registered; pass replace=True to override it")
    _REGISTRY[op.name] = op
    return op


def get_op(name: str) -> Op:
    """The registered op called ``name`` (KeyError if none)."""
    return _REGISTRY[name]


def op_names() -> list[str]:
    """Names of all registered ops, sorted."""
    return sorted(_REGISTRY)
