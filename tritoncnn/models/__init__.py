"""The model zoo: ``build(name, ...)`` and ``names()``.

Every model is a ``tritoncnn.nn`` module (``model(x)`` maps N,C,H,W to N,classes logits;
``model.backward(g)`` returns the input gradient and fills each parameter's ``.grad``) whose
state_dict keys are its torch twin's (``tritoncnn.export.to_torch``); the ResNets and
MobileNetV2 use torchvision's names.
"""

from __future__ import annotations

from collections.abc import Callable

from tritoncnn.nn.module import Module


def _registry() -> dict[str, Callable[..., Module]]:
    from tritoncnn.models.baseline import baseline
    from tritoncnn.models.mobilenetv2 import mobilenetv2
    from tritoncnn.models.resnet import resnet18, resnet34
    from tritoncnn.models.vgg import vgg16_bn

    return {
        "baseline": baseline,
        "resnet18": resnet18,
        "resnet34": resnet34,
        "mobilenetv2": mobilenetv2,
        "vgg16_bn": vgg16_bn,
    }


ALIASES = {"mobilenet_v2": "mobilenetv2", "vgg16": "vgg16_bn", "seed": "baseline"}

# Models whose layer widths follow the image size (flattened conv features); the others pool
# globally and accept any size, so they ignore ``image_size``.
_USES_IMAGE_SIZE = ("baseline", "vgg16_bn")


def names() -> list[str]:
    """The registered model names (aliases not included)."""
    return sorted(_registry())


def build(
    name: str,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    fuse: bool = True,
    **kw,
) -> Module:
    """Construct model ``name`` with its own keyword arguments ``kw`` (e.g. ``variant``,
    ``width_mult``, ``widths``, ``filters``, ``dropout``); parameters start on the kernel device.

    ``fuse``: each BatchNorm applies the activation after it in its own kernels
    (``nn.fusion``; same function, same state_dict and twin, fewer launches and memory passes).
    """
    key = ALIASES.get(name, name)
    registry = _registry()
    if key not in registry:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(names())}")
    if key in _USES_IMAGE_SIZE:
        kw["image_size"] = image_size
    model = registry[key](num_classes=num_classes, in_channels=in_channels, **kw)
    if fuse:
        from tritoncnn.nn.fusion import fuse_bn_activations

        fuse_bn_activations(model)
    return model.to_device()


__all__ = ["build", "names"]
