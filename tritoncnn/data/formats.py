"""Parsers of the official file formats. Each returns numpy arrays: images uint8 N,H,W,C and
labels int64 N, and raises CorruptDatasetError on truncated or malformed input."""

from __future__ import annotations

import gzip
import pickle
import tarfile
from pathlib import Path

import numpy as np

from tritoncnn.data.download import CorruptDatasetError

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _open_maybe_gzip(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        if head == b"\x1f\x8b":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        msg = f"{path}: cannot read ({e}); delete it and download again"
        raise CorruptDatasetError(msg) from None


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST family), gzipped or not: magic 0x0000TTDD, DD big-endian dims."""
    raw = _open_maybe_gzip(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise CorruptDatasetError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    start = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - start != expected:
        raise CorruptDatasetError(
            f"{path}: truncated or corrupt IDX file ({len(raw) - start} data bytes, header "
            f"says {expected}); delete it and download again"
        )
    return np.frombuffer(raw, dtype=dtype, offset=start).reshape(tuple(dims))


def read_idx_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise CorruptDatasetError(f"{images} / {labels}: {x.shape} images vs {y.shape} labels")
    return np.ascontiguousarray(x[..., None].astype(np.uint8)), y.astype(np.int64)


def _cifar_members(source: Path, names: list[str]) -> list[dict]:
    """Unpickle the named batches from an extracted folder or straight from the .tar.gz."""
    out = []
    try:
        if source.is_dir():
            for n in names:
                with open(source / n, "rb") as f:
                    out.append(pickle.load(f, encoding="bytes"))
        else:
            with tarfile.open(source, "r:gz") as tar:
                by_base = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
                for n in names:
                    if n not in by_base:
                        raise CorruptDatasetError(f"{source}: member {n} missing")
                    out.append(pickle.load(tar.extractfile(by_base[n]), encoding="bytes"))
    except (OSError, EOFError, pickle.UnpicklingError, tarfile.TarError, KeyError) as e:
        raise CorruptDatasetError(f"{source}: cannot read CIFAR batches ({e})") from None
    return out


def read_cifar(source: Path, names: list[str], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR python batches: data N x 3072 uint8 (R, G, B planes of 32x32), labels list."""
    xs, ys = [], []
    for batch in _cifar_members(source, names):
        if b"data" not in batch or label_key not in batch:
            raise CorruptDatasetError(f"{source}: batch lacks 'data' or {label_key!r}")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise CorruptDatasetError(f"{source}: CIFAR data has shape {data.shape}")
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(np.asarray(batch[label_key], dtype=np.int64))
    return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)


def read_cifar_meta(source: Path, meta: str, key: bytes) -> list[str]:
    (m,) = _cifar_members(source, [meta])
    return [s.decode() for s in m[key]]


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """SVHN cropped digits .mat: X is 32x32x3xN, y is Nx1 with 10 meaning digit 0."""
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
        x, y = mat["X"], mat["y"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptDatasetError(f"{path}: not a readable SVHN .mat file ({e})") from None
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.size:
        raise CorruptDatasetError(f"{path}: X {x.shape} / y {y.shape} are not SVHN's layout")
    labels = y.reshape(-1).astype(np.int64)
    labels[labels == 10] = 0
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2).astype(np.uint8)), labels


def read_stl10(images: Path, labels: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """STL-10 binary: uint8 N x 3 x 96 x 96 in column-major (C, W, H) order; labels 1..10."""
    raw = np.fromfile(images, dtype=np.uint8)
    if raw.size % (3 * 96 * 96):
        raise CorruptDatasetError(f"{images}: {raw.size} bytes is not a whole number of images")
    x = raw.reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1)
    if labels is None:
        y = np.full(len(x), -1, dtype=np.int64)
    else:
        y = np.fromfile(labels, dtype=np.uint8).astype(np.int64) - 1
        if len(y) != len(x) or y.min(initial=0) < 0 or y.max(initial=0) > 9:
            raise CorruptDatasetError(f"{labels}: {len(y)} labels for {len(x)} images")
    return np.ascontiguousarray(x), y


def read_image_resized(path: Path, size: int) -> np.ndarray:
    """One JPEG/PNG as RGB uint8 size x size (bilinear resize of the whole image)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except OSError as e:
        raise CorruptDatasetError(f"{path}: cannot decode image ({e})") from None
