"""Building blocks with a skip connection, and the weight initialisations the models share.

``BasicBlock`` (ResNet-18/34) and ``InvertedResidual`` (MobileNetV2) carry torchvision's child
names, so their ``state_dict`` keys are torchvision's. Each has its own backward: the gradient
that reaches the block's input is the main path's input gradient plus the skip path's, summed
in place by ``kernels.elementwise.accumulate_``.
"""

from __future__ import annotations

import math

import torch

from tritoncnn import nn
from tritoncnn.kernels import elementwise as ew
from tritoncnn.kernels.layout import to_channels_last, to_contiguous


def _make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision's channel rounding for width multipliers (never below 90% of ``v``)."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def same_layout(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` with ``like``'s strides, so the flat elementwise kernels can pair them.

    Two dense tensors of one shape whose strides agree on every dimension of size > 1 address
    memory identically (e.g. N,C,1,1 tensors in "contiguous" vs "channels_last" strides), so a
    re-striding view is enough; otherwise one layout copy kernel runs.
    """
    if t.stride() == like.stride():
        return t
    if not all(
        a == b or n == 1 for n, a, b in zip(t.shape, t.stride(), like.stride(), strict=True)
    ):
        nhwc = t.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last)
        t = to_channels_last(t) if nhwc else to_contiguous(t)
        if t.stride() == like.stride():
            return t
    return t.as_strided(like.shape, like.stride())


def conv_bn_act(
    in_ch: int,
    out_ch: int,
    kernel_size: int = 3,
    stride: int = 1,
    groups: int = 1,
    act: type[nn.Module] | None = nn.ReLU6,
) -> nn.Sequential:
    """torchvision's ``Conv2dNormActivation``: conv (no bias, 'same' padding) -> BN -> act.

    Children are named 0, 1, 2, so keys read ``...0.weight``, ``...1.running_mean``.
    """
    pad = (kernel_size - 1) // 2
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel_size, stride, pad, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet's two-conv residual block: relu(bn2(conv2(relu(bn1(conv1(x))))) + skip(x)).

    ``skip`` is the identity, or ``downsample`` (1x1 strided conv -> BN) when the shape changes.
    The final add and ReLU run as one kernel; its backward masks with the block's output
    (relu(s) > 0 exactly where s > 0), so the pre-activation sum need not be kept.
    """

    expansion = 1
    # bn1's output goes straight into relu: nn.fusion may run them as one kernel
    BN_ACTIVATION_PAIRS = (("bn1", "relu"),)
    # each conv's output goes only to its BN: nn.fusion may take BN statistics in the conv
    CONV_BN_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"))
    # bn1's output goes through relu only into conv2: conv2's dgrad may take bn1's backward sums
    BN_CONV_CHAINS = (("bn1", "relu", "conv2"),)
    # set by nn.fusion.fuse_residual_adds: bn2 adds the skip tensor and applies the final ReLU
    # in its own apply pass (bn2's output is never stored)
    fuse_residual = False
    # set by nn.fusion.add_skip_grads_in_dgrad: conv1's dgrad adds the skip gradient in its
    # epilogue (no accumulate kernel)
    skip_grad_in_dgrad = False
    # set by nn.fusion.fold_block_relu_grads: the next block's conv1 dgrad applied this
    # block's final ReLU backward, so backward's grad_out is already the pre-ReLU gradient
    relu_grad_by_next = False

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride
        self._out: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(self.relu(self.bn1(self.conv1(x))))
        identity = x if self.downsample is None else self.downsample(x)
        if self.fuse_residual:
            self._out = self.bn2(h, residual=identity, residual_act=ew.ACT_RELU)
        else:
            out = self.bn2(h)
            self._out = ew.add(out, same_layout(identity, out), act=ew.ACT_RELU)
        return self._out

    def backward(self, grad_out: torch.Tensor) -> torch.Tensor:
        if self._out is None:
            raise RuntimeError("BasicBlock.backward called before forward")
        g = grad_out
        if not self.relu_grad_by_next:
            g = ew.activation_backward(same_layout(grad_out, self._out), self._out, ew.ACT_RELU)
        g_skip = g if self.downsample is None else self.downsample.backward(g)
        g_main = self.conv2.backward(self.bn2.backward(g))
        g_main = self.bn1.backward(self.relu.backward(g_main))
        if self.skip_grad_in_dgrad:
            return self.conv1.backward(g_main, add=g_skip)
        g_main = self.conv1.backward(g_main)
        # g_main is a fresh tensor from the conv's dgrad: safe to sum into in place.
        return ew.accumulate_(g_main, same_layout(g_skip, g_main))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: [1x1 expand -> BN -> ReLU6] -> 3x3 depthwise -> BN -> ReLU6 ->
    1x1 project -> BN, plus the input when stride is 1 and the widths match.

    The layers live in ``conv`` (a Sequential named as torchvision's), so keys read
    ``conv.0.0.weight`` (expansion conv), ..., ``conv.2.weight`` / ``conv.3.*`` (projection).
    """

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: float) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride should be 1 or 2, got {stride}")
        hidden_dim = int(round(inp * expand_ratio))
        self.stride = stride
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn_act(inp, hidden_dim, kernel_size=1))
        layers += [
            conv_bn_act(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    # set by nn.fusion.fuse_residual_adds: the projection BN adds the block's input in its own
    # apply pass (stride-1 blocks of unchanged width)
    fuse_residual = False
    # set by nn.fusion.add_skip_grads_in_dgrad: the first conv's dgrad (the 1x1 expansion's)
    # adds the skip gradient in its epilogue (no accumulate kernel)
    skip_grad_in_dgrad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.use_res_connect and self.fuse_residual):
            out = self.conv(x)
            return ew.add(out, same_layout(x, out)) if self.use_res_connect else out
        *main, bn = self.conv.children()
        h = x
        for layer in main:
            h = layer(h)
        return bn(h, residual=x)

    def backward(self, grad_out: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect and self.skip_grad_in_dgrad:
            # d(out)/d(x) through the skip is the identity: the first conv adds grad_out
            return self.conv.backward(grad_out, add=grad_out)
        g_in = self.conv.backward(grad_out)
        if self.use_res_connect:
            # d(out)/d(x) through the skip is the identity: add grad_out itself.
            g_in = ew.accumulate_(g_in, same_layout(grad_out, g_in))
        return g_in


# --- initialisation (run once at construction, on the host: not part of the training step) ---


def _set(p: nn.Parameter, values: torch.Tensor) -> None:
    with torch.no_grad():
        p.data.copy_(values.to(device=p.data.device, dtype=p.data.dtype))


def init_torchvision_(model: nn.Module, linear_std: float | None = None) -> None:
    """torchvision's ResNet / MobileNetV2 / VGG initialisation.

    Convs: kaiming normal, fan_out, ReLU gain; conv biases 0. BN: weight 1, bias 0.
    Linear: N(0, ``linear_std``) and bias 0 when ``linear_std`` is given (MobileNetV2: 0.01,
    VGG: 0.01), else torch.nn.Linear's own default is kept (ResNet).
    """
    for m in model.modules():
        name = type(m).__name__
        if name == "Conv2d":
            w = torch.empty(tuple(m.weight.shape))
            _set(m.weight, torch.nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"))
            if m._parameters.get("bias") is not None:
                _set(m.bias, torch.zeros(m.bias.shape))
        elif name in ("BatchNorm2d", "BatchNorm1d"):
            if m._parameters.get("weight") is not None:
                _set(m.weight, torch.ones(m.weight.shape))
                _set(m.bias, torch.zeros(m.bias.shape))
        elif name == "Linear" and linear_std is not None:
            _set(m.weight, torch.randn(tuple(m.weight.shape)) * linear_std)
            if m._parameters.get("bias") is not None:
                _set(m.bias, torch.zeros(m.bias.shape))


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a conv / pool along one spatial axis (floor mode, dilation 1)."""
    return math.floor((size + 2 * padding - kernel) / stride) + 1
