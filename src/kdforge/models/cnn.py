"""A small VGG-like CNN for 28×28 / 32×32 images; wide enough to teach, narrow enough to learn."""

from __future__ import annotations

from torch import nn

from kdforge.models.shapes import image_channels
from kdforge.registry import MODELS


def conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    """A 3×3 same-padding conv, BatchNorm and ReLU."""
    # The conv bias is redundant: BatchNorm's shift replaces it.
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@MODELS.register("cnn")
def cnn(
    num_classes: int,
    input_shape: tuple[int, ...],
    # A last width of 160 rather than 128 lifts the default from 288k to the 300k-500k a teacher wants.
    widths: tuple[int, ...] = (32, 64, 160),
    double: bool = True,
    dropout: float = 0.0,
) -> nn.Module:
    """Per width: conv-BN-ReLU (twice if ``double``) and a 2× max-pool; then global pool, dropout, Linear."""
    widths = tuple(int(w) for w in widths)
    cin = image_channels("cnn", input_shape, min_side=2 ** len(widths))
    layers: list[nn.Module] = []
    for width in widths:
        layers += conv_bn_relu(cin, width)
        if double:
            layers += conv_bn_relu(width, width)
        layers.append(nn.MaxPool2d(2))
        cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, num_classes)]
    model = nn.Sequential(*layers)
    # Each width ends at its pooling: the maps an automatic layer map pairs (kdforge.models.stages).
    model.feature_stages = [str(i) for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d)]
    return model
