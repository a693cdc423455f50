"""Dataset readers on small files written here in the official formats, and on the real
stand-ins in ../shared/datasets when present."""

import gzip
import io
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tritoncnn import data

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
rng = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("TRITONCNN_OFFLINE", "1")


def write_idx(path: Path, arr: np.ndarray, gz=True) -> None:
    code = {np.uint8: 0x08}[arr.dtype.type]
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes()
    raw = header + arr.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def idx_split(root: Path, prefix: str, n: int, gz=True):
    x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, n).astype(np.uint8)
    sfx = ".gz" if gz else ""
    write_idx(root / f"{prefix}-images-idx3-ubyte{sfx}", x, gz)
    write_idx(root / f"{prefix}-labels-idx1-ubyte{sfx}", y, gz)
    return x, y


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "kmnist"])
@pytest.mark.parametrize("gz", [True, False])
def test_idx_family(tmp_path, name, gz):
    x, y = idx_split(tmp_path, "t10k", 13, gz)
    xs, ys = data.load(name, tmp_path, "test")
    assert xs.shape == (13, 28, 28, 1) and xs.dtype == np.uint8
    assert np.array_equal(xs[..., 0], x) and np.array_equal(ys, y.astype(np.int64))


def test_idx_truncated_is_a_clear_error(tmp_path):
    idx_split(tmp_path, "train", 5)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:-100]))
    with pytest.raises(data.CorruptDatasetError, match="truncated"):
        data.load("mnist", tmp_path, "train")
    p.write_bytes(b"not gzip, not idx")
    with pytest.raises(data.CorruptDatasetError):
        data.load("mnist", tmp_path, "train")


def test_missing_files_offline_names_files_url_and_root(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as e:
        data.load("mnist", tmp_path / "nowhere", "train")
    msg = str(e.value)
    assert "train-images-idx3-ubyte.gz" in msg and "https://" in msg and "dataset.root" in msg


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="cifar10"):
        data.load("imagenet", "x", "train")


def _cifar_batch(n, label_key, with_coarse=False):
    d = {
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: list(rng.integers(0, 10, n)),
    }
    if with_coarse:
        d[b"coarse_labels"] = list(rng.integers(0, 20, n))
    return d


def _tar(path: Path, members: dict[str, dict]):
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in members.items():
            raw = pickle.dumps(obj)
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))


@pytest.mark.parametrize("as_dir", [False, True])
def test_cifar10_tarball_and_folder(tmp_path, as_dir):
    batches = {
        f"cifar-10-batches-py/data_batch_{i}": _cifar_batch(4, b"labels") for i in range(1, 6)
    }
    batches["cifar-10-batches-py/test_batch"] = _cifar_batch(20, b"labels")
    _tar(tmp_path / "cifar-10-python.tar.gz", batches)
    if as_dir:
        with tarfile.open(tmp_path / "cifar-10-python.tar.gz") as t:
            t.extractall(tmp_path, filter="data")
        (tmp_path / "cifar-10-python.tar.gz").unlink()
    x, y = data.load("cifar10", tmp_path, "test")
    ref = batches["cifar-10-batches-py/test_batch"]
    assert x.shape == (20, 32, 32, 3)
    # pixel (row 3, col 5) of channel 1 (green) sits at 1024 + 3*32 + 5 in the official rows
    assert x[7, 3, 5, 1] == ref[b"data"][7, 1024 + 3 * 32 + 5]
    assert np.array_equal(x, ref[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert np.array_equal(y, ref[b"labels"])
    xt, _ = data.load("cifar10", tmp_path, "train")
    assert len(xt) == 20


def test_cifar100_fine_and_coarse(tmp_path):
    train = _cifar_batch(6, b"fine_labels", with_coarse=True)
    _tar(
        tmp_path / "cifar-100-python.tar.gz",
        {"cifar-100-python/train": train, "cifar-100-python/test": train},
    )
    _, fine = data.load("cifar100", tmp_path, "train")
    _, coarse = data.load("cifar100", tmp_path, "train", labels="coarse")
    assert np.array_equal(fine, train[b"fine_labels"])
    assert np.array_equal(coarse, train[b"coarse_labels"])


def test_svhn_mat(tmp_path):
    from scipy.io import savemat

    x = rng.integers(0, 256, (32, 32, 3, 9), dtype=np.uint8)
    y = np.array([[10], [1], [2], [3], [4], [5], [6], [7], [10]], dtype=np.uint8)
    savemat(tmp_path / "test_32x32.mat", {"X": x, "y": y})
    xs, ys = data.load("svhn", tmp_path, "test")
    assert np.array_equal(xs, x.transpose(3, 0, 1, 2))
    assert ys.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 0]


def test_stl10_binary(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    img = rng.integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)  # N,H,W,C truth
    img.transpose(0, 3, 2, 1).tofile(folder / "test_X.bin")  # official column-major order
    np.array([1, 10, 5], dtype=np.uint8).tofile(folder / "test_y.bin")
    x, y = data.load("stl10", tmp_path, "test")
    assert np.array_equal(x, img) and y.tolist() == [0, 9, 4]


def test_flowers_folder(tmp_path):
    from PIL import Image
    from scipy.io import savemat

    (tmp_path / "jpg").mkdir()
    for i in range(1, 5):
        Image.fromarray(np.full((20, 30, 3), i * 40, np.uint8)).save(
            tmp_path / "jpg" / f"image_{i:05d}.jpg"
        )
    savemat(tmp_path / "imagelabels.mat", {"labels": np.array([[3, 1, 102, 7]])})
    savemat(
        tmp_path / "setid.mat",
        {"trnid": np.array([[2, 4]]), "valid": np.array([[1]]), "tstid": np.array([[3]])},
    )
    x, y = data.load("flowers102", tmp_path, "train", image_size=16)
    assert x.shape == (2, 16, 16, 3) and y.tolist() == [0, 6]
    assert abs(int(x[0].mean()) - 80) <= 2  # image 2 was filled with 80
    assert (tmp_path / "flowers102_train_16.npz").exists()  # cached after the first read
    x2, y2 = data.load("flowers102", tmp_path, "train", image_size=16)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)


def test_digits_and_synthetic():
    x, y = data.load("digits", split="train")
    xt, yt = data.load("digits", split="test")
    assert len(x) + len(xt) == 1797 and x.shape[1:] == (8, 8, 1) and x.max() == 255
    s, sy = data.load("synthetic", split="train", n_train=64, num_classes=5)
    s2, _ = data.load("synthetic", split="train", n_train=64, num_classes=5)
    assert s.shape == (64, 32, 32, 3) and np.array_equal(s, s2) and sy.max() < 5


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="../shared/datasets/mnist absent")
def test_real_mnist():
    x, y = data.load("mnist", SHARED / "mnist", "train")
    xt, yt = data.load("mnist", SHARED / "mnist", "test")
    assert x.shape == (60000, 28, 28, 1) and xt.shape == (10000, 28, 28, 1)
    assert np.bincount(y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(yt).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist not installed")
def test_real_fashion_mnist(tmp_path):
    x, y = data.load("fashion_mnist", tmp_path, "train")  # found in Debian's folder
    xt, yt = data.load("fashion_mnist", tmp_path, "test")
    assert len(x) == 60000 and len(xt) == 10000
    assert (np.bincount(y) == 6000).all() and (np.bincount(yt) == 1000).all()


@pytest.mark.skipif(
    not (SHARED / "cifar10_jpegq75.npz").exists(),
    reason="../shared/datasets/cifar10_jpegq75.npz absent",
)
def test_real_cifar10(tmp_path):
    tool = SHARED.parent / "tools" / "cifar10_from_npz.py"
    subprocess.run([sys.executable, str(tool), str(tmp_path)], check=True, capture_output=True)
    x, y = data.load("cifar10", tmp_path, "train")
    xt, yt = data.load("cifar10", tmp_path, "test")
    assert x.shape == (50000, 32, 32, 3) and xt.shape == (10000, 32, 32, 3)
    assert (np.bincount(y) == 5000).all() and (np.bincount(yt) == 1000).all()


def test_emnist_zip_variant_and_orientation(tmp_path):
    import zipfile

    x = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    y = np.array([1, 2, 26, 5], dtype=np.uint8)
    for arr, kind in ((x, "images-idx3"), (y, "labels-idx1")):
        write_idx(tmp_path / f"emnist-letters-test-{kind}-ubyte.gz", arr)
    with zipfile.ZipFile(tmp_path / "gzip.zip", "w") as z:
        for p in tmp_path.glob("emnist-*.gz"):
            z.write(p, f"gzip/{p.name}")
            p.unlink()
    xs, ys = data.load("emnist", tmp_path, "test", variant="letters")
    assert np.array_equal(xs[..., 0], x.transpose(0, 2, 1))  # stored transposed: made upright
    assert ys.tolist() == [0, 1, 25, 4]  # letters 1..26 -> 0..25
