"""The op registry: what an arrow can run.

An op is written for one agent: every input arrives with layout ``[..., *feature]`` where the
leading axes (batch, agent axes) broadcast, and a scalar field arrives with one trailing feature
axis of size 1. The op returns a dict of named outputs in the same layout. ``message`` is the
output that travels along the arrow; other outputs can be written back into source fields
through the arrow's ``updates``.

Ops are registered with :func:`register_op`; the MPLP learners (mplp_graph/learners/ops.py)
register the same way with an ``init`` that creates their parameters.

An op declares its static arguments (hyperparameters such as a learning rate) as a small pydantic
model, a subclass of :class:`OpArgs`: types, ranges, defaults and a one-line description each.
The verifier checks every arrow's ``args`` against it (located errors), the op receives the
validated arguments with their defaults filled in, ``mplp-graph ops`` lists them, and docs/yaml.md's
op table is generated from the same models (:func:`op_table`).
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Literal, Mapping, Union

from pydantic import BaseModel, ConfigDict, create_model

from mplp_graph.scalars import Scalar

Shape = tuple[int, ...]
Args = Mapping[str, Any]
InferFn = Callable[[tuple[Shape, ...], Args], dict[str, Shape]]
ApplyFn = Callable[[Any, tuple[Any, ...], Args], dict[str, Any]]
InitFn = Callable[[Any, tuple[Shape, ...], Args], Any]


class OpShapeError(ValueError):
    """Raised by an op's ``infer`` when its inputs do not fit; the verifier locates it."""


class OpArgs(BaseModel):
    """Base of an op's argument model: frozen, unknown names refused, numbers strict and finite.
    Give every field a ``description`` (``Field(..., description=...)``): it is the op table's
    text (docs/yaml.md, ``mplp-graph ops``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class NoArgs(OpArgs):
    """The argument model of an op that takes no arguments."""


def _args_model(name: str, arg_names: tuple[str, ...], required: tuple[str, ...]) -> type[OpArgs]:
    """An argument model for an op registered with names only: any finite scalar per name."""
    fields = {a: ((Scalar, ...) if a in required else (Scalar | None, None)) for a in arg_names}
    return create_model(f"{name}_args", __base__=OpArgs, **fields)


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
      args: the op's argument model (a subclass of :class:`OpArgs`); ``arg_names`` and
        ``required_args`` are read from it. ``None``: built from ``arg_names`` and
        ``required_args`` (any finite scalar per name), for ops registered without a model.
      arg_names: the static arguments the op accepts (checked by the verifier).
      required_args: those of them without a default.
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
    args: type[OpArgs] | None = None

    def __post_init__(self) -> None:
        if self.args is None:
            object.__setattr__(self, "args", _args_model(self.name, tuple(self.arg_names), tuple(self.required_args)))
        else:
            fields = self.args.model_fields
            object.__setattr__(self, "arg_names", tuple(fields))
            object.__setattr__(self, "required_args", tuple(n for n, f in fields.items() if f.is_required()))

    def check_args(self, args: Args) -> dict[str, Any]:
        """The arguments an arrow gives, validated against :attr:`args`, with defaults filled in
        (what ``infer``, ``init`` and ``apply`` receive). Raises pydantic's ``ValidationError``;
        the verifier turns it into located messages."""
        return self.args.model_validate(dict(args)).model_dump()


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


# ---------------------------------------------------------------------------------------------
# describing arguments (the op table of docs/yaml.md and ``mplp-graph ops``)


def _type_words(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _type_words(typing.get_args(annotation)[0])
    if origin is Literal:
        return " | ".join(str(v) for v in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        members = [m for m in typing.get_args(annotation) if m is not type(None)]
        return " or ".join(dict.fromkeys(_type_words(m) for m in members))
    return {int: "integer", float: "number", bool: "boolean", str: "string"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _bounds(field: Any) -> str:
    words = []
    for m in field.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            v = getattr(m, attr, None)
            if v is not None:
                words.append(f"{sign} {v}")
    return ", ".join(words)


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def describe_args(op: Op) -> list[dict[str, str]]:
    """One row per argument of ``op``: name, type (with bounds), default, description."""
    rows = []
    for name, f in op.args.model_fields.items():
        kind = _type_words(f.annotation)
        bounds = _bounds(f)
        rows.append({
            "name": name,
            "type": f"{kind} {bounds}".strip(),
            "default": "required" if f.is_required() else ("none" if f.default is None else _num(f.default)),
            "description": f.description or "",
        })
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def op_table() -> str:
    """The op table of docs/yaml.md (Markdown): every registered op, its inputs and arguments."""
    lines = ["| op | inputs | arguments | computes |", "|---|---|---|---|"]
    for name in op_names():
        op = _REGISTRY[name]
        arity = "any number" if op.arity is None else str(op.arity)
        args = "<br>".join(
            f"`{r['name']}`: {_cell(r['type'])}, " + ("*required*" if r["default"] == "required" else r["default"] if r["default"] == "none" else f"`{r['default']}`")
            + (f"; {_cell(r['description'])}" if r["description"] else "")
            for r in describe_args(op)
        ) or "none"
        doc = _cell(op.doc)
        lines.append(f"| `{name}` | {arity} | {args} | {doc} |")
    return "\n".join(lines) + "\n"
