"""The CIFAR model families of the distillation literature (RepDistiller / mdistiller definitions)."""

from kdforge.models.cifar import mobilenetv2, resnet, shufflenetv2, vgg, wrn

__all__ = ["mobilenetv2", "resnet", "shufflenetv2", "vgg", "wrn"]
