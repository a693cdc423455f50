"""Writing a file so that its final path only ever holds a complete, verified file."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def staged(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block ends
    normally, delete it when the block raises.

    The caller writes and checks (parity) the temporary file inside the block, so a failed
    write or a failed check leaves ``path`` untouched (absent, or the previous file) and no
    partial file behind. The rename is atomic on one filesystem (same folder).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def share_like_new_file(path: Path) -> None:
    """Give ``path`` the permissions a newly created file gets (0666 minus the umask):
    safetensors writes 0600, but an export is meant to be shared."""
    umask = 0o022
    try:  # Linux exposes the umask without the racy os.umask set-and-restore
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                umask = int(line.split()[1], 8)
    except OSError:
        pass
    os.chmod(path, 0o666 & ~umask)
