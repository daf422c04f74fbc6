"""The graph IR: frozen data, nothing that computes.

Grammar (the YAML document mirrors it one to one; see docs/yaml.md and docs/concepts.md)::

    graph     := name, groups{name: group}, arrows[arrow], schedule?, inputs{key: ref}, outputs{key: ref}
    group     := kind, shape[int*], state{field: field}          # a tensor of agents of one kind
    field     := shape[int*], dtype, batched, init, constant_along[int*]
    arrow     := name, from, to, phase, op, inputs[field*], (map | edges), aggregate, into?, updates{field: out}, share?
    share     := key | {part: key}     # ops with several parameter parts (a learner's net, its standardizer)
    map       := "identity" | "<src letters> -> <dst letters>"    # einsum-style, one letter per agent axis
    edges     := [[src, dst]*]                                    # flat (row-major) agent indices
    schedule  := phases{name: [stage*]}?, step[phase*], random{phase: draw}?, rng?   # stage := [arrow name*]
    draw      := order ("fixed" | "shuffle"), fire (0 < p <= 1)   # drawn anew each time the phase runs
    rng       := ref                                              # an int32 step counter (one agent, scalar)
    ref       := "group.field"

Semantics in one paragraph: an arrow runs its op at every agent of its source group on the
listed source fields, optionally writes op outputs back into source fields (``updates``), and
sends the op's ``message`` output along its connectivity to the destination group, where the
messages arriving at one agent are aggregated (``mean`` as in the paper's eq. 5, ``sum``,
``max``) and stored in the destination field ``into``. Writes from per-example values into a
field without a batch axis are averaged over the batch (the paper's eq. 4).

Array layout of a field in the state: ``[B?, *agent_shape, *field_shape]``; along axes listed in
``constant_along`` the stored size is 1 (the value is the same for every agent along that axis,
e.g. the forward input x_i stored at every synapse w_ij), so replication is never materialized.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mplp_graph.scalars import Flag, Index, Int, PosInt, Real

AGGREGATES = ("mean", "sum", "max")
DTYPES = ("float32", "float64", "int32", "bool")


class _Frozen(BaseModel):
    # Numbers are strict (mplp_graph/scalars.py): no bool, string or non-finite value where a number belongs.
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, allow_inf_nan=False)


# ---------------------------------------------------------------------------------------------
# state fields


class ZerosInit(_Frozen):
    kind: Literal["zeros"] = "zeros"


class ConstantInit(_Frozen):
    kind: Literal["constant"]
    value: Real


class NormalInit(_Frozen):
    kind: Literal["normal"]
    std: Real = Field(gt=0)
    mean: Real = 0.0


class UniformInit(_Frozen):
    kind: Literal["uniform"]
    low: Real
    high: Real

    @model_validator(mode="after")
    def _ordered(self) -> "UniformInit":
        if not self.low < self.high:
            raise ValueError(f"uniform init needs low < high, got low={self.low}, high={self.high}")
        return self


Init = Annotated[Union[ZerosInit, ConstantInit, NormalInit, UniformInit], Field(discriminator="kind")]


def _init_shorthand(value: Any) -> Any:
    """``init: zeros`` is shorthand for ``init: {kind: zeros}``."""
    if isinstance(value, str):
        return {"kind": value}
    return value


class FieldSpec(_Frozen):
    """One named piece of per-agent state."""

    shape: tuple[PosInt, ...] = ()
    dtype: Literal["float32", "float64", "int32", "bool"] = "float32"
    batched: Flag = False
    init: Init = ZerosInit()
    constant_along: tuple[Index, ...] = ()

    _init_str = field_validator("init", mode="before")(_init_shorthand)


# ---------------------------------------------------------------------------------------------
# groups of agents


class GroupSpec(_Frozen):
    """A tensor of agents of one kind (``weight``, ``bias``, ``activation``, ``loss``, ``input``...)."""

    kind: str = Field(min_length=1)
    shape: tuple[PosInt, ...] = ()
    state: dict[str, FieldSpec] = {}


# ---------------------------------------------------------------------------------------------
# arrows


class OpRef(_Frozen):
    """Which registered op an arrow runs, with static arguments (hyperparameters)."""

    name: str = Field(min_length=1)
    # Any scalar here (NaN included): the verifier checks each against the op's argument model,
    # whose messages name the argument, its type and its meaning.
    args: dict[str, Union[Flag, Int, Annotated[float, Field(allow_inf_nan=True)], str]] = {}


def _op_shorthand(value: Any) -> Any:
    """``op: mul`` is shorthand for ``op: {name: mul}``."""
    if isinstance(value, str):
        return {"name": value}
    return value


class ArrowSpec(_Frozen):
    """A family of directed edges from one group to another (or to itself), running one op."""

    name: str = Field(min_length=1)
    src: str = Field(alias="from", min_length=1)
    dst: str = Field(alias="to", min_length=1)
    phase: str = "forward"
    op: OpRef
    inputs: tuple[str, ...] = ()
    map: str | None = None
    edges: tuple[tuple[Int, Int], ...] | None = None
    aggregate: Literal["mean", "sum", "max"] = "mean"
    into: str | None = None
    updates: dict[str, str] = {}
    share: str | dict[str, str] | None = None

    _op_str = field_validator("op", mode="before")(_op_shorthand)

    @field_validator("share")
    @classmethod
    def _share_names(cls, share: Any) -> Any:
        keys = [share] if isinstance(share, str) else [] if share is None else [*share, *share.values()]
        if any(not k.strip() for k in keys):
            raise ValueError(
                f"share keys must be non-empty names, got {share!r}; write e.g. 'share: layer_net', or remove 'share' "
                "to give the arrow parameters of its own"
            )
        return share

    @model_validator(mode="after")
    def _one_connectivity(self) -> "ArrowSpec":
        if self.map is not None and self.edges is not None:
            raise ValueError("give either 'map' or 'edges', not both")
        return self


# ---------------------------------------------------------------------------------------------
# schedules


class RandomSpec(_Frozen):
    """Random choices made each time a phase runs (custom schedules; paper section 5's
    "computations happen asynchronously").

    ``order: shuffle``: the phase's stages run in an order drawn uniformly at random.
    ``fire: p``: in every stage, each agent of a group the stage writes keeps the write with
    probability ``p`` and its old value otherwise (asynchronous updates of a random subset).
    """

    order: Literal["fixed", "shuffle"] = "fixed"
    fire: Real = Field(1.0, gt=0, le=1)


class ScheduleSpec(_Frozen):
    """Phases made of ordered stages; ``step`` is the sequence of phases one step runs.

    A phase missing from ``phases`` gets a derived order (dependency order of its arrows).
    An empty ``step`` means: ``forward`` then ``backward`` (those present), then other phases.
    A phase may appear several times in ``step`` (several message rounds per step).
    ``random`` draws a stage order or a subset of firing agents per run of a phase; the draws
    are a function of the ``rng`` field, an int32 counter that every step increments by one.
    """

    phases: dict[str, tuple[tuple[str, ...], ...]] = {}
    step: tuple[str, ...] = ()
    random: dict[str, RandomSpec] = {}
    rng: str | None = None


class GraphSpec(_Frozen):
    """A whole graph of agents."""

    name: str = Field(min_length=1)
    description: str = ""
    groups: dict[str, GroupSpec]
    arrows: tuple[ArrowSpec, ...] = ()
    schedule: ScheduleSpec = ScheduleSpec()
    inputs: dict[str, str] = {}
    outputs: dict[str, str] = {}

    def arrow(self, name: str) -> ArrowSpec:
        for a in self.arrows:
            if a.name == name:
                return a
        raise KeyError(name)
