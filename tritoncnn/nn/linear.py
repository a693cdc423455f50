"""Linear: y = x @ W^T + b on the tensor-core matmul of kernels/matmul.py."""

from __future__ import annotations

import math

import torch

from tritoncnn import runtime
from tritoncnn.kernels import matmul as mm
from tritoncnn.nn.module import Module, Parameter


class Linear(Module):
    """torch.nn.Linear: weight (out_features, in_features) and bias (out_features,), fp32.

    Inputs are N x in_features in fp32, fp16 or bf16; the output follows the input's dtype (fp32
    weights are cast to it inside the kernel). The backward returns the input gradient in the
    input's dtype and accumulates fp32 weight and bias gradients into ``.grad``;
    ``input_grad = False`` skips the input gradient (the backward returns None), as for
    Conv2d.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if dtype not in (None, torch.float32):
            raise ValueError(f"Linear keeps fp32 master weights; got dtype={dtype}")
        self.in_features = in_features
        self.out_features = out_features
        # device is accepted for torch parity; parameters always live on runtime.DEVICE.
        self.weight = Parameter(torch.empty(out_features, in_features))
        self.bias = Parameter(torch.empty(out_features), no_weight_decay=True) if bias else None
        self.input_grad = True
        self._x: torch.Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch.nn.Linear's initialisation, drawn on the CPU from torch's global generator (so
        a seed gives the same numbers as torch), then moved to the kernel device."""
        weight = torch.empty(self.out_features, self.in_features)
        torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        self.weight.data = weight.to(runtime.DEVICE)
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
            bias = torch.empty(self.out_features)
            torch.nn.init.uniform_(bias, -bound, bound)
            self.bias.data = bias.to(runtime.DEVICE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            raise ValueError(
                f"Linear expects a 2-d input (N, {self.in_features}); got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_features:
            raise ValueError(
                f"Linear expected input with in_features={self.in_features}, got "
                f"{x.shape[1]} (input shape {tuple(x.shape)})"
            )
        if x.dtype not in runtime.SUPPORTED_DTYPES:
            raise TypeError(f"Linear supports {runtime.SUPPORTED_DTYPES} inputs, got {x.dtype}")
        self._x = x
        bias = self.bias.data if self.bias is not None else None
        return mm.linear_forward(x, self.weight.data, bias)

    def backward(self, grad_out: torch.Tensor) -> torch.Tensor | None:
        x = self._x
        if x is None:
            raise RuntimeError("Linear.backward called before forward")
        if tuple(grad_out.shape) != (x.shape[0], self.out_features):
            raise ValueError(
                f"Linear.backward: grad_out shape {tuple(grad_out.shape)} != "
                f"{(x.shape[0], self.out_features)}"
            )
        grad_in = None
        if self.input_grad:
            grad_in = mm.linear_dgrad(grad_out, self.weight.data, out_dtype=x.dtype)
        # p.grad convention: the kernels write a fresh fp32 tensor, or add into the existing one.
        self.weight.grad = mm.linear_wgrad(x, grad_out, self.weight.grad)
        if self.bias is not None:
            self.bias.grad = mm.linear_bias_grad(grad_out, self.bias.grad)
        return grad_in

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )
