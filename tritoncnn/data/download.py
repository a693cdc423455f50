"""Fetching official dataset files: download with a progress bar and an md5 check, or one
clear error naming the files, their URLs and ``dataset.root`` when offline."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not under root and could not be downloaded."""


class CorruptDatasetError(ValueError):
    """A dataset file exists but is truncated, corrupt or not in the official format."""


@dataclass(frozen=True)
class RemoteFile:
    """One official file: where it is published and its published md5."""

    filename: str
    url: str
    md5: str | None


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _download(url: str, dest: Path, md5: str | None, timeout: float) -> None:
    """Stream url into dest atomically (temp file + rename) and check its md5."""
    from tqdm import tqdm

    tmp = dest.with_name(dest.name + ".part")
    req = urllib.request.Request(url, headers={"User-Agent": "tritoncnn"})
    with urllib.request.urlopen(req, timeout=timeout) as r, open(tmp, "wb") as f:
        total = int(r.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
            while block := r.read(1 << 20):
                f.write(block)
                bar.update(len(block))
    if md5 is not None and (got := md5sum(tmp)) != md5:
        tmp.unlink(missing_ok=True)
        raise CorruptDatasetError(f"{url}: md5 {got} != published {md5}; download again")
    os.replace(tmp, dest)


def ensure_files(
    name: str, root: str | os.PathLike, files: list[RemoteFile], timeout: float = 30.0
) -> Path:
    """Make sure every file is in ``root`` (downloading what is missing); return root.

    Files already present are used as they are (their structure is checked by the reader):
    re-compressed copies of the official data have other md5s but the same contents.
    """
    root = Path(root).expanduser()
    missing = [f for f in files if not (root / f.filename).exists()]
    if not missing:
        return root
    if os.environ.get("TRITONCNN_OFFLINE") == "1":
        raise _not_found(name, root, missing, "downloads are off (TRITONCNN_OFFLINE=1)")
    root.mkdir(parents=True, exist_ok=True)
    for f in missing:
        try:
            _download(f.url, root / f.filename, f.md5, timeout)
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise _not_found(name, root, missing, f"download failed: {e}") from None
    return root


def _not_found(name: str, root: Path, missing: list[RemoteFile], why: str) -> DatasetNotFoundError:
    lines = "\n".join(f"  {f.filename}  <-  {f.url}" for f in missing)
    return DatasetNotFoundError(
        f"dataset '{name}': files missing under {root} and {why}.\n{lines}\n"
        f"Download them by hand into that folder, or point dataset.root=... at a folder "
        f"that has them."
    )
