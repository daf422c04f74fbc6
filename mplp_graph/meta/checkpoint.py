"""Checkpoints: arrays in an ``.npz`` (no pickle) plus a JSON manifest, written atomically
(temporary file, then ``os.replace``); the last ``keep`` are kept."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from mplp_graph.errors import MplpGraphError

FORMAT_VERSION = 1


def _flatten(tree: Any) -> dict[str, np.ndarray]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def save_checkpoint(directory: str | Path, step: int, trees: dict[str, Any], meta: dict[str, Any], keep: int = 3) -> Path:
    """Write ``ckpt_{step:08d}.npz`` (one array per leaf of each tree) and its manifest."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {f"{name}{key}": arr for name, tree in trees.items() for key, arr in _flatten(tree).items()}
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path = directory / f"ckpt_{step:08d}.npz"
    atomic_write_bytes(path, buf.getvalue())
    manifest = {"format_version": FORMAT_VERSION, "step": step, "trees": sorted(trees), **meta}
    atomic_write_json(directory / f"ckpt_{step:08d}.json", manifest)  # the manifest marks it complete
    ckpts = sorted(directory.glob("ckpt_*.json"))
    for old in ckpts[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
        old.with_suffix(".npz").unlink(missing_ok=True)
    return path


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint (one whose manifest exists), or None."""
    manifests = sorted(Path(directory).glob("ckpt_*.json"))
    return manifests[-1].with_suffix(".npz") if manifests else None


def load_checkpoint(path: str | Path, templates: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore trees shaped like ``templates`` from ``path``; returns ``(trees, manifest)``."""
    path = Path(path)
    manifest = json.loads(path.with_suffix(".json").read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise MplpGraphError(f"{path}: checkpoint format {manifest.get('format_version')} is not {FORMAT_VERSION}")
    with np.load(path, allow_pickle=False) as data:
        out = {}
        for name, template in templates.items():
            leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
            restored = []
            for p, leaf in leaves:
                key = f"{name}{jax.tree_util.keystr(p)}"
                if key not in data:
                    raise MplpGraphError(f"{path}: checkpoint has no array {key!r}; it was written for a different graph or config")
                arr = data[key]
                if arr.shape != np.shape(leaf):
                    raise MplpGraphError(f"{path}: array {key!r} has shape {arr.shape}, expected {np.shape(leaf)}")
                restored.append(arr)
            out[name] = jax.tree_util.tree_unflatten(treedef, restored)
    return out, manifest
