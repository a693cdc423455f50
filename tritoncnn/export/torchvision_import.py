"""Starting from torchvision's pretrained weights: ``from_torchvision(name, state)``.

The ImageNet variants of our ResNets and MobileNetV2 have torchvision's module names, so a
torchvision state_dict (``torchvision.models.resnet18(weights=...).state_dict()``, or the
``.pth`` file torchvision downloads) loads into them as is; the number of classes is read from
the classifier's weight. Fine-tune on another dataset by replacing the head afterwards, or pass
the state without its classifier keys and ``num_classes`` (``strict=False`` semantics for the
head only).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from tritoncnn.export.errors import ExportError

# our name -> (torchvision's classifier weight key, build kwargs)
TORCHVISION = {
    "resnet18": ("fc.weight", {"variant": "imagenet"}),
    "resnet34": ("fc.weight", {"variant": "imagenet"}),
    "mobilenetv2": ("classifier.1.weight", {"variant": "imagenet"}),
}
_ALIASES = {"mobilenet_v2": "mobilenetv2"}


def _read(state: Mapping[str, torch.Tensor] | str | os.PathLike) -> dict[str, torch.Tensor]:
    if isinstance(state, Mapping):
        return dict(state)
    p = Path(state)
    if not p.is_file():
        raise ExportError(f"{p}: no such state_dict file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(p))
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types for a bad file
        raise ExportError(f"{p}: not a readable state_dict ({type(e).__name__}: {e})") from None


def from_torchvision(
    name: str,
    state: Mapping[str, torch.Tensor] | str | os.PathLike,
    num_classes: int | None = None,
    in_channels: int = 3,
):
    """Our ImageNet-variant ``name`` (resnet18, resnet34, mobilenet_v2) with torchvision's
    ``state`` (a state_dict or a .pth/.safetensors file).

    ``num_classes`` defaults to the classifier's rows; when it differs (or the state has no
    classifier) the head keeps its fresh initialisation and everything else is loaded.
    """
    from tritoncnn.export.safetensors_io import build_from_spec

    key = _ALIASES.get(name, name)
    if key not in TORCHVISION:
        raise ExportError(f"no torchvision layout for {name!r}; choose from {sorted(TORCHVISION)}")
    head_key, kw = TORCHVISION[key]
    sd = _read(state)
    rows = sd[head_key].shape[0] if head_key in sd else None
    num_classes = num_classes or rows
    if num_classes is None:
        raise ExportError(f"the state has no {head_key}: pass num_classes")
    spec = {"name": key, "num_classes": int(num_classes), "in_channels": in_channels, **kw}
    model = build_from_spec(spec)
    head = head_key.rsplit(".", 1)[0]
    if rows != num_classes:  # a new head: load the body only
        sd = {k: v for k, v in sd.items() if not k.startswith(head + ".")}
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.startswith(head + ".")]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise ExportError(
            f"not a torchvision {name} state_dict: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    try:
        model.load_state_dict(sd, strict=False)
    except ValueError as e:
        raise ExportError(f"not a torchvision {name} state_dict: {e}") from None
    return model
