"""Connectors: small learnable projectors from a student tensor into the teacher's space, built on the first batch.

Feature maps are (B, C, H, W), token sequences (B, N, C), embeddings (B, C). ``linear`` / ``conv1x1`` / ``mlp`` map
channels and, for maps of another resolution, resize to the teacher's; ``attention`` maps any of these shapes onto any
other with learned queries (one per teacher position) attending over the student's positions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.errors import ShapeMismatchError
from kdforge.registry import CONNECTORS


class Resize(nn.Module):
    """Resize (B, C, H, W) maps to ``size``: average pooling when shrinking, bilinear interpolation when growing."""

    def __init__(self, size: tuple[int, int]):
        super().__init__()
        self.size = tuple(size)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` at the teacher's resolution."""
        if tuple(x.shape[2:]) == self.size:
            return x
        if x.shape[2] >= self.size[0] and x.shape[3] >= self.size[1]:
            return F.adaptive_avg_pool2d(x, self.size)
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)


class Pool(nn.Module):
    """(B, C, H, W) maps or (B, N, C) tokens → (B, C) by averaging positions."""

    def forward(self, x: Tensor) -> Tensor:
        """The mean over every position."""
        return x.flatten(2).mean(-1) if x.dim() == 4 else x.mean(1)


def _check(kind: str, student: Tensor, teacher: Tensor) -> None:
    if student.dim() not in (2, 3, 4) or teacher.dim() not in (2, 3, 4):
        raise ShapeMismatchError(
            f"connector {kind!r}: student feature {tuple(student.shape)} and teacher feature {tuple(teacher.shape)}: "
            "expected embeddings (B, C), tokens (B, N, C) or maps (B, C, H, W)"
        )


def _channel_map(kind: str, student: Tensor, teacher: Tensor, make: type[nn.Module] | None = None) -> list[nn.Module]:
    """Modules that bring ``student`` to the teacher's layout (resize or pool) before a channel map."""
    _check(kind, student, teacher)
    if student.dim() == teacher.dim() == 4:
        return [] if student.shape[2:] == teacher.shape[2:] else [Resize(tuple(teacher.shape[2:]))]
    if student.dim() == teacher.dim() == 3 and student.shape[1] != teacher.shape[1]:
        raise ShapeMismatchError(
            f"connector {kind!r}: student tokens {tuple(student.shape)} and teacher tokens {tuple(teacher.shape)} "
            "differ in length; use connector 'attention'"
        )
    if student.dim() > 2 and teacher.dim() == 2:
        return [Pool()]
    if student.dim() != teacher.dim():
        raise ShapeMismatchError(
            f"connector {kind!r}: student feature {tuple(student.shape)} and teacher feature {tuple(teacher.shape)} "
            "have different layouts; use connector 'attention'"
        )
    return []


def _width(x: Tensor) -> int:
    return int(x.shape[1] if x.dim() == 4 else x.shape[-1])


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
    """A linear map over channels: the last dimension, or a 1×1 convolution for (B, C, H, W) maps (resized first)."""
    pre = _channel_map("linear", student, teacher)
    c_s, c_t = _width(student), _width(teacher)
    core: nn.Module = nn.Conv2d(c_s, c_t, 1) if student.dim() == teacher.dim() == 4 else nn.Linear(c_s, c_t)
    return nn.Sequential(*pre, core) if pre else core


def _conv_bn(kind: str, student: Tensor, teacher: Tensor) -> list[nn.Module]:
    if student.dim() != 4 or teacher.dim() != 4:
        raise ShapeMismatchError(
            f"connector {kind!r} needs (B, C, H, W) maps on both sides, got student {tuple(student.shape)} and "
            f"teacher {tuple(teacher.shape)}"
        )
    pre = _channel_map(kind, student, teacher)
    c_s, c_t = _width(student), _width(teacher)
    return [*pre, nn.Conv2d(c_s, c_t, kernel_size=1, bias=False), nn.BatchNorm2d(c_t)]


@CONNECTORS.register("conv1x1")
def conv1x1(student: Tensor, teacher: Tensor) -> nn.Module:
    """1×1 convolution + batch norm over (B, C, H, W) maps, resized to the teacher's (FitNet's regressor, no ReLU)."""
    return nn.Sequential(*_conv_bn("conv1x1", student, teacher))


@CONNECTORS.register("conv1x1_relu")
def conv1x1_relu(student: Tensor, teacher: Tensor) -> nn.Module:
    """``conv1x1`` + ReLU: the regressor of mdistiller / RepDistiller / torchdistill FitNet, for a post-ReLU hint."""
    # FitNets (eq. 3) ends the regressor in the hint layer's own non-linearity: predictions below 0 are not penalised.
    return nn.Sequential(*_conv_bn("conv1x1_relu", student, teacher), nn.ReLU())


class ChannelsLast(nn.Module):
    """Apply ``inner`` (a map over the last dimension) to the channels of (B, C, H, W) maps."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        """``inner`` over channels; other layouts pass straight through."""
        if x.dim() != 4:
            return self.inner(x)
        return self.inner(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


@CONNECTORS.register("mlp")
def mlp(student: Tensor, teacher: Tensor) -> nn.Module:
    """Linear → GELU → linear over channels (resized or pooled to the teacher's layout first)."""
    pre = _channel_map("mlp", student, teacher)
    c_s, c_t = _width(student), _width(teacher)
    core = nn.Sequential(nn.Linear(c_s, c_t), nn.GELU(), nn.Linear(c_t, c_t))
    pooled = bool(pre) and isinstance(pre[0], Pool)
    return nn.Sequential(*pre, core if pooled or student.dim() != 4 else ChannelsLast(core))


def _tokens(x: Tensor) -> Tensor:
    """Any layout as (B, N, C) tokens."""
    if x.dim() == 4:
        return x.flatten(2).transpose(1, 2)
    return x.unsqueeze(1) if x.dim() == 2 else x


class AttentionProjector(nn.Module):
    """Learned queries, one per teacher position, attend over the student's positions (a cross-attention projector).

    Maps any layout onto any other — a CNN's maps onto a transformer's tokens, tokens onto an embedding — which is
    what cross-architecture feature matching needs when positions do not correspond one to one.
    """

    def __init__(self, c_s: int, c_t: int, n_s: int, n_t: int, teacher_shape: tuple[int, ...], heads: int = 4):
        super().__init__()
        heads = math.gcd(heads, c_t) or 1
        self.inp = nn.Linear(c_s, c_t)
        self.student_pos = nn.Parameter(torch.zeros(1, n_s, c_t))
        self.queries = nn.Parameter(torch.randn(1, n_t, c_t) * 0.02)
        self.attend = nn.MultiheadAttention(c_t, heads, batch_first=True)
        self.out = nn.Linear(c_t, c_t)
        self.teacher_shape = tuple(teacher_shape)  # (C,), (N, C) or (C, H, W) without the batch

    def forward(self, x: Tensor) -> Tensor:
        """The student tensor in the teacher's shape."""
        tokens = _tokens(x)
        if tokens.shape[1] != self.student_pos.shape[1]:
            raise ShapeMismatchError(
                f"connector 'attention' was built for {self.student_pos.shape[1]} student positions, got "
                f"{tokens.shape[1]} ({tuple(x.shape)}); it needs inputs of one length (pad token batches to max_len)"
            )
        tokens = self.inp(tokens) + self.student_pos
        queries = self.queries.expand(x.shape[0], -1, -1)
        y = self.out(self.attend(queries, tokens, tokens, need_weights=False)[0])
        if len(self.teacher_shape) == 1:
            return y[:, 0]
        if len(self.teacher_shape) == 3:
            c, h, w = self.teacher_shape
            return y.transpose(1, 2).reshape(x.shape[0], c, h, w)
        return y


@CONNECTORS.register("attention")
def attention(student: Tensor, teacher: Tensor) -> nn.Module:
    """A cross-attention projector: any student layout (maps, tokens, embedding) onto the teacher's."""
    _check("attention", student, teacher)
    s, t = _tokens(student), _tokens(teacher)
    return AttentionProjector(int(s.shape[-1]), int(t.shape[-1]), int(s.shape[1]), int(t.shape[1]), teacher.shape[1:])


def build_connector(kind: str, student: Tensor, teacher: Tensor) -> nn.Module:
    """The registered connector ``kind`` sized from one batch's student and teacher tensors, on the student's device."""
    return CONNECTORS.get(kind)(student.detach(), teacher.detach()).to(student.device)
