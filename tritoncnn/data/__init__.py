"""Datasets: official-format readers with checked downloads, and the GPU-resident loader."""

from tritoncnn.data.datasets import DATASETS, DatasetInfo, info, load, names
from tritoncnn.data.download import CorruptDatasetError, DatasetNotFoundError

__all__ = [
    "DATASETS",
    "CorruptDatasetError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "info",
    "load",
    "names",
]
