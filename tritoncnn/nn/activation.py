"""Activation modules: ReLU, ReLU6, ELU, LeakyReLU, SiLU (kernels in kernels/elementwise.py)."""

from __future__ import annotations

import torch

from tritoncnn.kernels import elementwise as ew
from tritoncnn.nn.module import Module


class _Activation(Module):
    """act(x); keeps the input for the backward (the derivative is evaluated there).

    ``fused``: set by ``nn.fusion.fuse_bn_activations`` when the BatchNorm right before this
    module applies the activation inside its own kernels (forward and backward); the module
    then passes values and gradients through unchanged, launching nothing.
    """

    ACT = ew.ACT_NONE

    def __init__(self, alpha: float = 0.0) -> None:
        super().__init__()
        self.alpha = float(alpha)
        self.fused = False
        self._x: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return x
        self._x = x
        return ew.activation_forward(x, self.ACT, self.alpha)

    def backward(self, grad_out: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return grad_out
        if self._x is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return ew.activation_backward(grad_out, self._x, self.ACT, self.alpha)


class ReLU(_Activation):
    ACT = ew.ACT_RELU

    def __init__(self, inplace: bool = False) -> None:  # inplace accepted for torch parity
        super().__init__()


class ReLU6(_Activation):
    ACT = ew.ACT_RELU6

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()


class ELU(_Activation):
    ACT = ew.ACT_ELU

    def __init__(self, alpha: float = 1.0, inplace: bool = False) -> None:
        super().__init__(alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class LeakyReLU(_Activation):
    ACT = ew.ACT_LEAKY_RELU

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False) -> None:
        super().__init__(negative_slope)
        self.negative_slope = float(negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class SiLU(_Activation):
    ACT = ew.ACT_SILU

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
