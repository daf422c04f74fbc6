"""MNIST loading and preprocessing (offline sources, TF-compatible resize)."""

import gzip
import importlib.util

import numpy as np
import pytest

from mplp_graph.tasks.mnist import DataError, load_mnist, preprocess, resize_bilinear


def _idx(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _fake(n_train=60_000, n_test=10_000):
    rng = np.random.default_rng(0)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }


def test_idx_files_plain_and_gzipped(tmp_path):
    fake = _fake()
    for k, (name, arr) in enumerate(fake.items()):
        data = _idx(arr)
        if k % 2:
            (tmp_path / f"{name}.gz").write_bytes(gzip.compress(data, compresslevel=1))
        else:
            (tmp_path / name).write_bytes(data)
    d = load_mnist(tmp_path)
    np.testing.assert_array_equal(d["test_labels"], fake["t10k-labels-idx1-ubyte"])
    np.testing.assert_array_equal(d["train_images"][5], fake["train-images-idx3-ubyte"][5])


def test_npz_and_env_var(tmp_path, monkeypatch):
    fake = _fake()
    np.savez(tmp_path / "mnist.npz", x_train=fake["train-images-idx3-ubyte"].astype(np.uint8), y_train=fake["train-labels-idx1-ubyte"],
             x_test=fake["t10k-images-idx3-ubyte"].astype(np.uint8), y_test=fake["t10k-labels-idx1-ubyte"])
    monkeypatch.setenv("MPLP_MNIST", str(tmp_path))
    assert load_mnist()["train_images"].shape == (60_000, 28, 28)


def test_bad_content_and_missing_files_are_clear(tmp_path):
    fake = _fake(n_train=100)
    for name, arr in fake.items():
        (tmp_path / name).write_bytes(_idx(arr))
    with pytest.raises(DataError, match=r"train images have shape \(100, 28, 28\), expected \(60000, 28, 28\)"):
        load_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"no t10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte.gz; install the optional extra"):
        load_mnist(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_mnist(tmp_path / "nowhere")
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="bad magic number"):
        from mplp_graph.tasks.mnist import _read_idx

        _read_idx(tmp_path / "train-labels-idx1-ubyte")


def test_resize_half_pixel_centres_no_antialias():
    x = np.arange(16, dtype=np.float64).reshape(1, 4, 4)
    # 4 -> 2: output centres map to source 0.5 and 2.5, the mean of two neighbours per axis
    np.testing.assert_allclose(resize_bilinear(x, 2)[0], [[2.5, 4.5], [10.5, 12.5]])
    # 2 -> 4 (upsampling): source positions -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped at the edge)
    y = resize_bilinear(np.array([[[0.0, 1.0], [2.0, 3.0]]]), 4)[0]
    np.testing.assert_allclose(y[0], [0.0, 0.25, 0.75, 1.0])


@pytest.mark.skipif(importlib.util.find_spec("pureml") is None, reason="optional extra 'mnist' not installed")
def test_packaged_mnist_and_reference_statistics():
    d = load_mnist()
    assert list(d["train_labels"][:10]) == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the original order
    small = {k: v for k, v in d.items()}
    p = preprocess(small, size=12)
    # the training pixels' mean / std after the 12x12 resize (bilinear, no antialiasing, like the
    # TF default the authors' mplp_MNIST.ipynb uses) are about 0.1300 / 0.2903
    assert float(p["mean"]) == pytest.approx(0.1300, abs=5e-4) and float(p["std"]) == pytest.approx(0.2903, abs=5e-4)
    assert p["train_x"].shape == (60_000, 144) and p["test_y"].shape == (10_000, 10)
    assert abs(float(p["train_x"].mean())) < 1e-4
