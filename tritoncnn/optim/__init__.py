"""Optimizers, LR schedules and dynamic loss scaling; the math runs in ``kernels/optim.py``
and ``kernels/amp.py`` (one fused launch per step, hyper-parameters read from the device)."""

from tritoncnn.optim.adam import Adam, AdamW
from tritoncnn.optim.optimizer import Optimizer, param_groups
from tritoncnn.optim.scaler import GradScaler
from tritoncnn.optim.schedules import (
    SCHEDULES,
    Constant,
    LRSchedule,
    MultiStepLR,
    OneCycleLR,
    ReduceLROnPlateau,
    StepLR,
    WarmupCosineLR,
)
from tritoncnn.optim.sgd import SGD

OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "SGD",
    "Adam",
    "AdamW",
    "Constant",
    "GradScaler",
    "LRSchedule",
    "MultiStepLR",
    "OneCycleLR",
    "Optimizer",
    "ReduceLROnPlateau",
    "StepLR",
    "WarmupCosineLR",
    "param_groups",
]
