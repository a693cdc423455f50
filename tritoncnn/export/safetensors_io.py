"""One safetensors file that rebuilds the model: weights plus the metadata to construct it.

``to_safetensors(model, path, model={...}, dataset=..., ...)`` writes the state_dict in
torch.nn's key names and layouts (conv weights O,I/g,KH,KW contiguous, fp32; BN buffers as
torch's) and a metadata header, so the file also loads with plain ``safetensors.torch.load_file``
into the torch twin or (for the ResNets and MobileNetV2) torchvision's model of the variant.

Metadata (``safetensors`` stores str -> str; every value here is JSON):

- ``model``: ``{"name": ..., **build kwargs}``, what ``tritoncnn.models.build`` takes
  (``num_classes``, ``in_channels``, ``image_size``, ``filters``, ``widths``, ...); required
  (a model made by ``load`` or ``export.from_checkpoint`` carries it as ``build_config``);
- conventional keys: ``dataset`` (name), ``classes`` (names in label order), ``mean`` and
  ``std`` (per channel, [0, 1] pixel units), ``image_size``, ``accuracy``; any other JSON-able
  keyword is stored too;
- added by the writer: ``tritoncnn_version`` and ``format`` ("pt").

``load(path)`` rebuilds the tritoncnn model; ``load_torch(path)`` the plain torch.nn module
(``to_torch``'s twin: no Triton kernel runs, neither to build it nor at inference).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tritoncnn.export import parity as P
from tritoncnn.export.atomic import share_like_new_file, staged
from tritoncnn.export.errors import ExportError
from tritoncnn.export.torch_twin import to_torch

_RESERVED = ("format", "tritoncnn_version")


@dataclass(frozen=True)
class Exported:
    """Where an export went and how its parity check came out (None when skipped)."""

    path: Path
    parity: P.ParityReport | None

    def __str__(self) -> str:
        return f"{self.path}" + (f" ({self.parity})" if self.parity else "")


def model_spec(model, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"name": ..., **kwargs}`` that rebuilds ``model`` through ``models.build``: ``spec`` if
    given, else the ``build_config`` a loaded model carries."""
    spec = spec if spec is not None else getattr(model, "build_config", None)
    if not spec or "name" not in spec:
        raise ExportError(
            "the export needs the model's build arguments so the file can rebuild it: pass "
            "model={'name': ..., 'num_classes': ..., 'in_channels': ..., ...} (what "
            "tritoncnn.models.build takes)"
        )
    return {k: v for k, v in dict(spec).items() if k != "_target_"}


def build_from_spec(spec: dict[str, Any]):
    """A fresh tritoncnn model from ``{"name": ..., **kwargs}`` (no kernel runs)."""
    from tritoncnn import models

    kw = dict(spec)
    name = kw.pop("name")
    try:
        model = models.build(name, **kw)
    except (TypeError, ValueError) as e:
        raise ExportError(f"cannot rebuild model {name!r} from {kw}: {e}") from None
    object.__setattr__(model, "build_config", dict(spec))
    return model


def _cpu_state(model) -> dict[str, torch.Tensor]:
    """The state_dict as dense CPU tensors in torch's logical layout (each its own storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def _jsonable(obj: Any) -> Any:
    """numpy scalars/arrays and tensors as JSON values (json.dumps' ``default``)."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def input_shape_of(spec: dict[str, Any], batch: int = 1) -> tuple[int, int, int, int]:
    """(batch, in_channels, image_size, image_size) from a model spec (build's defaults)."""
    return (batch, int(spec.get("in_channels", 3)), *(2 * [int(spec.get("image_size", 32))]))


def to_safetensors(
    model,
    path: str | os.PathLike,
    /,
    *,
    parity: bool = True,
    parity_input: torch.Tensor | None = None,
    rtol: float = P.RTOL,
    atol: float = P.ATOL,
    **metadata: Any,
) -> Exported:
    """Write ``model``'s weights and ``metadata`` to ``path`` (atomically).

    ``metadata``: ``model={"name": ..., **build kwargs}`` (or the model's ``build_config``)
    plus any JSON-able keywords (see the module docstring); ``parity``, ``parity_input``,
    ``rtol`` and ``atol`` are this function's own.

    With ``parity`` (default) the staged file is rebuilt by ``load_torch`` and a batch
    (``parity_input``, else 4 seeded random images of the model's input size) is compared with
    the model's eval-mode output before the file is renamed into place; a mismatch raises
    ``ParityError`` and leaves nothing at ``path``.
    """
    from safetensors.torch import save_file

    import tritoncnn

    spec = model_spec(model, metadata.pop("model", None))
    header = {"format": "pt", "tritoncnn_version": tritoncnn.__version__}
    for key, value in {"model": spec, **metadata}.items():
        if key in _RESERVED:
            raise ExportError(f"metadata key {key!r} is reserved (written by the exporter)")
        try:
            header[key] = json.dumps(value, default=_jsonable)
        except TypeError as e:
            raise ExportError(f"metadata {key!r} is not JSON-serialisable: {e}") from None
    weights = _cpu_state(model)
    report = None
    with staged(path) as tmp:
        save_file(weights, str(tmp), metadata=header)
        share_like_new_file(tmp)
        if parity:
            x = parity_input
            if x is None:
                x = P.random_input(input_shape_of(spec, 4))
            twin = load_torch(tmp)
            report = P.compare(P.tritoncnn_logits(model, x), P.torch_logits(twin, x), "torch",
                               rtol, atol)  # fmt: skip
    return Exported(Path(path), report)


def _open(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(weights, decoded metadata) of an export, with one clear error for any bad file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise ExportError(f"{p}: no such export file")
    try:
        weights = load_file(str(p))
        meta = read_metadata(p)
    except (SafetensorError, OSError, ValueError) as e:
        raise ExportError(f"{p}: not a readable safetensors file ({e})") from None
    return weights, meta


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of an export, JSON values decoded (``format``/version kept as strings)."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise ExportError(f"{p}: no such export file")
    try:
        with safe_open(str(p), "pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise ExportError(f"{p}: not a readable safetensors file ({e})") from None
    out: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            out[key] = value if key in _RESERVED else json.loads(value)
        except json.JSONDecodeError:
            out[key] = value  # written by another tool: keep the string
    if "model" not in out:
        raise ExportError(
            f"{p}: no 'model' metadata (name and build arguments), so it cannot rebuild a "
            "model; it was not written by tritoncnn.export.to_safetensors"
        )
    return out


def _load_weights(module, weights: dict[str, torch.Tensor], path) -> None:
    try:
        module.load_state_dict(weights, strict=True)
    except (KeyError, RuntimeError, ValueError) as e:
        msg = str(e).splitlines()[0]
        raise ExportError(f"{path}: weights do not fit the model in its metadata ({msg})") from None


def load(path: str | os.PathLike):
    """The tritoncnn model stored in an export, in eval mode, parameters on the kernel device.

    The model carries ``build_config`` (its spec) and ``export_metadata`` (the whole header).
    """
    weights, meta = _open(path)
    model = build_from_spec(meta["model"])
    _load_weights(model, weights, path)
    object.__setattr__(model, "export_metadata", meta)
    return model.eval()


def load_torch(path: str | os.PathLike) -> torch.nn.Module:
    """The model stored in an export as a plain torch.nn.Module (CPU, fp32, eval mode).

    Built as ``to_torch``'s twin of a freshly constructed tritoncnn model (constructors only:
    no Triton kernel runs), then loaded with the file's weights; inference needs only torch.
    ``export_metadata`` holds the header.
    """
    weights, meta = _open(path)
    twin = to_torch(build_from_spec(meta["model"]))
    _load_weights(twin, weights, path)
    twin.export_metadata = meta
    return twin.eval()
