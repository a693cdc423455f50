"""Taking models out of tritoncnn: the torch twin (``to_torch``)."""

from tritoncnn.export.torch_twin import to_torch

__all__ = ["to_torch"]
