"""CIFAR VGGs with BatchNorm (Simonyan & Zisserman 2015, as in RepDistiller): five conv blocks, one Linear."""

from __future__ import annotations

from torch import Tensor, nn

from kdforge.models.cifar.init import init_weights
from kdforge.models.shapes import image_channels
from kdforge.registry import MODELS

# Conv widths of the five blocks; vgg8 is RepDistiller's one-conv-per-block variant.
CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def conv_block(cin: int, widths: tuple[int, ...]) -> nn.Sequential:
    """3×3 conv (with bias, as in the reference) - BN - ReLU for each width."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(cin, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        cin = width
    return nn.Sequential(*layers)


class CifarVGG(nn.Module):
    """``block0..4``, 2× max-pools after the first three (the last two run at 4×4 on CIFAR), pool, Linear."""

    def __init__(self, config: tuple[tuple[int, ...], ...], num_classes: int, in_channels: int) -> None:
        super().__init__()
        cin = in_channels
        blocks: list[nn.Sequential] = []
        for widths in config:
            blocks.append(conv_block(cin, widths))
            cin = widths[-1]
        self.block0, self.block1, self.block2, self.block3, self.block4 = blocks
        self.pool0, self.pool1, self.pool2 = nn.MaxPool2d(2), nn.MaxPool2d(2), nn.MaxPool2d(2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool0(self.block0(x))
        x = self.pool1(self.block1(x))
        x = self.pool2(self.block2(x))
        x = self.block4(self.block3(x))
        return self.classifier(self.pool(x).flatten(1))


def _vgg(name: str, num_classes: int, input_shape: tuple[int, ...]) -> CifarVGG:
    return CifarVGG(CONFIGS[name], num_classes, image_channels(name, input_shape, min_side=8))


@MODELS.register("vgg8")
def vgg8(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """VGG-8 with BN: one conv per block."""
    return _vgg("vgg8", num_classes, input_shape)


@MODELS.register("vgg11")
def vgg11(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """VGG-11 with BN."""
    return _vgg("vgg11", num_classes, input_shape)


@MODELS.register("vgg13")
def vgg13(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """VGG-13 with BN."""
    return _vgg("vgg13", num_classes, input_shape)


@MODELS.register("vgg16")
def vgg16(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """VGG-16 with BN."""
    return _vgg("vgg16", num_classes, input_shape)


@MODELS.register("vgg19")
def vgg19(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """VGG-19 with BN."""
    return _vgg("vgg19", num_classes, input_shape)
