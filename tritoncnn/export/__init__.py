"""Taking models out of tritoncnn: the torch twin (``to_torch``), safetensors files that rebuild
the model (``to_safetensors``, ``load``, ``load_torch``) and ONNX graphs (``to_onnx``), each
export checked for parity with the tritoncnn model before it is kept; and torchvision's
pretrained state_dicts into the ImageNet variants (``from_torchvision``)."""

from tritoncnn.export.errors import ExportError, ParityError, UnsupportedOpError
from tritoncnn.export.onnx_export import to_onnx
from tritoncnn.export.parity import ParityReport
from tritoncnn.export.safetensors_io import (
    Exported,
    load,
    load_torch,
    read_metadata,
    to_safetensors,
)
from tritoncnn.export.torch_twin import to_torch
from tritoncnn.export.torchvision_import import from_torchvision

__all__ = [
    "ExportError",
    "Exported",
    "from_torchvision",
    "ParityError",
    "ParityReport",
    "UnsupportedOpError",
    "load",
    "load_torch",
    "read_metadata",
    "to_onnx",
    "to_safetensors",
    "to_torch",
]
