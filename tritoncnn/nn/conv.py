"""Conv2d: torch.nn.Conv2d's arguments, initialisation and state_dict; kernels in kernels/conv.py
(implicit GEMM) and kernels/depthwise.py (groups == in_channels == out_channels)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from tritoncnn import runtime
from tritoncnn.kernels import conv as K
from tritoncnn.kernels import conv_wgrad
from tritoncnn.kernels import depthwise as DW
from tritoncnn.kernels import elementwise as EW
from tritoncnn.nn.module import Module, Parameter

if TYPE_CHECKING:
    from tritoncnn.nn.batchnorm import GradSumsLink, PendingNormLink, TileMomentsLink


def _pair(v, name: str) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(v)
    if len(v) != 2 or not all(isinstance(e, int) for e in v):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return v  # type: ignore[return-value]


class Conv2d(Module):
    """2-d convolution over N,C,H,W inputs (any memory layout; output is channels_last).

    ``weight`` (O, I/groups, KH, KW) is fp32 and stored channels_last (memory O,KH,KW,I/g);
    ``bias`` (O,) is fp32 and kept out of weight decay. ``padding`` takes ints, pairs or
    torch's 'valid' / 'same' strings ('same' only with stride 1, as in torch; even kernels pad
    the extra row/column at the bottom/right, as torch does). Only padding_mode='zeros'.

    ``input_grad``: when False the backward skips the input gradient (the dgrad GEMM) and
    returns None, as torch skips it for an input that does not require grad. ``models.build``
    turns it off on the stem, whose input is the data batch.

    With 16-bit activations the GEMM kernels read a copy of the weight in the activation dtype,
    rounded from the master weight by one small cast kernel at each forward into a buffer the
    layer keeps (``cast_weights``; the rounding is the one the kernels would do themselves),
    or, in the trainer's step, by one launch for every conv of the model right before the
    forward (nn/weight_casts.py).
    An fp32 weight operand with 24-channel rows made MobileNetV2's 24 <-> 144 1x1 convs ~5x
    slower on an H200 (fwd 653 -> 127 us, dgrad 523 -> 91 us at batch 512:
    benchmarks/conv_tiles.py), and the copy halves the weight traffic of every tile.
    """

    # class-wide switch, for benchmarks: False makes the kernels read the fp32 master weight
    cast_weights = True
    # the BatchNorm right after this conv, when nn.fusion linked them: the forward then stores
    # that BatchNorm's per-tile moments in its epilogue (batchnorm.TileMomentsLink)
    moments_link: TileMomentsLink | None = None
    # the BatchNorm right before this (depthwise) conv, when nn.fusion deferred that layer's
    # apply into this conv's loads (batchnorm.PendingNormLink)
    pending_link: PendingNormLink | None = None
    # the BatchNorm right before this conv (and its activation), when nn.fusion linked them:
    # the dgrad then stores that BatchNorm's backward sums in its epilogue (GradSumsLink)
    grad_sums_link: GradSumsLink | None = None
    # set by nn.fusion.fold_block_relu_grads: this conv's input is the output of a ReLU (the
    # previous residual block's) whose backward the dgrad epilogue applies, so backward returns
    # the gradient of that ReLU's input
    relu_input_grad = False
    # set by nn.weight_casts.WeightCasts for the length of one model forward: its launch has
    # just rounded every conv's weight into its weight_copy
    copy_fresh = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if groups <= 0:
            raise ValueError("groups must be a positive integer")
        if in_channels % groups != 0:
            raise ValueError("in_channels must be divisible by groups")
        if out_channels % groups != 0:
            raise ValueError("out_channels must be divisible by groups")
        if padding_mode != "zeros":
            raise ValueError(
                f"padding_mode={padding_mode!r} is not supported by tritoncnn (only 'zeros')"
            )
        if dtype not in (None, torch.float32):
            raise ValueError(f"Conv2d parameters are fp32 master weights; got dtype={dtype}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.dilation = _pair(dilation, "dilation")
        self.groups = groups
        self.padding_mode = padding_mode
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(
                    f"Invalid padding string {padding!r}, should be one of {{'valid', 'same'}}"
                )
            if padding == "same" and self.stride != (1, 1):
                raise ValueError("padding='same' is not supported for strided convolutions")
            self.padding = padding
        else:
            self.padding = _pair(padding, "padding")
        self._pad4 = self._explicit_padding()

        # torch.nn.Conv2d.reset_parameters on CPU tensors (same RNG draws, same values).
        kh, kw = self.kernel_size
        w = torch.empty(out_channels, in_channels // groups, kh, kw)
        torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        self.weight = Parameter(w.to(runtime.DEVICE).contiguous(memory_format=torch.channels_last))
        if bias:
            fan_in = (in_channels // groups) * kh * kw
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            b = torch.empty(out_channels)
            torch.nn.init.uniform_(b, -bound, bound)
            self.bias = Parameter(b.to(runtime.DEVICE), no_weight_decay=True)
        else:
            self.bias = None
        self.input_grad = True
        self._x: torch.Tensor | None = None
        self._pending = None  # the PendingNorm the last forward applied to _x as it loaded it
        self._w_cast: torch.Tensor | None = None  # the GEMM operand copy (see the docstring)
        self._w_gemm: torch.Tensor | None = None  # the weight the last forward's GEMM read

    def _explicit_padding(self) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) zero padding."""
        if self.padding == "valid":
            return (0, 0, 0, 0)
        if self.padding == "same":
            out = []
            for d, k in zip(self.dilation, self.kernel_size, strict=True):
                total = d * (k - 1)
                out += [total // 2, total - total // 2]  # torch puts the odd one at the end
            return tuple(out)  # type: ignore[return-value]
        ph, pw = self.padding
        return (ph, ph, pw, pw)

    def _is_depthwise(self) -> bool:
        pt, pb, pl, pr = self._pad4
        symmetric = pt == pb and pl == pr  # the depthwise kernels take (h, w) padding
        return self.groups == self.in_channels == self.out_channels and symmetric

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"Conv2d expects a 4-d N,C,H,W input, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"Conv2d expected input with {self.in_channels} channels, "
                f"got {x.shape[1]} channels (input shape {tuple(x.shape)})"
            )
        if x.dtype not in runtime.SUPPORTED_DTYPES:
            raise ValueError(f"Conv2d: unsupported input dtype {x.dtype}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        self._x = x
        b = self.bias.data if self.bias is not None else None
        link = self.moments_link
        # the BatchNorm after this conv takes batch statistics: store them in the epilogue
        moments = link is not None and link.wanted()
        # the BatchNorm before it left its apply to this conv's loads
        pending = self.pending_link.take(x) if self.pending_link is not None else None
        self._pending = pending
        if self._is_depthwise():
            pt, _, pl, _ = self._pad4
            args = (x, self.weight.data, b, self.stride, (pt, pl), self.dilation)
            if not moments:
                return DW.depthwise_conv2d_forward(*args, pending=pending)
            y, tiles = DW.depthwise_conv2d_forward_moments(*args, pending=pending)
        else:
            if pending is not None:
                raise RuntimeError("Conv2d: a pending batch-norm apply needs a depthwise conv")
            self._w_gemm = self._gemm_weight(x.dtype)
            args = (x, self._w_gemm, b, self.stride, self._pad4, self.dilation, self.groups)
            if not moments:
                return K.conv2d_forward(*args)
            y, tiles = K.conv2d_forward_moments(*args)
        link.publish(y, tiles)
        return y

    def weight_copy(self, dtype: torch.dtype) -> torch.Tensor | None:
        """The buffer of the weight's copy in ``dtype`` that the GEMMs read for activations of
        that dtype (allocated on first use, then the same storage every step, so a captured
        CUDA graph replays into it), or None where they read the fp32 master (fp32
        activations, ``cast_weights`` off, a non-dense weight, a depthwise conv)."""
        w = self.weight.data
        dense = w.is_contiguous() or w.is_contiguous(memory_format=torch.channels_last)
        if dtype == torch.float32 or not self.cast_weights or not dense or self._is_depthwise():
            return None
        cast = self._w_cast
        if (
            cast is None
            or cast.dtype != dtype
            or cast.shape != w.shape
            or cast.stride() != w.stride()
        ):
            cast = self._w_cast = runtime.empty_like(w, dtype=dtype)
        return cast

    def _gemm_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight the conv GEMMs read for activations of ``dtype``: the fp32 master, or
        its ``weight_copy``, rounded from the master now unless ``nn.weight_casts`` just
        refreshed every copy of the model in one launch (``copy_fresh``)."""
        cast = self.weight_copy(dtype)
        if cast is None:
            return self.weight.data
        if self.copy_fresh:
            return cast
        return EW.cast_(cast, self.weight.data)

    def backward(
        self, grad_out: torch.Tensor, add: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """Gradients of the weight (and bias), and the input's gradient when ``input_grad``.
        ``add``: the input's gradient from another path (a residual block's skip), added to
        the returned input gradient; a GEMM conv adds it in its dgrad epilogue (any strides),
        a depthwise conv in a separate pass (``add`` in the input's layout). With
        ``relu_input_grad`` the result is then zeroed where the input is not > 0."""
        x = self._x
        if x is None:
            raise RuntimeError("Conv2d.backward called before forward")
        w = self.weight
        pt, _, pl, _ = self._pad4
        grad_in = sums = None
        link = self.grad_sums_link
        # the BatchNorm before this conv wants its backward sums from the dgrad's epilogue
        bn = link.request(x) if link is not None and self.input_grad else None
        if self._is_depthwise():
            args = (self.stride, (pt, pl), self.dilation)
            if self.input_grad:
                out = runtime.empty_like(x, dtype=grad_out.dtype)  # the input's layout
                dgrad_args = (grad_out, w.data, x.shape, *args)
                if self.relu_input_grad:
                    raise RuntimeError("Conv2d: relu_input_grad needs a GEMM (not depthwise) conv")
                if add is not None:  # the depthwise dgrad has no add epilogue
                    bn = None
                if bn is None:
                    grad_in = DW.depthwise_conv2d_dgrad(*dgrad_args, out=out)
                else:
                    grad_in, sums = DW.depthwise_conv2d_dgrad_grad_sums(*dgrad_args, *bn, out=out)
                if add is not None:  # (in the input's layout, as grad_in)
                    grad_in = EW.accumulate_(grad_in, add)
            w.grad = DW.depthwise_conv2d_wgrad(
                x, grad_out, w.shape, *args, grad_weight=w.grad, pending=self._pending
            )
        else:
            args = (self.stride, self._pad4, self.dilation, self.groups)
            if self.input_grad:
                out = runtime.empty_like(x, dtype=grad_out.dtype)  # the input's layout
                dgrad_args = (grad_out, self._w_gemm, x.shape, *args)
                if bn is not None and self.relu_input_grad:
                    raise RuntimeError("Conv2d: relu_input_grad with a batch-norm sums link")
                if bn is None:
                    relu_out = x if self.relu_input_grad else None
                    grad_in = K.conv2d_dgrad(*dgrad_args, out=out, add=add, relu_out=relu_out)
                else:
                    grad_in, sums = K.conv2d_dgrad_grad_sums(*dgrad_args, *bn, out=out, add=add)
            w.grad = conv_wgrad.conv2d_wgrad(x, grad_out, w.shape, *args, grad_weight=w.grad)
        if sums is not None:
            link.publish(grad_in, sums)
        if self.bias is not None:
            self.bias.grad = conv_wgrad.conv2d_bias_grad(grad_out, grad_bias=self.bias.grad)
        return grad_in

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}"
        )
        if self.padding != (0, 0):
            s += f", padding={self.padding!r}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s
