"""Command lines of scripts/export.py and scripts/evaluate.py: ``CHECKPOINT key=value ...``.

Arguments follow Hydra's override spelling (``format=onnx out=DIR dataset.root=...``) without
Hydra's machinery: a checkpoint already holds its resolved config. Bad input prints one
``error: ...`` line to stderr and exits with status 2; no partial file is left behind.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

EXPORT_USAGE = """usage: python scripts/export.py CHECKPOINT [format=safetensors|onnx|all] [out=DIR]
                                [name=NAME] [normalize=true|false] [parity=true|false]

CHECKPOINT: a checkpoint file (e.g. outputs/RUN/checkpoints/best.safetensors), its stem, or a
run folder (its checkpoints/best). Writes OUT/NAME.safetensors and/or OUT/NAME.onnx (default
OUT: RUN/export, NAME: DATASET-MODEL-CHECKPOINT), each checked for parity with tritoncnn."""


class UsageError(ValueError):
    """Bad command-line arguments."""


def _bool(v: str) -> bool:
    low = v.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"expected true or false, got {v!r}")


def parse(argv: Sequence[str], defaults: dict[str, Any], usage: str) -> tuple[str, dict]:
    """(checkpoint, options) from ``CHECKPOINT key=value ...``; values take their default's
    type (bool, int, str; None defaults take strings)."""
    if any(a in ("-h", "--help") for a in argv):
        print(usage)
        raise SystemExit(0)
    positional = [a for a in argv if "=" not in a]
    if len(positional) != 1:
        raise UsageError(f"give exactly one CHECKPOINT (got {positional or 'none'}); see --help")
    opts = dict(defaults)
    for arg in argv:
        if "=" not in arg:
            continue
        key, value = arg.lstrip("+").split("=", 1)
        if key not in defaults:
            raise UsageError(f"unknown option {key!r}; options: {', '.join(defaults)}")
        default = defaults[key]
        try:
            if isinstance(default, bool):
                opts[key] = _bool(value)
            elif isinstance(default, int):
                opts[key] = int(value)
            else:
                opts[key] = None if value.lower() in ("null", "none") else value
        except ValueError as e:
            raise UsageError(f"{key}: {e}") from None
    return positional[0], opts


def run(fn: Callable[[], int], errors: tuple[type[BaseException], ...]) -> int:
    """Call ``fn``; turn ``errors`` (and UsageError) into one stderr line and status 2."""
    try:
        return fn()
    except (UsageError, *errors) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def export_main(argv: Sequence[str]) -> int:
    """scripts/export.py."""
    from tritoncnn.export.errors import ExportError
    from tritoncnn.export.from_checkpoint import FORMATS, export_checkpoint

    def go() -> int:
        defaults = {"format": "all", "out": None, "name": None, "normalize": True, "parity": True}
        ckpt, o = parse(argv, defaults, EXPORT_USAGE)
        formats = FORMATS if o["format"] == "all" else tuple(o["format"].split(","))
        for done in export_checkpoint(ckpt, formats, o["out"], o["name"], o["normalize"],
                                      o["parity"]):  # fmt: skip
            print(f"wrote {done}")
        return 0

    return run(go, (ExportError,))
