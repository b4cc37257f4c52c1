"""MobileNetV2 for CIFAR (Sandler et al. 2018; RepDistiller's ``mobile_half``: width 0.5, expansion 6)."""

from __future__ import annotations

from torch import Tensor, nn

from kdforge.models.cifar.init import init_weights
from kdforge.models.shapes import image_channels
from kdforge.registry import MODELS

# (expansion, out channels, repeats, first stride); expansion None means "the model's expansion".
STAGES: tuple[tuple[int | None, int, int, int], ...] = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (same padding, no bias) - BN - ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1×1 expand, 3×3 depthwise, linear 1×1 project; a residual when the shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        # The reference keeps the 1×1 expansion even at ratio 1, so the counts match only with it.
        self.conv = nn.Sequential(
            conv_bn_relu(cin, hidden, 1),
            conv_bn_relu(hidden, hidden, 3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.residual else out


class MobileNetV2(nn.Module):
    """Stride-2 stem, seven inverted-residual stages ``blocks``, 1×1 conv to 1280, pool, ``classifier``."""

    def __init__(self, width_mult: float, expansion: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        cin = int(32 * width_mult)
        self.stem = conv_bn_relu(in_channels, cin, 3, stride=2)
        stages: list[nn.Sequential] = []
        for t, c, n, s in STAGES:
            cout = int(c * width_mult)
            blocks = []
            for i in range(n):
                blocks.append(InvertedResidual(cin, cout, s if i == 0 else 1, expansion if t is None else t))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        # The reference never narrows the last conv below 1280, only widens it for width_mult > 1.
        last = max(1280, int(1280 * width_mult))
        self.head = conv_bn_relu(cin, last, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(self.pool(x).flatten(1))


@MODELS.register("mobilenetv2")
def mobilenetv2(
    num_classes: int, input_shape: tuple[int, ...], width_mult: float = 0.5, expansion: int = 6
) -> nn.Module:
    """MobileNetV2; the defaults give RepDistiller's ``mobile_half`` (0.81M params on CIFAR-100)."""
    cin = image_channels("mobilenetv2", input_shape)
    return MobileNetV2(width_mult, expansion, num_classes, cin)
