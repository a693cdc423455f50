"""From a training checkpoint to exports: rebuild the model from the checkpoint's resolved
config, gather the metadata an export carries, and write the requested formats all or nothing.

``scripts/export.py`` and ``scripts/evaluate.py`` are thin wrappers around these functions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritoncnn.export.classes import class_names
from tritoncnn.export.errors import ExportError
from tritoncnn.export.onnx_export import to_onnx
from tritoncnn.export.safetensors_io import Exported, build_from_spec, to_safetensors

FORMATS = ("safetensors", "onnx")


@dataclass
class Restored:
    """A model rebuilt from a checkpoint, and what the checkpoint says about it."""

    model: Any  # the tritoncnn model (eval mode, checkpoint weights)
    spec: dict[str, Any]  # {"name": ..., **build kwargs}
    dataset: dict[str, Any]  # the resolved dataset config (name, root, mean, std, ...)
    state: dict[str, Any]  # the checkpoint's JSON state (epoch, best_val, config, ...)
    path: Path  # the checkpoint's weights file

    @property
    def run_dir(self) -> Path:
        """The training run's folder (``<run>/checkpoints/NAME.safetensors`` -> ``<run>``)."""
        folder = self.path.parent
        return folder.parent if folder.name == "checkpoints" else folder

    @property
    def stem(self) -> str:
        return self.path.name.removesuffix(".safetensors")

    @property
    def classes(self) -> list[str]:
        return class_names(self.dataset["name"], int(self.dataset["num_classes"]))

    def metadata(self) -> dict[str, Any]:
        """What an export of this checkpoint carries besides the model spec."""
        ds = self.dataset
        accuracy = {"best_val_acc": self.state.get("best_val")}
        summary = self.run_dir / "summary.json"
        if summary.is_file():
            try:
                accuracy["test_acc"] = json.loads(summary.read_text()).get("test_acc")
            except (OSError, json.JSONDecodeError):
                pass  # a summary is a courtesy: the export does not depend on it
        return {
            "dataset": ds["name"],
            "classes": self.classes,
            "mean": list(ds["mean"]),
            "std": list(ds["std"]),
            "channels": int(ds["channels"]),
            "image_size": int(ds["image_size"]),
            "accuracy": accuracy,
            "epoch": self.state.get("epoch"),
        }


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint given as any of its files, its stem, or a run folder (-> its ``best``)."""
    p = Path(path)
    if p.is_dir():
        for cand in (p / "checkpoints" / "best.safetensors", p / "best.safetensors"):
            if cand.with_suffix(".json").is_file():
                return cand
        raise ExportError(f"{p}: a folder without checkpoints/best.* (give a checkpoint file)")
    for suffix in (".state.safetensors", ".safetensors", ".json"):
        if p.name.endswith(suffix):
            return p.with_name(p.name.removesuffix(suffix) + ".safetensors")
    return p.with_name(p.name + ".safetensors")


def restore(path: str | os.PathLike) -> Restored:
    """Rebuild the model of a checkpoint (config from its JSON, weights from its safetensors).

    Missing, incomplete or corrupt checkpoints raise ExportError with one line.
    """
    from tritoncnn.train import checkpoint

    weights_path = resolve_checkpoint(path)
    try:
        weights, state = checkpoint.load(weights_path)
    except checkpoint.CheckpointError as e:
        raise ExportError(str(e)) from None
    cfg = state.get("config") or {}
    model_cfg, ds = cfg.get("model"), cfg.get("dataset")
    if not model_cfg or not ds or "name" not in model_cfg:
        raise ExportError(f"{weights_path}: the checkpoint holds no resolved model/dataset config")
    target = model_cfg.get("_target_", "tritoncnn.models.build")
    if target != "tritoncnn.models.build":
        raise ExportError(f"{weights_path}: model _target_ {target!r} is not models.build")
    spec = {k: v for k, v in model_cfg.items() if k != "_target_"}
    model = build_from_spec(spec)
    try:
        model.load_state_dict(weights)
    except (KeyError, ValueError) as e:
        raise ExportError(f"{weights_path}: weights do not fit its config ({e})") from None
    return Restored(model.eval(), spec, ds, state, weights_path)


def export_checkpoint(
    path: str | os.PathLike,
    formats: Sequence[str] = FORMATS,
    out: str | os.PathLike | None = None,
    name: str | None = None,
    normalize: bool = True,
    parity: bool = True,
) -> list[Exported]:
    """Export a checkpoint to ``formats`` in ``out`` (default ``<run dir>/export``) as
    ``NAME.safetensors`` / ``NAME.onnx`` (default NAME: ``<dataset>-<model>-<checkpoint>``).

    The ONNX graph takes raw pixels in [0, 1] and normalises inside when ``normalize``.
    All or nothing: if one format fails (unsupported op, parity), the files this call wrote
    are removed and the error propagates.
    """
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ExportError(f"unknown export format {bad or formats}; choose from {FORMATS} or all")
    r = restore(path)
    out_dir = Path(out) if out is not None else r.run_dir / "export"
    name = name or f"{r.dataset['name']}-{r.spec['name']}-{r.stem}"
    meta = r.metadata()
    c, s = meta["channels"], meta["image_size"]
    written: list[Exported] = []
    try:
        for fmt in formats:
            if fmt == "safetensors":
                done = to_safetensors(r.model, out_dir / f"{name}.safetensors", parity=parity,
                                      model=r.spec, **meta)  # fmt: skip
            else:
                norm = (meta["mean"], meta["std"]) if normalize else None
                onnx_meta = {"model": r.spec, **meta, "input": "pixels01" if norm else "normalized"}
                done = to_onnx(r.model, out_dir / f"{name}.onnx", (1, c, s, s), norm,
                               metadata=onnx_meta, parity=parity)  # fmt: skip
            written.append(done)
    except BaseException:
        for done in written:
            done.path.unlink(missing_ok=True)
        raise
    return written
