"""Connectors: small learnable projectors from a student tensor into the teacher's space, built on the first batch."""

from __future__ import annotations

from torch import Tensor, nn

from kdforge.errors import ShapeMismatchError
from kdforge.registry import CONNECTORS


def _channels(student: Tensor, teacher: Tensor, kind: str) -> tuple[int, int]:
    if student.dim() != teacher.dim() or (student.dim() == 4 and student.shape[2:] != teacher.shape[2:]):
        raise ShapeMismatchError(
            f"connector {kind!r}: student feature {tuple(student.shape)} and teacher feature {tuple(teacher.shape)} "
            "differ in more than the channel dimension"
        )
    dim = 1 if student.dim() == 4 else -1
    return student.shape[dim], teacher.shape[dim]


@CONNECTORS.register("identity")
def identity(student: Tensor, teacher: Tensor) -> nn.Module:
    """No projection: the student tensor must already have the teacher's shape."""
    if student.shape[1:] != teacher.shape[1:]:
        raise ShapeMismatchError(
            f"connector 'identity': student feature {tuple(student.shape)} and teacher feature "
            f"{tuple(teacher.shape)} differ; use connector 'linear' or 'conv1x1'"
        )
    return nn.Identity()


@CONNECTORS.register("linear")
def linear(student: Tensor, teacher: Tensor) -> nn.Module:
    """A linear map over the last dimension ((B, ..., C_s) → (B, ..., C_t)); over channels for (B, C, H, W) maps."""
    c_s, c_t = _channels(student, teacher, "linear")
    if student.dim() == 4:
        return nn.Conv2d(c_s, c_t, kernel_size=1, bias=True)
    return nn.Linear(c_s, c_t)


@CONNECTORS.register("conv1x1")
def conv1x1(student: Tensor, teacher: Tensor) -> nn.Module:
    """1×1 convolution + batch norm over (B, C, H, W) feature maps (FitNet's regressor)."""
    if student.dim() != 4:
        raise ShapeMismatchError(f"connector 'conv1x1' needs (B, C, H, W) features, got {tuple(student.shape)}")
    c_s, c_t = _channels(student, teacher, "conv1x1")
    return nn.Sequential(nn.Conv2d(c_s, c_t, kernel_size=1, bias=False), nn.BatchNorm2d(c_t))


@CONNECTORS.register("mlp")
def mlp(student: Tensor, teacher: Tensor) -> nn.Module:
    """Linear → GELU → linear over the last dimension."""
    c_s, c_t = _channels(student, teacher, "mlp")
    return nn.Sequential(nn.Linear(c_s, c_t), nn.GELU(), nn.Linear(c_t, c_t))


def build_connector(kind: str, student: Tensor, teacher: Tensor) -> nn.Module:
    """The registered connector ``kind`` sized from one batch's student and teacher tensors, on the student's device."""
    return CONNECTORS.get(kind)(student, teacher).to(student.device)
