"""Checkpoints: arrays in an ``.npz`` (no pickle, written or read) plus a JSON manifest.

A checkpoint of step ``s`` is two files in the run directory::

    ckpt_{s:08d}.npz    one array per leaf of each tree ("params['W0.learn']['net']['w1']",
                        "opt_state[0].mu"); the learner parameters include the standardizer
                        statistics (``norm``), the optimizer state Adam's moments over the
                        raveled parameters (checkpoints written before that hold one moment
                        array per parameter leaf; ``train.restore_train_state`` reads both)
    ckpt_{s:08d}.json   the manifest (format version 2):
        format_version  2
        step            meta-steps done
        trees           names of the trees in the .npz
        arrays          {array name: [shape, dtype]}
        npz_sha256      checksum of the .npz file (a damaged file is refused, not half-read)
        graph           {"name", "hash"}: sha256 of the graph spec's canonical JSON (:func:`graph_hash`)
        rng_key         the run's base PRNG key (step s draws ``fold_in(key, s)``)
        config          the caller's settings (experiment config, training options)
        written_by      library versions

Both files are written to a temporary file, flushed to disk and renamed (``os.replace``), the
``.npz`` first: a manifest exists only for a complete checkpoint, so a run killed at any moment
leaves the previous checkpoint intact. The last ``keep`` checkpoints are kept.

Version 1 checkpoints (no graph hash, key or checksum) are still read; their arrays are checked
against the templates' names, shapes and dtypes.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mplp_graph.errors import MplpGraphError

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
PREFIX = "ckpt_"


class CheckpointError(MplpGraphError):
    """A checkpoint cannot be used: unreadable, damaged, or written for another graph, key or version."""


# ---------------------------------------------------------------------------------------------
# atomic files


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (the directory entry), where the platform allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; use the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


# ---------------------------------------------------------------------------------------------
# identity of what a checkpoint belongs to


def graph_hash(spec: Any) -> str:
    """sha256 of the spec's canonical JSON: YAML key names, keys sorted, defaults left out (so
    that a new optional IR field with a default does not change the hash of existing graphs)."""
    data = spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def key_data(key: Any) -> list[int] | None:
    """The PRNG key as a list of integers (old-style ``uint32[2]`` keys and typed keys alike)."""
    if key is None:
        return None
    if hasattr(key, "dtype") and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return [int(x) for x in np.asarray(key).ravel()]


def _flatten(tree: Any) -> dict[str, np.ndarray]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def _versions() -> dict[str, str]:
    try:
        ours = importlib.metadata.version("mplp_graph")
    except importlib.metadata.PackageNotFoundError:
        ours = "unknown"
    return {"mplp_graph": ours, "jax": jax.__version__, "numpy": np.__version__}


# ---------------------------------------------------------------------------------------------
# save / find / load


def save_checkpoint(
    directory: str | Path,
    step: int,
    trees: dict[str, Any],
    meta: dict[str, Any],
    keep: int = 3,
    *,
    graph: Any = None,
    rng_key: Any = None,
) -> Path:
    """Write ``ckpt_{step:08d}.npz`` (one array per leaf of each tree) and its manifest; keep
    the newest ``keep`` checkpoints. ``meta``: JSON-able settings, stored as the manifest's
    ``config``. ``graph``: the graph spec (its name and :func:`graph_hash` are recorded);
    ``rng_key``: the run's base key. Returns the ``.npz`` path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {f"{name}{key}": arr for name, tree in trees.items() for key, arr in _flatten(tree).items()}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    path = directory / f"{PREFIX}{step:08d}.npz"
    atomic_write_bytes(path, data)
    manifest = {
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "trees": sorted(trees),
        "arrays": {k: [list(v.shape), str(v.dtype)] for k, v in arrays.items()},
        "npz_sha256": hashlib.sha256(data).hexdigest(),
        "graph": None if graph is None else {"name": graph.name, "hash": graph_hash(graph)},
        "rng_key": key_data(rng_key),
        "config": meta,
        "written_by": _versions(),
    }
    atomic_write_json(path.with_suffix(".json"), manifest)  # the manifest marks it complete
    _prune(directory, keep)
    return path


def _prune(directory: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints, and what killed writers left behind."""
    manifests = sorted(directory.glob(f"{PREFIX}*.json"))
    for old in manifests[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)  # the manifest first: an .npz alone is never loaded
        old.with_suffix(".npz").unlink(missing_ok=True)
    newest = manifests[-1].stem if manifests else ""
    for npz in directory.glob(f"{PREFIX}*.npz"):
        if npz.stem < newest and not npz.with_suffix(".json").exists():
            npz.unlink(missing_ok=True)  # an .npz whose manifest was never written
    for tmp in directory.glob(f".{PREFIX}*"):  # temporary files of a writer killed mid-write
        tmp.unlink(missing_ok=True)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint (manifest and arrays both present), or None."""
    for manifest in sorted(Path(directory).glob(f"{PREFIX}*.json"), reverse=True):
        if manifest.with_suffix(".npz").exists():
            return manifest.with_suffix(".npz")
    return None


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of the checkpoint ``path`` (``.npz`` or ``.json``), its version checked."""
    path = Path(path).with_suffix(".json")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint manifest ({e}); delete this checkpoint's .json and .npz to resume from the one before") from None
    if not isinstance(manifest, dict) or "step" not in manifest:
        raise CheckpointError(f"{path}: not a checkpoint manifest (expected a JSON object with 'format_version' and 'step')")
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS:
        newer = " It was written by a newer mplp_graph; update mplp_graph to read it." if isinstance(version, int) and version > FORMAT_VERSION else ""
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r}, but this mplp_graph reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}.{newer} Or start a new run directory."
        )
    return manifest


def _check_identity(path: Path, manifest: dict[str, Any], graph: Any, rng_key: Any) -> None:
    stored = manifest.get("graph")
    if graph is not None and stored is not None and stored.get("hash") != graph_hash(graph):
        raise CheckpointError(
            f"{path}: written for another graph: expected graph {graph.name!r} with hash {graph_hash(graph)[:16]}, "
            f"found graph {stored.get('name')!r} with hash {str(stored.get('hash'))[:16]}. Resume with the graph it was "
            "trained with, or start a new run directory."
        )
    stored_key = manifest.get("rng_key")
    if rng_key is not None and stored_key is not None and stored_key != key_data(rng_key):
        raise CheckpointError(
            f"{path}: written by a run with PRNG key {stored_key}, but this run's key is {key_data(rng_key)} (another "
            "seed): resuming would not continue that run. Use its seed, or start a new run directory."
        )


def load_checkpoint(
    path: str | Path, templates: dict[str, Any], *, graph: Any = None, rng_key: Any = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore trees shaped like ``templates`` from ``path``; returns ``(trees, manifest)``.

    Raises :class:`CheckpointError` (naming the file, what was expected and what was found) for
    an unreadable or damaged file, a format version it cannot read, arrays that do not match the
    templates, or (when ``graph`` / ``rng_key`` are given and the checkpoint records them) a
    checkpoint of another graph or another key. Never unpickles anything."""
    path = Path(path)
    manifest = read_manifest(path)
    _check_identity(path, manifest, graph, rng_key)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint's arrays ({e})") from None
    digest = manifest.get("npz_sha256")
    if digest is not None and hashlib.sha256(raw).hexdigest() != digest:
        raise CheckpointError(
            f"{path}: the file is damaged: its sha256 is {hashlib.sha256(raw).hexdigest()[:16]}, the manifest expects "
            f"{digest[:16]}. Delete this checkpoint's .json and .npz to resume from the one before."
        )
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as data:
            stored = {k: data[k] for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable .npz of plain arrays ({e})") from None
    out, expected = {}, set()
    for name, template in templates.items():
        leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
        restored = []
        for p, leaf in leaves:
            key = f"{name}{jax.tree_util.keystr(p)}"
            expected.add(key)
            if key not in stored:
                raise CheckpointError(f"{path}: expected an array {key!r}, found none; the checkpoint was written for a different graph or config")
            arr, want = stored[key], np.asarray(leaf)
            if arr.shape != want.shape or arr.dtype != want.dtype:
                raise CheckpointError(
                    f"{path}: array {key!r}: expected {want.dtype}{list(want.shape)}, found {arr.dtype}{list(arr.shape)}; "
                    "the checkpoint was written for a different graph or config"
                )
            restored.append(arr)
        out[name] = jax.tree_util.tree_unflatten(treedef, restored)
    extra = sorted(k for k in stored if k.split("[", 1)[0] in templates and k not in expected)
    if extra:
        raise CheckpointError(
            f"{path}: found arrays this run does not have: {', '.join(extra[:3])}{'...' if len(extra) > 3 else ''}; "
            "the checkpoint was written for a different graph or config"
        )
    return out, manifest


def save_params_file(path: str | Path, params: Any) -> None:
    """Learner parameters alone (no optimizer state), as an ``.npz`` written atomically."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    buf = io.BytesIO()
    np.savez(buf, **{jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves})
    atomic_write_bytes(Path(path), buf.getvalue())


def load_params_like(template: Any, path: str | Path, *, stacked: bool = False) -> Any:
    """The tree of ``template``'s structure saved in ``path`` by :func:`save_params_file`; each
    array must have its leaf's shape, or ``(runs, *shape)`` when ``stacked`` (a sweep's runs)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    with np.load(path, allow_pickle=False) as data:
        out = []
        for p, v in leaves:
            key = jax.tree_util.keystr(p)
            if key not in data or (data[key].shape[1:] if stacked else data[key].shape) != v.shape:
                want = f"(runs, *{v.shape})" if stacked else str(v.shape)
                raise ValueError(f"{path}: no array {key} of shape {want}; the file was saved for another graph")
            out.append(jnp.asarray(data[key]))
    return jax.tree_util.tree_unflatten(treedef, out)
