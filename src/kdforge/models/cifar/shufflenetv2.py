"""ShuffleNetV2 for CIFAR (Ma et al. 2018; RepDistiller's ``ShuffleV2``, net size 1.0)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdforge.errors import ConfigError
from kdforge.models.cifar.init import init_weights
from kdforge.models.shapes import image_channels
from kdforge.registry import MODELS

# net size -> (stage widths, last conv width, basic blocks per stage after each down block)
CONFIGS: dict[float, tuple[tuple[int, int, int], int, tuple[int, int, int]]] = {
    0.5: ((48, 96, 192), 1024, (3, 7, 3)),
    1.0: ((116, 232, 464), 1024, (3, 7, 3)),
    1.5: ((176, 352, 704), 1024, (3, 7, 3)),
    2.0: ((224, 488, 976), 2048, (3, 7, 3)),
}


def channel_shuffle(x: Tensor, groups: int = 2) -> Tensor:
    """Interleave the channels of ``groups`` equal groups."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (same padding, no bias) - BN."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    )


class BasicUnit(nn.Module):
    """Split channels in half; transform one half (1×1, depthwise 3×3, 1×1); concat and shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            conv_bn(half, half, 1),
            nn.ReLU(inplace=True),
            conv_bn(half, half, 3, groups=half),
            conv_bn(half, half, 1),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        keep, change = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([keep, self.branch(change)], dim=1))


class DownUnit(nn.Module):
    """Two stride-2 branches on the whole input, each giving half of ``cout``; concat and shuffle."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        half = cout // 2
        self.left = nn.Sequential(
            conv_bn(cin, cin, 3, stride=2, groups=cin),
            conv_bn(cin, half, 1),
            nn.ReLU(inplace=True),
        )
        self.right = nn.Sequential(
            conv_bn(cin, half, 1),
            nn.ReLU(inplace=True),
            conv_bn(half, half, 3, stride=2, groups=half),
            conv_bn(half, half, 1),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], dim=1))


class ShuffleNetV2(nn.Module):
    """Stride-1 3×3 stem of 24, ``layer1..3`` (a down unit then basic units), 1×1 conv, pool, ``fc``."""

    def __init__(self, net_size: float, num_classes: int, in_channels: int) -> None:
        super().__init__()
        widths, last, repeats = CONFIGS[net_size]
        self.stem = nn.Sequential(conv_bn(in_channels, 24, 3), nn.ReLU(inplace=True))
        cin = 24
        stages: list[nn.Sequential] = []
        for width, n in zip(widths, repeats, strict=True):
            stages.append(nn.Sequential(DownUnit(cin, width), *(BasicUnit(width) for _ in range(n))))
            cin = width
        self.layer1, self.layer2, self.layer3 = stages
        self.head = nn.Sequential(conv_bn(cin, last, 1), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(last, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.pool(self.head(x)).flatten(1))


@MODELS.register("shufflenetv2")
def shufflenetv2(num_classes: int, input_shape: tuple[int, ...], net_size: float = 1.0) -> nn.Module:
    """ShuffleNetV2; net size 1.0 is RepDistiller's ``ShuffleV2`` (1.36M params on CIFAR-100)."""
    if float(net_size) not in CONFIGS:
        raise ConfigError(f"model 'shufflenetv2': net_size must be one of {sorted(CONFIGS)}, got {net_size!r}")
    return ShuffleNetV2(float(net_size), num_classes, image_channels("shufflenetv2", input_shape))
