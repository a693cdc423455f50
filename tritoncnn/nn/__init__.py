"""Layers with explicit forward/backward, named and constructed like torch.nn's."""

from tritoncnn.nn.activation import ELU, LeakyReLU, ReLU, ReLU6, SiLU
from tritoncnn.nn.container import Flatten, Sequential
from tritoncnn.nn.module import Module, Parameter

# Layers in their own files, imported on first use (keeps `import tritoncnn.nn` light).
_LAZY = {
    "Conv2d": "tritoncnn.nn.conv",
    "Linear": "tritoncnn.nn.linear",
    "BatchNorm1d": "tritoncnn.nn.batchnorm",
    "BatchNorm2d": "tritoncnn.nn.batchnorm",
    "MaxPool2d": "tritoncnn.nn.pooling",
    "AvgPool2d": "tritoncnn.nn.pooling",
    "AdaptiveAvgPool2d": "tritoncnn.nn.pooling",
    "Dropout": "tritoncnn.nn.dropout",
    "CrossEntropyLoss": "tritoncnn.nn.loss",
    "fuse_bn_activations": "tritoncnn.nn.fusion",
    "unfuse_bn_activations": "tritoncnn.nn.fusion",
    "link_conv_bn_moments": "tritoncnn.nn.fusion",
    "unlink_conv_bn_moments": "tritoncnn.nn.fusion",
    "link_bn_grad_sums": "tritoncnn.nn.fusion",
    "unlink_bn_grad_sums": "tritoncnn.nn.fusion",
    "fuse_residual_adds": "tritoncnn.nn.fusion",
    "unfuse_residual_adds": "tritoncnn.nn.fusion",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tritoncnn.nn' has no attribute {name!r}")


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
    *_LAZY,
]
