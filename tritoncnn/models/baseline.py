"""The seed's v28 CNN: three conv blocks and a three-layer MLP head.

Each block is conv3x3 (padding 1) -> BatchNorm2d -> activation -> MaxPool2d(2), with 32, 64,
128 filters; then flatten; Linear 512 -> BatchNorm1d -> activation -> Dropout(0.3);
Linear 256 -> BatchNorm1d -> activation -> Dropout(0.3); Linear to the classes. The flatten
width follows ``image_size`` (32 -> 4x4, 28 -> 3x3 after three floor-halvings).

The conv and hidden linear layers have no bias by default: each feeds a BatchNorm, whose
mean subtraction cancels a bias exactly in training (its gradient is zero), so it would be a
dead parameter. ``bias=True`` restores torch.nn's default.
"""

from __future__ import annotations

from collections.abc import Sequence

from tritoncnn import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name (torch.nn defaults for its parameters)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}"
        ) from None


class Baseline(nn.Sequential):
    """features (conv blocks) -> flatten -> classifier (MLP with BN and dropout)."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        filters: Sequence[int] = (32, 64, 128),
        units: Sequence[int] = (512, 256),
        activation: str = "elu",
        dropout: float = 0.3,
        bias: bool = False,
    ) -> None:
        super().__init__()
        feats: list[nn.Module] = []
        ch, size = in_channels, image_size
        for f in filters:
            feats += [
                nn.Conv2d(ch, f, 3, padding=1, bias=bias),
                nn.BatchNorm2d(f),
                make_activation(activation),
            ]
            feats.append(nn.MaxPool2d(2))
            ch, size = f, size // 2
        if size < 1:
            raise ValueError(f"image_size {image_size} is too small for {len(filters)} poolings")
        head: list[nn.Module] = []
        width = ch * size * size
        for u in units:
            head += [
                nn.Linear(width, u, bias=bias),
                nn.BatchNorm1d(u),
                make_activation(activation),
                nn.Dropout(dropout),
            ]
            width = u
        head.append(nn.Linear(width, num_classes))
        self.num_classes = num_classes
        self.features = nn.Sequential(*feats)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(*head)


def baseline(num_classes: int = 10, in_channels: int = 3, **kw) -> Baseline:
    return Baseline(num_classes, in_channels, **kw)
