"""The model zoo: ``build(name, ...)`` and ``names()``.

Every model is a ``tritoncnn.nn`` module (``model(x)`` maps N,C,H,W to N,classes logits;
``model.backward(g)`` fills each parameter's ``.grad`` and returns the input gradient, or None
when built with ``input_grad=False``, the default) whose state_dict keys are its torch twin's
(``tritoncnn.export.to_torch``); the ResNets and MobileNetV2 use torchvision's names.
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
    input_grad: bool = False,
    conv_bn_moments: bool = True,
    bn_into_depthwise: bool = False,
    bn_grad_sums: bool = False,
    fuse_residual: bool = True,
    skip_grad_in_dgrad: bool = True,
    relu_grad_in_dgrad: bool = False,
    **kw,
) -> Module:
    """Construct model ``name`` with its own keyword arguments ``kw`` (e.g. ``variant``,
    ``width_mult``, ``widths``, ``filters``, ``dropout``); parameters start on the kernel device.

    ``fuse``: each BatchNorm applies the activation after it in its own kernels
    (``nn.fusion``; same function, same state_dict and twin, fewer launches and memory passes).
    ``conv_bn_moments``: with ``fuse``, each conv that feeds a BatchNorm also stores that
    BatchNorm's training statistics in its epilogue (one read of the activation less per
    layer: 1.7% of ResNet-18's step and 1% of MobileNetV2's on an H100).
    ``bn_into_depthwise``: with ``fuse``, each BatchNorm (+ activation) whose output feeds a
    depthwise conv (MobileNetV2's expand layers) leaves its training apply to that conv's
    loads (one write and one read of the activation less, and 21% less peak memory, but on an
    H100 MobileNetV2's step took 5% longer with the flat depthwise kernels, and 19% longer on
    an H200 when it kept the 3x3 stride-1 convs off the rolling-rows kernels; with those
    taking the pending norm, 12.075 against 12.086 ms with ``bn_grad_sums`` on an H100 on
    2026-12-07: no faster, so off by default, see benchmarks/README.md).
    ``bn_grad_sums``: with ``fuse``, each BatchNorm (+ activation) whose output feeds only a
    conv takes its backward sums from that conv's dgrad epilogue (its reduction pass, which
    read the gradient and the input, is gone, but the epilogue reads the input again). b512
    graphed step: ResNet-18 -0.5% and MobileNetV2 -0.8% on an H100, -0.3% and +1.2% on an
    H200, so off by default (benchmarks/README.md); with the halo and rolling-rows dgrads'
    sums (2026-12-07, H100) MobileNetV2 -0.1% and ResNet-18 +0.7%.
    ``fuse_residual``: with ``fuse``, each residual block's last BatchNorm adds the skip
    tensor (and ResNet's final ReLU) in its apply pass (one write and one read of the block
    output less, one launch less per block). b512 graphed step on an H200: ResNet-18 -0.3%,
    MobileNetV2 -0.2%.
    ``skip_grad_in_dgrad``: with ``fuse``, each residual block (ResNet's BasicBlock,
    MobileNetV2's InvertedResidual) adds its skip gradient in its first conv's dgrad epilogue
    (the accumulate kernel's read and write of the input gradient less per block). H200:
    ResNet-18 -1.1%, MobileNetV2 +0.1% (noise).
    ``relu_grad_in_dgrad``: with ``fuse``, each ResNet BasicBlock but the last leaves its
    final ReLU's backward to the next block's conv1 dgrad epilogue, which then also adds that
    block's skip gradient (the ReLU backward kernel's read of the gradient and the block
    output and its write less per block). H200: ResNet-18 -0.3%, slower than the skip
    gradient alone (the mask takes the dgrad epilogue from 154 to 182 registers and spills
    on the 4-warp 128x128 tile), so off by default.
    ``input_grad``: whether ``model.backward`` computes the gradient of the input images. Off
    by default, as in torch, where a data batch does not require grad: the stem's input
    gradient is a GEMM with only ``in_channels`` (3) output columns, a large and useless share
    of a small net's step.
    """
    key = ALIASES.get(name, name)
    registry = _registry()
    if key not in registry:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(names())}")
    if key in _USES_IMAGE_SIZE:
        kw["image_size"] = image_size
    model = registry[key](num_classes=num_classes, in_channels=in_channels, **kw)
    if fuse:
        from tritoncnn.nn import fusion

        fusion.fuse_bn_activations(model)
        if conv_bn_moments:
            fusion.link_conv_bn_moments(model)
        if bn_into_depthwise:
            fusion.defer_bn_into_depthwise(model)
        if bn_grad_sums:
            fusion.link_bn_grad_sums(model)
        if fuse_residual:
            fusion.fuse_residual_adds(model)
        if skip_grad_in_dgrad:
            fusion.add_skip_grads_in_dgrad(model)
        if relu_grad_in_dgrad:
            fusion.fold_block_relu_grads(model)
    stem_layer(model).input_grad = input_grad
    return model.to_device()


def stem_layer(model: Module) -> Module:
    """The layer that reads the model's input: the zoo registers it first (tests check that
    it is the first Conv2d / Linear the forward calls)."""
    from tritoncnn.nn.conv import Conv2d
    from tritoncnn.nn.linear import Linear

    for m in model.modules():
        if isinstance(m, Conv2d | Linear):
            return m
    raise ValueError(f"{type(model).__name__} has no Conv2d or Linear layer")


__all__ = ["build", "names", "stem_layer"]
