"""Pooling layers: MaxPool2d, AvgPool2d, AdaptiveAvgPool2d (kernels in kernels/pool.py).

Arguments and their defaults are torch.nn's (``stride=None`` means ``kernel_size``). Inputs
may have any strides; outputs and input gradients are channels_last (NHWC) in the input's
dtype. Each forward keeps only what its backward needs: the input's shape and dtype, and for
max pool the argmax taps.
"""

from __future__ import annotations

import torch

from tritoncnn.kernels import pool
from tritoncnn.nn.module import Module


class _Pool(Module):
    """Shared bookkeeping: the last forward's input shape and dtype."""

    def __init__(self) -> None:
        super().__init__()
        self._input_shape: tuple[int, int, int, int] | None = None
        self._input_dtype: torch.dtype | None = None

    def _remember(self, x: torch.Tensor) -> None:
        self._input_shape = tuple(x.shape)
        self._input_dtype = x.dtype

    def _check_forward_ran(self) -> None:
        if self._input_shape is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")


class MaxPool2d(_Pool):
    def __init__(
        self,
        kernel_size,
        stride=None,
        padding=0,
        dilation=1,
        return_indices: bool = False,
        ceil_mode: bool = False,
    ) -> None:
        super().__init__()
        if return_indices:
            raise NotImplementedError(
                "MaxPool2d(return_indices=True) is not supported: the backward keeps its own "
                "argmax (window taps), not torch's flat indices"
            )
        self.kernel_size = kernel_size
        self.stride = stride if (stride is not None and stride != ()) else kernel_size
        self.padding = padding
        self.dilation = dilation
        self.return_indices = return_indices
        self.ceil_mode = ceil_mode
        self._argmax: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, self._argmax = pool.max_pool2d_forward(
            x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode
        )
        self._remember(x)
        return y

    def backward(self, grad_out: torch.Tensor) -> torch.Tensor:
        self._check_forward_ran()
        return pool.max_pool2d_backward(
            grad_out,
            self._argmax,
            self._input_shape,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            dtype=self._input_dtype,
        )

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, ceil_mode={self.ceil_mode}"
        )


class AvgPool2d(_Pool):
    def __init__(
        self,
        kernel_size,
        stride=None,
        padding=0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: int | None = None,
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if (stride is not None and stride != ()) else kernel_size
        self.padding = padding
        self.ceil_mode = ceil_mode
        self.count_include_pad = count_include_pad
        self.divisor_override = divisor_override

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = pool.avg_pool2d_forward(
            x,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )
        self._remember(x)
        return y

    def backward(self, grad_out: torch.Tensor) -> torch.Tensor:
        self._check_forward_ran()
        return pool.avg_pool2d_backward(
            grad_out,
            self._input_shape,
            self.kernel_size,
            self.stride,
            self.padding,
            self.count_include_pad,
            self.divisor_override,
            dtype=self._input_dtype,
        )

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(_Pool):
    """Average pool to a fixed output size; ``AdaptiveAvgPool2d(1)`` is the global pool."""

    def __init__(self, output_size) -> None:
        super().__init__()
        self.output_size = output_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = pool.adaptive_avg_pool2d_forward(x, self.output_size)
        self._remember(x)
        return y

    def backward(self, grad_out: torch.Tensor) -> torch.Tensor:
        self._check_forward_ran()
        return pool.adaptive_avg_pool2d_backward(
            grad_out, self._input_shape, dtype=self._input_dtype
        )

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"
