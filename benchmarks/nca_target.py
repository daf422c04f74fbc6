"""A synthetic RGBA target for the Growing NCA benchmarks, made offline and deterministically.

The Growing NCA article (Mordvintsev et al., "Growing Neural Cellular Automata", Distill 2020)
trains on a 40 x 40 emoji padded by 16 cells to 72 x 72, with premultiplied alpha (``rgb *=
alpha``). Emoji fonts and downloads are not available here, so :func:`nca_target` draws an
emoji-like face with numpy alone: an orange disc with a darker rim, two eyes and a smile, with
anti-aliased (fractional) alpha at its edges, premultiplied like the article's targets. Depends on
numpy only (not on mplp_graph or JAX), so that every variant and the package can import it.
"""

from __future__ import annotations

import numpy as np

SIZE = 40
PAD = 16


def _coverage(dist: np.ndarray, aa: float = 0.75) -> np.ndarray:
    """Anti-aliased coverage of the region ``dist <= 0`` (``dist`` in pixels, signed)."""
    return np.clip(0.5 - dist / (2 * aa), 0.0, 1.0)


def nca_target(size: int = SIZE, pad: int = PAD) -> np.ndarray:
    """``(size + 2 pad, size + 2 pad, 4)`` float32 RGBA in [0, 1], premultiplied alpha; the same
    array on every call (no randomness)."""
    if size < 8 or pad < 0:
        raise ValueError(f"nca_target needs size >= 8 and pad >= 0, got size={size}, pad={pad}")
    c = (size - 1) / 2.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    r = np.hypot(yy - c, xx - c)
    radius = 0.45 * size
    disc = _coverage(r - radius)
    rim = disc * (1.0 - _coverage(r - (radius - 0.08 * size)))
    rgb = np.empty((size, size, 3))
    rgb[...] = (1.0, 0.62, 0.12)  # orange face
    rgb = rgb * (1 - rim[..., None]) + np.array((0.75, 0.32, 0.05)) * rim[..., None]  # darker rim
    dark = np.zeros((size, size))
    for ex in (c - 0.18 * size, c + 0.18 * size):  # eyes: small vertical ellipses
        e = np.hypot((xx - ex) / (0.06 * size), (yy - (c - 0.12 * size)) / (0.1 * size))
        dark = np.maximum(dark, _coverage((e - 1.0) * 0.06 * size))
    smile_r = np.hypot(yy - (c - 0.02 * size), xx - c)  # smile: lower arc of a ring
    arc = _coverage(np.abs(smile_r - 0.25 * size) - 0.035 * size) * (yy > c + 0.06 * size)
    dark = np.maximum(dark, arc)
    rgb = rgb * (1 - dark[..., None]) + np.array((0.3, 0.12, 0.05)) * dark[..., None]
    rgba = np.concatenate([rgb * disc[..., None], disc[..., None]], axis=-1)  # premultiplied
    out = np.pad(rgba, [(pad, pad), (pad, pad), (0, 0)])
    return out.astype(np.float32)
