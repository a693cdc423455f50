"""Layers with explicit forward/backward, named and constructed like torch.nn's."""

from tritoncnn.nn.activation import ELU, LeakyReLU, ReLU, ReLU6, SiLU
from tritoncnn.nn.container import Flatten, Sequential
from tritoncnn.nn.module import Module, Parameter

__all__ = [
    "ELU",
    "Flatten",
    "LeakyReLU",
    "Module",
    "Parameter",
    "ReLU",
    "ReLU6",
    "Sequential",
    "SiLU",
]
