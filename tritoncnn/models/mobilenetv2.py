"""MobileNetV2 with torchvision's module names (``features.N...``, ``classifier.1``).

``variant="imagenet"``: torchvision's ``mobilenet_v2`` (stride-2 stem; 224x224 ends at 7x7).
``variant="cifar"``: the usual CIFAR tweak, stride 1 in the stem and in the first stride-2
stage (24 channels), so 32x32 inputs end at 4x4. Strides hold no parameters, so both
variants have torchvision's parameter count (2,236,682 with 10 classes, width 1.0).
``width_mult``, ``round_nearest`` and ``inverted_residual_setting`` are torchvision's arguments
(the CIFAR variant runs the first stride-2 stage of any setting at stride 1).
"""

from __future__ import annotations

from collections.abc import Sequence

from tritoncnn import nn
from tritoncnn.models.blocks import (
    InvertedResidual,
    _make_divisible,
    conv_bn_act,
    init_torchvision_,
)

# t (expansion), c (output channels), n (blocks), s (stride of the stage's first block)
SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
VARIANTS = ("cifar", "imagenet")


class MobileNetV2(nn.Sequential):
    """features (stem, 17 inverted residuals, 1x1 conv to ``last_channel``) -> global average
    pool -> flatten -> classifier (Dropout, Linear)."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width_mult: float = 1.0,
        variant: str = "cifar",
        dropout: float = 0.2,
        round_nearest: int = 8,
        inverted_residual_setting: Sequence[Sequence[int]] | None = None,
        image_size: int | None = None,  # accepted for build(); any size works
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        self.num_classes = num_classes
        input_channel = _make_divisible(32 * width_mult, round_nearest)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult), round_nearest)
        settings = SETTINGS if inverted_residual_setting is None else inverted_residual_setting
        if any(len(row) != 4 for row in settings):
            raise ValueError("inverted_residual_setting rows are (t, c, n, s)")
        cifar = variant == "cifar"
        first_s2 = next((i for i, row in enumerate(settings) if row[3] == 2), None)
        features: list[nn.Module] = [
            conv_bn_act(in_channels, input_channel, stride=1 if cifar else 2)
        ]
        for i, (t, c, n, s) in enumerate(settings):
            if cifar and i == first_s2:
                s = 1  # keep 32x32 inputs at 4x4 at the end, not 1x1
            output_channel = _make_divisible(c * width_mult, round_nearest)
            for j in range(n):
                features.append(
                    InvertedResidual(input_channel, output_channel, s if j == 0 else 1, t)
                )
                input_channel = output_channel
        features.append(conv_bn_act(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes)
        )
        init_torchvision_(self, linear_std=0.01)

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}"


def mobilenetv2(num_classes: int = 10, in_channels: int = 3, **kw) -> MobileNetV2:
    return MobileNetV2(num_classes, in_channels, **kw)
