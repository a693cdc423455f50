"""``to_torch(model)``: the same network as plain torch.nn modules, with the same state_dict.

It is the oracle of the model tests (run it in float64 with autograd and compare) and the way
to take a trained model into the torch world: the ResNets and MobileNetV2 keep torchvision's
module names, so their state_dicts load into torchvision's models of the same variant.

The conversion walks our module tree: each leaf layer becomes the torch.nn layer of the same
name built from the same constructor arguments; ``Sequential`` (and the models, which are
Sequentials with named children) becomes ``torch.nn.Sequential`` with the same child names;
the skip-connection blocks become small torch modules that compute what torchvision's do.
New module types register a converter with ``register``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn as tnn

Converter = Callable[[object], tnn.Module]
_CONVERTERS: dict[str, Converter] = {}


def register(class_name: str) -> Callable[[Converter], Converter]:
    """Decorator: ``fn(module) -> torch.nn.Module`` converts our modules named ``class_name``
    (and subclasses, unless they register their own)."""

    def deco(fn: Converter) -> Converter:
        _CONVERTERS[class_name] = fn
        return fn

    return deco


def convert(module) -> tnn.Module:
    """The torch twin of one of our modules (uninitialised: to_torch copies the state)."""
    for cls in type(module).__mro__:
        fn = _CONVERTERS.get(cls.__name__)
        if fn is not None and cls.__module__.startswith("tritoncnn"):
            twin = fn(module)
            twin.train(module.training)
            return twin
    raise TypeError(f"to_torch: no torch twin registered for {type(module).__name__}")


def to_torch(model) -> tnn.Module:
    """Plain torch.nn module computing what ``model`` computes, with a copy of its state_dict
    (on the CPU, fp32 parameters) and its train/eval mode."""
    twin = convert(model)
    state = OrderedDict((k, v.detach().to("cpu").clone()) for k, v in model.state_dict().items())
    twin.load_state_dict(state, strict=True)
    return twin


def _has(m, name: str) -> bool:
    return m._parameters.get(name) is not None


# --- leaves -------------------------------------------------------------------------------


@register("Conv2d")
def _conv(m) -> tnn.Module:
    return tnn.Conv2d(
        m.in_channels,
        m.out_channels,
        m.kernel_size,
        stride=m.stride,
        padding=m.padding,
        dilation=getattr(m, "dilation", 1),
        groups=getattr(m, "groups", 1),
        bias=_has(m, "bias"),
    )


@register("Linear")
def _linear(m) -> tnn.Module:
    return tnn.Linear(m.in_features, m.out_features, bias=_has(m, "bias"))


def _bn(cls):
    def fn(m) -> tnn.Module:
        return cls(
            m.num_features,
            eps=m.eps,
            momentum=m.momentum,
            affine=_has(m, "weight"),
            track_running_stats=getattr(m, "track_running_stats", True),
        )

    return fn


register("BatchNorm2d")(_bn(tnn.BatchNorm2d))
register("BatchNorm1d")(_bn(tnn.BatchNorm1d))


@register("MaxPool2d")
def _maxpool(m) -> tnn.Module:
    return tnn.MaxPool2d(
        m.kernel_size, m.stride, m.padding, getattr(m, "dilation", 1), ceil_mode=m.ceil_mode
    )


@register("AvgPool2d")
def _avgpool(m) -> tnn.Module:
    return tnn.AvgPool2d(
        m.kernel_size,
        m.stride,
        m.padding,
        ceil_mode=getattr(m, "ceil_mode", False),
        count_include_pad=getattr(m, "count_include_pad", True),
        divisor_override=getattr(m, "divisor_override", None),
    )


@register("AdaptiveAvgPool2d")
def _adaptive_avgpool(m) -> tnn.Module:
    return tnn.AdaptiveAvgPool2d(m.output_size)


register("ReLU")(lambda m: tnn.ReLU())
register("ReLU6")(lambda m: tnn.ReLU6())
register("SiLU")(lambda m: tnn.SiLU())
register("ELU")(lambda m: tnn.ELU(alpha=m.alpha))
register("LeakyReLU")(lambda m: tnn.LeakyReLU(negative_slope=m.negative_slope))
register("Dropout")(lambda m: tnn.Dropout(p=m.p))
register("Flatten")(lambda m: tnn.Flatten())


# --- containers and blocks --------------------------------------------------------------------


@register("Sequential")
def _sequential(m) -> tnn.Module:
    return tnn.Sequential(
        OrderedDict((name, convert(c)) for name, c in m._modules.items() if c is not None)
    )


class TorchBasicBlock(tnn.Module):
    """torchvision's BasicBlock forward: relu(bn2(conv2(relu(bn1(conv1(x))))) + skip(x))."""

    def __init__(self, conv1, bn1, conv2, bn2, downsample) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu = conv1, bn1, tnn.ReLU()
        self.conv2, self.bn2, self.downsample = conv2, bn2, downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


@register("BasicBlock")
def _basic_block(m) -> tnn.Module:
    ds = None if m.downsample is None else convert(m.downsample)
    return TorchBasicBlock(convert(m.conv1), convert(m.bn1), convert(m.conv2), convert(m.bn2), ds)


class TorchInvertedResidual(tnn.Module):
    """torchvision's InvertedResidual forward: conv(x), plus x when ``use_res_connect``."""

    def __init__(self, conv: tnn.Module, use_res_connect: bool) -> None:
        super().__init__()
        self.conv = conv
        self.use_res_connect = use_res_connect

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


@register("InvertedResidual")
def _inverted_residual(m) -> tnn.Module:
    return TorchInvertedResidual(convert(m.conv), m.use_res_connect)
