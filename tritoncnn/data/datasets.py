"""The dataset catalogue: where each dataset's official files come from and how to read them.

``load(name, root, split)`` returns ``(images, labels)``: uint8 N,H,W,C and int64 N numpy
arrays, read from the official files under ``root`` (downloaded there when missing).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tritoncnn.data import formats
from tritoncnn.data.download import (
    CorruptDatasetError,
    DatasetNotFoundError,
    RemoteFile,
    ensure_files,
)


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and the loader need to know about a dataset."""

    name: str
    channels: int
    image_size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    splits: tuple[str, ...]
    reader: Callable = field(repr=False, compare=False)


def _mnist_family(name: str, base_url: str, md5s: dict[str, str], extra_dirs=()) -> Callable:
    stems = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }

    def read(root: Path, split: str, **_) -> tuple[np.ndarray, np.ndarray]:
        img, lab = stems[split]
        for d in [root, *map(Path, extra_dirs)]:  # e.g. Debian's dataset-fashion-mnist
            found = [_find(d, s) for s in (img, lab)]
            if all(found):
                return formats.read_idx_pair(*found)
        files = [RemoteFile(f"{s}.gz", base_url + f"{s}.gz", md5s.get(s)) for s in (img, lab)]
        root = ensure_files(name, root, files)
        return formats.read_idx_pair(root / files[0].filename, root / files[1].filename)

    return read


def _find(folder: Path, stem: str) -> Path | None:
    """The IDX file ``stem`` in folder, gzipped or not (either name spelling)."""
    for cand in (f"{stem}.gz", stem, stem.replace("-idx", ".idx")):
        if (folder / cand).exists():
            return folder / cand
    return None


_CIFAR10 = RemoteFile(
    "cifar-10-python.tar.gz",
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "c58f30108f718f92721af3b95e74349a",
)
_CIFAR100 = RemoteFile(
    "cifar-100-python.tar.gz",
    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    "eb9058c3a382ffc7106e4002c42a8d85",
)


def _cifar_source(name: str, root: Path, folder: str, archive: RemoteFile) -> Path:
    """The extracted folder if present, else the tarball (downloaded when missing)."""
    if (root / folder).is_dir():
        return root / folder
    return ensure_files(name, root, [archive]) / archive.filename


def _read_cifar10(root: Path, split: str, **_):
    src = _cifar_source("cifar10", root, "cifar-10-batches-py", _CIFAR10)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    return formats.read_cifar(src, names, b"labels")


def _read_cifar100(root: Path, split: str, labels: str = "fine", **_):
    if labels not in ("fine", "coarse"):
        raise ValueError(f"cifar100 labels must be 'fine' or 'coarse', got {labels!r}")
    src = _cifar_source("cifar100", root, "cifar-100-python", _CIFAR100)
    return formats.read_cifar(src, [split], f"{labels}_labels".encode())


_SVHN = {
    "train": ("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
    "test": ("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),
    "extra": ("extra_32x32.mat", "a93ce644f1a588dc4d68dda5feec44a7"),
}


def _read_svhn(root: Path, split: str, **_):
    fname, md5 = _SVHN[split]
    url = f"http://ufldl.stanford.edu/housenumbers/{fname}"
    root = ensure_files("svhn", root, [RemoteFile(fname, url, md5)])
    return formats.read_svhn_mat(root / fname)


_STL10 = RemoteFile(
    "stl10_binary.tar.gz",
    "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
    "91f7769df0f17e558f3565bffb0c7dfb",
)


def _read_stl10(root: Path, split: str, **_):
    folder = root / "stl10_binary"
    if not folder.is_dir():
        _extract(ensure_files("stl10", root, [_STL10]) / _STL10.filename, root)
    lab = None if split == "unlabeled" else folder / f"{split}_y.bin"
    return formats.read_stl10(folder / f"{split}_X.bin", lab)


_EMNIST = RemoteFile(
    "gzip.zip",
    "https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip",
    "58c8d27c78d21e728a6bc7b3cc06412e",
)
EMNIST_VARIANTS = ("byclass", "bymerge", "balanced", "letters", "digits", "mnist")


def _read_emnist(root: Path, split: str, variant: str = "balanced", **_):
    if variant not in EMNIST_VARIANTS:
        raise ValueError(f"emnist variant must be one of {EMNIST_VARIANTS}, got {variant!r}")
    folder = root / "gzip"
    stems = [f"emnist-{variant}-{split}-{k}" for k in ("images-idx3-ubyte", "labels-idx1-ubyte")]
    if not all(_find(folder, s) for s in stems):
        import zipfile

        archive = ensure_files("emnist", root, [_EMNIST]) / _EMNIST.filename
        try:
            with zipfile.ZipFile(archive) as z:
                z.extractall(root)
        except zipfile.BadZipFile as e:
            raise CorruptDatasetError(f"{archive}: {e}; delete it and download again") from None
    x, y = formats.read_idx_pair(_find(folder, stems[0]), _find(folder, stems[1]))
    if variant == "letters":
        y = y - 1  # letters are labelled 1..26
    # EMNIST stores images transposed relative to MNIST: flip them upright.
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3)), y


def _extract(archive: Path, dest: Path) -> None:
    import tarfile

    try:
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise CorruptDatasetError(f"{archive}: {e}; delete it and download again") from None


def _read_digits(root: Path, split: str, **_):
    """scikit-learn's 8x8 digits (no download); a fixed seeded 80/20 train/test split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    cut = int(round(0.8 * len(x)))
    idx = order[:cut] if split == "train" else order[cut:]
    return x[idx], y[idx]


def _read_synthetic(
    root: Path,
    split: str,
    num_classes: int = 10,
    image_size: int = 32,
    channels: int = 3,
    n_train: int = 2048,
    n_test: int = 512,
    **_,
):
    """Procedural images: one oriented grating + colour per class, with noise and random phase,
    so that small nets learn it in a few steps. Deterministic per split."""
    n = n_train if split == "train" else n_test
    rng = np.random.default_rng(1 if split == "train" else 2)
    y = rng.integers(0, num_classes, n)
    angle = np.pi * y / num_classes
    freq = 2 * np.pi * (2 + (y % 3)) / image_size
    phase = rng.uniform(0, 2 * np.pi, n)
    ii, jj = np.meshgrid(np.arange(image_size), np.arange(image_size), indexing="ij")
    proj = np.cos(angle)[:, None, None] * ii + np.sin(angle)[:, None, None] * jj
    wave = np.sin(freq[:, None, None] * proj + phase[:, None, None])
    tint = 0.5 + 0.5 * np.cos(2 * np.pi * (y[:, None] / num_classes + np.arange(channels) / 3))
    img = 0.5 + 0.35 * wave[..., None] * tint[:, None, None, :]
    img += rng.normal(0, 0.08, img.shape)
    return np.clip(img * 255, 0, 255).astype(np.uint8), y.astype(np.int64)


_FLOWERS = [
    RemoteFile(
        "102flowers.tgz",
        "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz",
        "52808999861908f626f3c1f4e79d11fa",
    ),
    RemoteFile(
        "imagelabels.mat",
        "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/imagelabels.mat",
        "e0620be6f572b9609742df49c70aed4d",
    ),
    RemoteFile(
        "setid.mat",
        "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/setid.mat",
        "a5357ecc9cb78c4bef273ce3793fc85c",
    ),
]


def _read_flowers102(root: Path, split: str, image_size: int = 64, **_):
    """jpg/image_%05d.jpg + imagelabels.mat (1..102) + setid.mat (trnid/valid/tstid, 1-based),
    resized to image_size and cached as uint8 arrays after the first read."""
    from scipy.io import loadmat

    cache = root / f"flowers102_{split}_{image_size}.npz"
    if cache.exists():
        with np.load(cache) as z:
            return z["x"], z["y"]
    if not (root / "jpg").is_dir() or not (root / "setid.mat").exists():
        ensure_files("flowers102", root, _FLOWERS)
        if not (root / "jpg").is_dir():
            _extract(root / "102flowers.tgz", root)
    labels = loadmat(root / "imagelabels.mat")["labels"].reshape(-1).astype(np.int64) - 1
    key = {"train": "trnid", "val": "valid", "test": "tstid"}[split]
    ids = loadmat(root / "setid.mat")[key].reshape(-1).astype(np.int64)
    x = np.stack(
        [formats.read_image_resized(root / "jpg" / f"image_{i:05d}.jpg", image_size) for i in ids]
    )
    y = labels[ids - 1]
    _save_cache(cache, x, y)
    return x, y


_CALTECH = RemoteFile(
    "caltech-101.zip",
    "https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip",
    None,  # the inner 101_ObjectCategories.tar.gz is checked instead (published md5)
)
_CALTECH_INNER_MD5 = "b224c7392d521a49829488ab0f1120d9"


def _read_caltech101(root: Path, split: str, image_size: int = 64, **_):
    """101_ObjectCategories/<class>/*.jpg (BACKGROUND_Google left out), resized and cached.
    There is no official split: a fixed seeded 80/20 split per class."""
    cache = root / f"caltech101_{split}_{image_size}.npz"
    if cache.exists():
        with np.load(cache) as z:
            return z["x"], z["y"]
    folder = root / "101_ObjectCategories"
    if not folder.is_dir():
        _fetch_caltech(root)
    classes = sorted(
        p.name for p in folder.iterdir() if p.is_dir() and p.name != "BACKGROUND_Google"
    )
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for label, cls in enumerate(classes):
        files = sorted((folder / cls).glob("*.jpg"))
        order = rng.permutation(len(files))
        cut = int(round(0.8 * len(files)))
        pick = order[:cut] if split == "train" else order[cut:]
        xs += [formats.read_image_resized(files[i], image_size) for i in sorted(pick)]
        ys += [label] * len(pick)
    x, y = np.stack(xs), np.asarray(ys, dtype=np.int64)
    _save_cache(cache, x, y)
    return x, y


def _fetch_caltech(root: Path) -> None:
    import zipfile

    from tritoncnn.data.download import md5sum

    archive = ensure_files("caltech101", root, [_CALTECH]) / _CALTECH.filename
    with zipfile.ZipFile(archive) as z:
        z.extractall(root)
    inner = next(root.rglob("101_ObjectCategories.tar.gz"))
    if md5sum(inner) != _CALTECH_INNER_MD5:
        raise CorruptDatasetError(f"{inner}: md5 differs from the published one")
    _extract(inner, root)


def _save_cache(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, x=x, y=y)
    os.replace(tmp, path)


_MNIST_MD5 = {
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}
_FASHION_MD5 = {
    "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
}
_KMNIST_MD5 = {
    "train-images-idx3-ubyte": "bdb82020997e1d708af4cf47b453dcf7",
    "train-labels-idx1-ubyte": "e144d726b3acfaa3e44228e80efcd344",
    "t10k-images-idx3-ubyte": "5c965bf0a639b31b8f53240b1b52f4d7",
    "t10k-labels-idx1-ubyte": "7320c461ea6c1c855c0b718fb2a4b134",
}

_GRAY = ((0.5,), (0.5,))
DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in [
        DatasetInfo(
            "cifar10",
            3,
            32,
            10,
            (0.4914, 0.4822, 0.4465),
            (0.2470, 0.2435, 0.2616),
            ("train", "test"),
            _read_cifar10,
        ),
        DatasetInfo(
            "cifar100",
            3,
            32,
            100,
            (0.5071, 0.4865, 0.4409),
            (0.2673, 0.2564, 0.2762),
            ("train", "test"),
            _read_cifar100,
        ),
        DatasetInfo(
            "mnist",
            1,
            28,
            10,
            (0.1307,),
            (0.3081,),
            ("train", "test"),
            _mnist_family("mnist", "https://ossci-datasets.s3.amazonaws.com/mnist/", _MNIST_MD5),
        ),
        DatasetInfo(
            "fashion_mnist",
            1,
            28,
            10,
            (0.2860,),
            (0.3530,),
            ("train", "test"),
            _mnist_family(
                "fashion_mnist",
                "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                _FASHION_MD5,
                extra_dirs=("/usr/share/datasets/fashion-mnist",),
            ),
        ),
        DatasetInfo(
            "kmnist",
            1,
            28,
            10,
            (0.1918,),
            (0.3483,),
            ("train", "test"),
            _mnist_family("kmnist", "http://codh.rois.ac.jp/kmnist/dataset/kmnist/", _KMNIST_MD5),
        ),
        DatasetInfo("emnist", 1, 28, 47, (0.1751,), (0.3332,), ("train", "test"), _read_emnist),
        DatasetInfo(
            "svhn",
            3,
            32,
            10,
            (0.4377, 0.4438, 0.4728),
            (0.1980, 0.2010, 0.1970),
            ("train", "test", "extra"),
            _read_svhn,
        ),
        DatasetInfo(
            "stl10",
            3,
            96,
            10,
            (0.4467, 0.4398, 0.4066),
            (0.2603, 0.2566, 0.2713),
            ("train", "test", "unlabeled"),
            _read_stl10,
        ),
        DatasetInfo("digits", 1, 8, 10, (0.3,), (0.4,), ("train", "test"), _read_digits),
        DatasetInfo(
            "synthetic",
            3,
            32,
            10,
            (0.5, 0.5, 0.5),
            (0.25, 0.25, 0.25),
            ("train", "test"),
            _read_synthetic,
        ),
        DatasetInfo(
            "flowers102",
            3,
            64,
            102,
            (0.4330, 0.3819, 0.2964),
            (0.2587, 0.2093, 0.2210),
            ("train", "val", "test"),
            _read_flowers102,
        ),
        DatasetInfo(
            "caltech101",
            3,
            64,
            101,
            (0.5418, 0.5251, 0.4934),
            (0.3117, 0.3071, 0.3194),
            ("train", "test"),
            _read_caltech101,
        ),
    ]
}


def names() -> list[str]:
    return sorted(DATASETS)


def info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(names())}")
    return DATASETS[name]


def load(name: str, root: str | os.PathLike = "data", split: str = "train", **kw):
    """Images (uint8 N,H,W,C) and labels (int64 N) of one split, from the official files."""
    spec = info(name)
    if split not in spec.splits:
        raise ValueError(f"{name} has splits {spec.splits}, not {split!r}")
    x, y = spec.reader(Path(root).expanduser(), split, **kw)
    assert x.dtype == np.uint8 and x.ndim == 4 and len(x) == len(y), (x.shape, y.shape)
    return x, y


__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DatasetNotFoundError",
    "CorruptDatasetError",
    "info",
    "load",
    "names",
]
