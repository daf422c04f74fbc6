"""Strict scalar types for everything a user writes (graph files, op arguments, experiment configs).

pydantic's default ("lax") mode reads ``true`` as 1 where an integer belongs, ``"3"`` as 3 and
``2.0`` as 2, and accepts ``.nan`` and ``.inf`` as numbers: each is a silent coercion that lets a
typo run, and a non-finite rate or initialiser trains to NaN. These types refuse them, with
pydantic's usual error types (``int_type``, ``float_type``, ``bool_type``, ``finite_number``), so
the located messages of mplp_graph/config/issues.py say what was expected. NumPy scalars (from
specs built in Python) are taken as the Python scalar they hold.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import BeforeValidator, Field, Strict


def _plain(value: Any) -> Any:
    """A NumPy scalar as the Python scalar it holds; everything else unchanged."""
    if type(value).__module__ == "numpy" and getattr(value, "shape", None) == ():
        return value.item()
    return value


# The NumPy conversion comes last in each Annotated so that pydantic keeps the bounds on the
# inner type (the JSON schema then says "minimum", not a raw "ge"). Bounds on a model field go
# in its Field(...), e.g. ``x: Int = Field(0, ge=0)``; in a list, use the bounded aliases below.
Int = Annotated[int, Strict(), BeforeValidator(_plain)]
"""An integer; ``true``/``false``, ``2.0`` and ``"2"`` are refused."""
Real = Annotated[float, Strict(), Field(allow_inf_nan=False), BeforeValidator(_plain)]
"""A finite number (integers accepted); booleans, strings, ``.nan`` and ``.inf`` are refused."""
Flag = Annotated[bool, Strict(), BeforeValidator(_plain)]
"""``true`` or ``false``; ``1`` and ``"yes"`` are refused."""
Scalar = Union[Flag, Int, Real, str]
"""Any one YAML scalar, numbers finite."""
PosInt = Annotated[int, Strict(), Field(ge=1), BeforeValidator(_plain)]
"""An integer >= 1 (a size)."""
PosReal = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False), BeforeValidator(_plain)]
"""A finite number > 0 (a rate)."""
Index = Annotated[int, Strict(), Field(ge=0), BeforeValidator(_plain)]
"""An integer >= 0 (an axis or an index)."""
