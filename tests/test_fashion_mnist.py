"""Fashion-MNIST as the MNIST family's data set (task.dataset: fashion): the loader's sources,
its own standardization, the missing-data message, and the config key's checks."""

import dataclasses
import gzip
from pathlib import Path

import numpy as np
import pytest

from mplp_graph.tasks import mnist
from mplp_graph.tasks.mnist import DATASETS, DataError, MnistFamily, load_fashion_mnist, load_images

SYSTEM_FOLDER = Path(DATASETS["fashion"].folders[0])


def _idx(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_fake(folder: Path, train_value: int, test_value: int) -> dict[str, np.ndarray]:
    """The four gzipped IDX files with constant images (``train_value`` on the first half of the
    training set, 0 on the rest; ``test_value`` on the test set) and labels ``i % 10``."""
    train = np.zeros((60_000, 28, 28), np.uint8)
    train[:30_000] = train_value
    arrays = {
        "train-images-idx3-ubyte": train,
        "train-labels-idx1-ubyte": np.arange(60_000) % 10,
        "t10k-images-idx3-ubyte": np.full((10_000, 28, 28), test_value, np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(10_000) + 3) % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        (folder / f"{name}.gz").write_bytes(gzip.compress(_idx(arr), compresslevel=1))
    return arrays


def test_env_var_folder_shapes_labels_and_own_statistics(tmp_path, monkeypatch):
    fake = _write_fake(tmp_path / "fashion", train_value=204, test_value=51)
    monkeypatch.setenv("MPLP_FASHION_MNIST", str(tmp_path / "fashion"))
    monkeypatch.setenv("MPLP_MNIST", str(tmp_path / "no-mnist-here"))  # Fashion-MNIST never reads MNIST's source
    raw = load_fashion_mnist()
    assert raw["train_images"].shape == (60_000, 28, 28) and raw["test_labels"].shape == (10_000,)
    np.testing.assert_array_equal(raw["test_labels"], fake["t10k-labels-idx1-ubyte"])

    data = MnistFamily(dataset="fashion", validation=5000).load()
    assert data["train_x"].shape == (55_000, 144) and data["val_x"].shape == (5_000, 144) and data["test_x"].shape == (10_000, 144)
    np.testing.assert_array_equal(np.argmax(np.asarray(data["test_y"]), -1), fake["t10k-labels-idx1-ubyte"])
    np.testing.assert_array_equal(np.argmax(np.asarray(data["val_y"]), -1), fake["train-labels-idx1-ubyte"][55_000:])
    # constant images stay constant through the resize: the training pixels are 0.8 on half the
    # images and 0 on the others, so this data set's own mean is 0.4 and its std 0.4
    test_pixel = float(np.asarray(data["test_x"])[0, 0])
    assert test_pixel == pytest.approx((0.2 - 0.4) / 0.4, abs=1e-5)
    assert float(np.asarray(data["train_x"])[0, 0]) == pytest.approx(1.0, abs=1e-5)
    assert float(np.asarray(data["train_x"])[-1, 0]) == pytest.approx(-1.0, abs=1e-5)


def test_path_argument_and_npz(tmp_path):
    fake = _write_fake(tmp_path / "idx", train_value=10, test_value=20)
    assert load_images("fashion", tmp_path / "idx")["train_labels"][:3].tolist() == [0, 1, 2]
    np.savez(tmp_path / "fashion-mnist.npz", x_train=fake["train-images-idx3-ubyte"], y_train=fake["train-labels-idx1-ubyte"],
             x_test=fake["t10k-images-idx3-ubyte"], y_test=fake["t10k-labels-idx1-ubyte"])
    d = load_fashion_mnist(tmp_path)  # a folder with the npz
    assert d["test_images"].shape == (10_000, 28, 28) and int(d["test_images"][0, 0, 0]) == 20


def test_missing_data_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("MPLP_FASHION_MNIST", raising=False)
    monkeypatch.setitem(DATASETS, "fashion", dataclasses.replace(DATASETS["fashion"], folders=(str(tmp_path / "absent"),)))
    with pytest.raises(DataError, match=r"Fashion-MNIST was not found: install the Debian package dataset-fashion-mnist "
                                        r"\(apt-get install dataset-fashion-mnist.*point MPLP_FASHION_MNIST"):
        MnistFamily(dataset="fashion").load()
    monkeypatch.setenv("MPLP_FASHION_MNIST", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"nowhere does not exist \(MPLP_FASHION_MNIST\); install the Debian package"):
        load_fashion_mnist()
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(np.zeros((1, 28, 28)))))
    with pytest.raises(DataError, match=r"no train-labels-idx1-ubyte or train-labels-idx1-ubyte.gz; install the Debian package"):
        load_fashion_mnist(tmp_path / "partial")
    with pytest.raises(DataError, match=r"unknown data set 'fashon'; known: mnist, fashion"):
        load_images("fashon")


def _config(tmp_path: Path, task: str) -> Path:
    path = tmp_path / "fashion.yaml"
    path.write_text(f"experiment: fashion\ngraph: {{sizes: [144, 10], activation: sigmoid, loss: ce}}\ntask:\n{task}\n")
    return path


def test_bad_dataset_is_a_located_config_error(tmp_path, capsys):
    from mplp_graph.cli import main

    config = _config(tmp_path, "  family: mnist\n  dataset: fashon")
    assert main(["train", str(config), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{config}:5:3 task.dataset: expected one of 'mnist' or 'fashion', got 'fashon'" in err, err
    config = _config(tmp_path, "  family: sinusoid\n  dataset: fashion")
    assert main(["train", str(config), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "task: dataset 'fashion' applies to family 'mnist' only" in err and "remove dataset or set family: mnist" in err, err
    assert not (tmp_path / "run").exists()


def test_family_gets_the_dataset_from_the_config():
    from mplp_graph.meta.config import TaskConfig
    from mplp_graph.meta.run import make_family

    assert make_family(TaskConfig(family="mnist", dataset="fashion")).dataset == "fashion"
    assert make_family(TaskConfig(family="mnist")).dataset == "mnist"  # old configs unchanged


@pytest.mark.skipif(not SYSTEM_FOLDER.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_packaged_fashion_mnist(monkeypatch):
    monkeypatch.delenv("MPLP_FASHION_MNIST", raising=False)
    d = load_fashion_mnist()
    assert d["train_labels"][:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # the published order (ankle boot, T-shirt, ...)
    p = mnist.preprocess(d, size=12)
    # its own statistics after the 12 x 12 resize, not MNIST's 0.1300 / 0.2903
    assert float(p["mean"]) == pytest.approx(0.2882, abs=5e-4) and float(p["std"]) == pytest.approx(0.3393, abs=5e-4)


def test_fashion_experiment_configs_differ_only_in_the_dataset():
    from mplp_graph.meta.config import load_experiment_config

    root = Path(__file__).resolve().parents[1] / "experiments"
    fashion = load_experiment_config(root / "fashion" / "config.yaml").to_json()
    mnist_tuned = load_experiment_config(root / "fashion" / "mnist.yaml").to_json()
    trained = load_experiment_config(root / "mnist" / "config.yaml").to_json()
    assert fashion["task"].pop("dataset") == "fashion" and mnist_tuned["task"].pop("dataset") == "mnist"
    assert {k: v for k, v in fashion.items() if k != "experiment"} == {k: v for k, v in mnist_tuned.items() if k != "experiment"}
    # the graph and tasks the MNIST learners were trained with; cv_points (8 for experiments/mnist/learner.npz,
    # 128 in the config now) sizes the meta-training CV set only, the evaluation's tasks do not use it
    same = lambda task: {k: v for k, v in task.items() if k not in ("dataset", "cv_points")}  # noqa: E731
    assert fashion["graph"] == trained["graph"] and same(fashion["task"]) == same(trained["task"])
    assert fashion["eval"]["tune"] and fashion["eval"]["split"] == "test"
