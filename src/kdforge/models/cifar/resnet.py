"""CIFAR ResNets (He et al. 2016, as in RepDistiller): a 3×3 stem and three stages of BasicBlocks."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.models.cifar.init import init_weights
from kdforge.models.shapes import image_channels
from kdforge.registry import MODELS

BASE = (16, 16, 32, 64)
X4 = (32, 64, 128, 256)


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers plus an identity or 1×1 conv-BN shortcut, ReLU after the sum."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv-BN-ReLU, stages ``layer1..3`` (strides 1, 2, 2) of (depth-2)/6 blocks, pool, ``fc``."""

    feature_stages = ("layer1", "layer2", "layer3")  # what an automatic layer map pairs

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int, in_channels: int):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        cin = widths[0]
        stages: list[nn.Sequential] = []
        for i, width in enumerate(widths[1:]):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(blocks_per_stage):
                blocks.append(BasicBlock(cin, width, stride if j == 0 else 1))
                cin = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


def _resnet(
    name: str, depth: int, widths: tuple[int, int, int, int], num_classes: int, shape: tuple[int, ...]
) -> CifarResNet:
    return CifarResNet(depth, widths, num_classes, image_channels(name, shape))


@MODELS.register("resnet8")
def resnet8(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """ResNet-8, widths 16-16-32-64."""
    return _resnet("resnet8", 8, BASE, num_classes, input_shape)


@MODELS.register("resnet14")
def resnet14(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """ResNet-14, widths 16-16-32-64."""
    return _resnet("resnet14", 14, BASE, num_classes, input_shape)


@MODELS.register("resnet20")
def resnet20(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """ResNet-20, widths 16-16-32-64."""
    return _resnet("resnet20", 20, BASE, num_classes, input_shape)


@MODELS.register("resnet32")
def resnet32(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """ResNet-32, widths 16-16-32-64."""
    return _resnet("resnet32", 32, BASE, num_classes, input_shape)


@MODELS.register("resnet44")
def resnet44(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """ResNet-44, widths 16-16-32-64."""
    return _resnet("resnet44", 44, BASE, num_classes, input_shape)


@MODELS.register("resnet56")
def resnet56(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """ResNet-56, widths 16-16-32-64."""
    return _resnet("resnet56", 56, BASE, num_classes, input_shape)


@MODELS.register("resnet110")
def resnet110(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """ResNet-110, widths 16-16-32-64."""
    return _resnet("resnet110", 110, BASE, num_classes, input_shape)


@MODELS.register("resnet8x4")
def resnet8x4(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """ResNet-8 with 4× wider stages: stem 32, stages 64-128-256."""
    return _resnet("resnet8x4", 8, X4, num_classes, input_shape)


@MODELS.register("resnet32x4")
def resnet32x4(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """ResNet-32 with 4× wider stages: stem 32, stages 64-128-256."""
    return _resnet("resnet32x4", 32, X4, num_classes, input_shape)
