"""VGG-16 with batch norm (torchvision's ``vgg16_bn`` features) and a CIFAR-sized head.

``features`` is torchvision's layer list for configuration "D" with BN (keys
``features.0.weight``, ``features.1.running_mean``, ...). The head replaces torchvision's
7x7 pool and 4096-wide classifier by a global average pool (the identity on 32x32 inputs,
which end at 1x1) and a classifier of the same shape with ``hidden`` units (keys
``classifier.0``, ``classifier.3``, ``classifier.6`` as in torchvision).
"""

from __future__ import annotations

from collections.abc import Sequence

from tritoncnn import nn
from tritoncnn.models.blocks import init_torchvision_

CFG_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Sequential):
    """features -> avgpool (global) -> flatten -> classifier."""

    def __init__(
        self,
        cfg: Sequence[int | str] = CFG_D,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        hidden: int = 512,
        dropout: float = 0.5,
        width_div: int = 1,
    ) -> None:
        super().__init__()
        pools = sum(1 for v in cfg if v == "M")
        if image_size < 2**pools:
            raise ValueError(f"VGG's {pools} max pools need image_size >= {2**pools}")
        layers: list[nn.Module] = []
        ch = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out = max(1, int(v) // width_div)
                layers += [nn.Conv2d(ch, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(True)]
                ch = out
        self.num_classes = num_classes
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(ch, hidden),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes),
        )
        init_torchvision_(self, linear_std=0.01)


def vgg16_bn(num_classes: int = 10, in_channels: int = 3, **kw) -> VGG:
    """``width_div`` divides every conv width (tests use narrow copies)."""
    return VGG(CFG_D, num_classes, in_channels, **kw)
