"""Target images for learned cellular automata (docs/nca.md), available offline.

The Growing NCA article (Mordvintsev et al., Distill 2020) grows emoji images; emoji fonts are
not something every machine has, so the built-in targets are drawn here from a few shapes
(deterministic, no file needed), and any RGBA PNG file can be given instead. An image is
``float32[size, size, 4]``, RGB premultiplied by alpha (as the article's ``load_emoji``), with
``padding`` empty cells around it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size) + 0.5) / size * 2.0 - 1.0  # cell centres in [-1, 1]
    return np.meshgrid(c, c, indexing="ij")  # (y, x)


def _smiley(size: int) -> np.ndarray:
    """A yellow face with an orange rim, two dark eyes and a red mouth."""
    y, x = _grid(size)
    r = np.hypot(x, y)
    img = np.zeros((size, size, 4), np.float32)
    face = r < 0.92
    img[face] = (1.0, 0.82, 0.15, 1.0)
    img[(r >= 0.78) & face] = (0.95, 0.5, 0.1, 1.0)
    for ex in (-0.33, 0.33):
        img[np.hypot(x - ex, y + 0.25) < 0.14] = (0.15, 0.1, 0.1, 1.0)
    mouth = (np.hypot(x, y - 0.05) < 0.55) & (np.hypot(x, y - 0.05) > 0.4) & (y > 0.2)
    img[mouth] = (0.8, 0.1, 0.15, 1.0)
    return img


def _ring(size: int) -> np.ndarray:
    """A ring whose colour turns with the angle (red, green, blue around it)."""
    y, x = _grid(size)
    r, a = np.hypot(x, y), np.arctan2(y, x)
    img = np.zeros((size, size, 4), np.float32)
    on = (r > 0.5) & (r < 0.9)
    for k in range(3):
        img[..., k] = np.where(on, 0.5 + 0.5 * np.cos(a - 2 * np.pi * k / 3), 0.0)
    img[..., 3] = on
    return img


def _coverage(dist: np.ndarray, aa: float = 0.75) -> np.ndarray:
    """Anti-aliased coverage of the region ``dist <= 0`` (``dist`` in cells, signed)."""
    return np.clip(0.5 - dist / (2 * aa), 0.0, 1.0)


def _face(size: int) -> np.ndarray:
    """An emoji-like face with anti-aliased (fractional) alpha at its edges: an orange disc with a
    darker rim, two dark eyes and a smile. The benchmarks' and the reference training's target
    (benchmarks/cases/grids.py, experiments/nca/cax_reference.py)."""
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
    return np.concatenate([rgb, disc[..., None]], axis=-1)


TARGETS = {"face": _face, "smiley": _smiley, "ring": _ring}


def target_image(image: str, size: int, padding: int, base_dir: str | Path | None = None) -> np.ndarray:
    """The target ``float32[size + 2 padding, size + 2 padding, 4]``: a built-in image
    (:data:`TARGETS`) or an RGBA PNG file, resized to ``size`` (nearest cell) and premultiplied
    by its alpha. Raises ValueError (unknown name, unreadable file) and FileNotFoundError."""
    if image in TARGETS:
        img = TARGETS[image](size)
    else:
        path = Path(image)
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        if not path.is_file():
            raise FileNotFoundError(f"{image!r} is neither a built-in image ({', '.join(sorted(TARGETS))}) nor a file ({path} does not exist)")
        import matplotlib.image

        try:
            raw = np.asarray(matplotlib.image.imread(path), np.float32)
        except (OSError, ValueError, SyntaxError) as e:
            raise ValueError(f"{path}: cannot read it as an image ({e}); give an RGBA PNG file") from None
        if raw.ndim != 3 or raw.shape[2] not in (3, 4):
            raise ValueError(f"{path}: expected an RGB or RGBA image, found an array of shape {list(raw.shape)}")
        if raw.max() > 1.0:
            raw = raw / 255.0
        if raw.shape[2] == 3:
            raw = np.concatenate([raw, np.ones(raw.shape[:2] + (1,), np.float32)], axis=2)
        rows = (np.arange(size) * raw.shape[0] / size).astype(int)
        cols = (np.arange(size) * raw.shape[1] / size).astype(int)
        img = raw[rows][:, cols]
    img = np.array(img)  # a copy, in the drawing's precision
    img[..., :3] *= img[..., 3:4]  # premultiplied alpha
    return np.pad(img, ((padding, padding), (padding, padding), (0, 0))).astype(np.float32)


def seed_state(shape: tuple[int, int], features: int, alpha: int = 3) -> np.ndarray:
    """The article's seed: every channel from ``alpha`` on set to 1 in the centre cell, all else 0.
    ``float32[1, *shape, features]`` (a batch of one)."""
    seed = np.zeros((1, *shape, features), np.float32)
    seed[0, shape[0] // 2, shape[1] // 2, alpha:] = 1.0
    return seed
