"""ResNet-18/34 with torchvision's module names (so state_dict keys equal torchvision's).

``variant="cifar"``: 3x3 stride-1 stem, no max pool (32x32 inputs end at 4x4 before the pool).
``variant="imagenet"``: torchvision's 7x7 stride-2 stem + 3x3 stride-2 max pool.
``widths`` scales the four stages (torchvision: 64, 128, 256, 512); tests use narrow ones.
"""

from __future__ import annotations

from collections.abc import Sequence

from tritoncnn import nn
from tritoncnn.models.blocks import BasicBlock, init_torchvision_

DEPTHS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
VARIANTS = ("cifar", "imagenet")


class ResNet(nn.Sequential):
    """conv1 -> bn1 -> relu -> [maxpool] -> layer1..4 -> avgpool -> flatten -> fc.

    A Sequential with torchvision's child names: the forward and backward are the chain's.
    """

    def __init__(
        self,
        layers: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 10,
        in_channels: int = 3,
        variant: str = "cifar",
        widths: Sequence[int] = (64, 128, 256, 512),
        image_size: int | None = None,  # accepted for build(); any size works
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError("ResNet needs four stage depths and four stage widths")
        self.variant = variant
        self.num_classes = num_classes
        self.inplanes = widths[0]
        if variant == "cifar":
            self.conv1 = nn.Conv2d(in_channels, self.inplanes, 3, 1, 1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, self.inplanes, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        if variant == "imagenet":
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for i, (depth, width) in enumerate(zip(layers, widths, strict=True)):
            self.add_module(f"layer{i + 1}", self._make_layer(width, depth, 1 if i == 0 else 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[3] * BasicBlock.expansion, num_classes)
        init_torchvision_(self)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * BasicBlock.expansion, 1, stride, 0, bias=False),
                nn.BatchNorm2d(planes * BasicBlock.expansion),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        layers += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}"


def resnet18(num_classes: int = 10, in_channels: int = 3, **kw) -> ResNet:
    return ResNet(DEPTHS["resnet18"], num_classes, in_channels, **kw)


def resnet34(num_classes: int = 10, in_channels: int = 3, **kw) -> ResNet:
    return ResNet(DEPTHS["resnet34"], num_classes, in_channels, **kw)
