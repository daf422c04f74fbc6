"""How a field is stored in the state: a pure function of its spec.

Kept in the IR, below the compiler and the runtime, because both need it: the compiler to
describe a batch's shapes (the compile report), the runtime to allocate and write the state.
"""

from __future__ import annotations

from mplp_graph.ir.spec import FieldSpec, GroupSpec


def stored_shape(group: GroupSpec, f: FieldSpec, batch_size: int) -> tuple[int, ...]:
    """``[B?, *agent_shape (1 along constant axes), *field_shape]``."""
    agents = tuple(1 if ax in f.constant_along else n for ax, n in enumerate(group.shape))
    return ((batch_size,) if f.batched else ()) + agents + f.shape
