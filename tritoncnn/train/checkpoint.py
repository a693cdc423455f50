"""Checkpoints: weights as safetensors (torch.nn's keys and layouts), everything else in JSON.

A checkpoint ``NAME`` is three files in one folder, each written to a temp file and renamed:
``NAME.safetensors`` (the model's state_dict, loadable by any safetensors reader),
``NAME.state.safetensors`` (optimizer moments, RNG states) and ``NAME.json`` (optimizer
hyper-parameters, scaler, schedule, epoch, step, seeds, resolved config). The JSON is renamed
last, so a checkpoint whose JSON exists is complete; a crash mid-write leaves the previous one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or corrupt."""


def _split(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able copy of obj with every tensor/array moved into ``tensors`` by key."""
    if isinstance(obj, torch.Tensor | np.ndarray):
        t = torch.as_tensor(obj).detach().cpu().contiguous()
        tensors[prefix] = t
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {str(k): _split(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_split(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _join(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        return {k: _join(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join(v, tensors) for v in obj]
    return obj


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def save(
    folder: str | os.PathLike,
    name: str,
    model_state: dict[str, torch.Tensor],
    state: dict[str, Any],
) -> Path:
    """Write checkpoint ``name`` into ``folder``; returns the weights' path."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model_state.items()}
    extra: dict[str, torch.Tensor] = {}
    meta = _split(state, "state", extra)
    meta["format_version"] = FORMAT_VERSION
    w_path = folder / f"{name}.safetensors"
    _atomic_write(w_path, lambda p: save_file(weights, str(p), metadata={"format": "pt"}))
    _atomic_write(folder / f"{name}.state.safetensors", lambda p: save_file(extra, str(p)))
    _atomic_write(
        folder / f"{name}.json", lambda p: p.write_text(json.dumps(meta, indent=1, default=str))
    )
    return w_path


def load(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(model state_dict, state) of a checkpoint given by any of its files or its stem."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    stem = p.name
    for suffix in (".state.safetensors", ".safetensors", ".json"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    folder = p.parent
    files = [folder / f"{stem}{s}" for s in (".safetensors", ".state.safetensors", ".json")]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise CheckpointError(f"checkpoint {folder / stem} is incomplete: missing {missing}")
    try:
        weights = load_file(str(files[0]))
        extra = load_file(str(files[1]))
        meta = json.loads(files[2].read_text())
    except (SafetensorError, OSError, json.JSONDecodeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {folder / stem} is corrupt: {e}") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{files[2]}: unknown checkpoint format {meta.get('format_version')}")
    meta.pop("format_version")
    return weights, _join(meta, extra)
