"""Einsum-style index maps: ``"i -> i j"``, ``"i j -> j"``, ``"identity"``.

Letters name agent axes, positionally: the left side names the source group's axes, the right
side the destination's. A letter on both sides connects equal indices; a letter only on the
left is reduced (messages from all its values arrive at one agent and are aggregated); a letter
only on the right is broadcast (one message goes to all its values). Sides are written either
as space-separated names (``"row col -> col"``) or as single characters (``"ij->j"``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class IndexMap:
    src: tuple[str, ...]
    dst: tuple[str, ...]

    @property
    def reduced(self) -> tuple[str, ...]:
        return tuple(x for x in self.src if x not in self.dst)

    @property
    def broadcast(self) -> tuple[str, ...]:
        return tuple(x for x in self.dst if x not in self.src)

    def __str__(self) -> str:
        return f"{' '.join(self.src)} -> {' '.join(self.dst)}".strip()


class IndexMapError(ValueError):
    """A map that does not parse or does not type-check against the groups' shapes."""


def _side(text: str) -> tuple[str, ...]:
    text = text.strip()
    if not text:
        return ()
    names = tuple(text.split()) if any(c.isspace() for c in text) else tuple(text)
    for n in names:
        if not n.isidentifier():
            raise IndexMapError(f"index name {n!r} is not a letter or identifier")
    return names


def parse_index_map(text: str, src_rank: int | None = None) -> IndexMap:
    """Parse ``text``; ``"identity"`` needs ``src_rank`` to name the axes."""
    if text.strip() == "identity":
        if src_rank is None:
            raise IndexMapError("'identity' needs the source rank")
        names = tuple(f"a{k}" for k in range(src_rank))
        return IndexMap(names, names)
    if text.count("->") != 1:
        word = text.strip()
        if "->" not in text and difflib.get_close_matches(word.lower(), ["identity"], n=1, cutoff=0.6):
            raise IndexMapError(f"unknown index map {text!r}. Did you mean 'identity'? (or an arrow such as 'i j -> j')")
        raise IndexMapError(f"expected one '->' as in 'i j -> j' (or the word 'identity'), got {text!r}")
    left, right = text.split("->")
    m = IndexMap(_side(left), _side(right))
    for side, names in (("left", m.src), ("right", m.dst)):
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise IndexMapError(f"index {dup[0]!r} repeated on the {side} side of {text!r}; diagonals are not supported")
    return m


def bind_sizes(m: IndexMap, src_shape: tuple[int, ...], dst_shape: tuple[int, ...]) -> dict[str, int]:
    """Letter -> size, checking ranks and that shared letters have one size."""
    if len(m.src) != len(src_shape):
        raise IndexMapError(
            f"left side names {len(m.src)} axes ({' '.join(m.src) or 'none'}) but the source group has "
            f"shape {list(src_shape)} ({len(src_shape)} axes)"
        )
    if len(m.dst) != len(dst_shape):
        raise IndexMapError(
            f"right side names {len(m.dst)} axes ({' '.join(m.dst) or 'none'}) but the destination group has "
            f"shape {list(dst_shape)} ({len(dst_shape)} axes)"
        )
    sizes: dict[str, int] = dict(zip(m.src, src_shape))
    for name, n in zip(m.dst, dst_shape):
        if name in sizes and sizes[name] != n:
            raise IndexMapError(
                f"index {name!r} has size {sizes[name]} in the source group but {n} in the destination group"
            )
        sizes[name] = n
    return sizes
