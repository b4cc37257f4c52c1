"""Wide ResNets (Zagoruyko & Komodakis 2016, as in RepDistiller): pre-activation blocks, widen factor k."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.models.cifar.init import init_weights
from kdforge.models.shapes import image_channels
from kdforge.registry import MODELS


class PreActBlock(nn.Module):
    """BN-ReLU-conv3×3 twice; a 1×1 conv shortcut from the pre-activated input when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        # As in the reference, a projecting shortcut sees the activated input, an identity one the raw input.
        return out + (x if self.shortcut is None else self.shortcut(act))


class WideResNet(nn.Module):
    """Stem conv, ``block1..3`` of (depth-4)/6 pre-act blocks at widths 16k-32k-64k, BN-ReLU, ``fc``."""

    def __init__(self, depth: int, k: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"Wide ResNet depth must be 6n+4 with n >= 1, got {depth}")
        blocks_per_stage = (depth - 4) // 6
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        cin = 16
        stages: list[nn.Sequential] = []
        for i, width in enumerate((16 * k, 32 * k, 64 * k)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(blocks_per_stage):
                blocks.append(PreActBlock(cin, width, stride if j == 0 else 1))
                cin = width
            stages.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(cin)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.stem(x))))
        return self.fc(self.pool(F.relu(self.bn(x))).flatten(1))


@MODELS.register("wrn_16_1")
def wrn_16_1(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """WRN-16-1."""
    return WideResNet(16, 1, num_classes, image_channels("wrn_16_1", input_shape))


@MODELS.register("wrn_16_2")
def wrn_16_2(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """WRN-16-2."""
    return WideResNet(16, 2, num_classes, image_channels("wrn_16_2", input_shape))


@MODELS.register("wrn_40_1")
def wrn_40_1(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """WRN-40-1."""
    return WideResNet(40, 1, num_classes, image_channels("wrn_40_1", input_shape))


@MODELS.register("wrn_40_2")
def wrn_40_2(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """WRN-40-2."""
    return WideResNet(40, 2, num_classes, image_channels("wrn_40_2", input_shape))
