"""ReviewKD (Chen et al., CVPR 2021, "Distilling Knowledge via Knowledge Review"): deep-to-shallow fused features.

Each level i of the layer map (shallow to deep) gets an attention-based fusion (ABF) module: a 1×1 conv + BN to
``mid`` channels (min(512, the deepest student level's channels)); every level but the deepest fuses it with the
next deeper level's output, upsampled (nearest) to its size, by a 2-channel sigmoid attention map over both; the fused
map, resized (nearest) to the teacher's resolution when it differs (mdistiller's ``out_shape``), goes through a 3×3
conv + BN to the teacher's channels and is passed on as the residual of the next shallower level. The loss is the
hierarchical context loss (HCL) of each level, summed over levels:

    HCL(s, t) = (mse(s, t) + Σ_k 2^-k · mse(pool_{l_k}(s), pool_{l_k}(t))) / (1 + Σ_k 2^-k),  l = 4, 2, 1 (l < h only)

``pooled`` (default true) appends the inputs of the two classifier heads as the deepest level of an automatic map, as
the reference does with the pooled features. Its warm-up (mdistiller: 20 epochs) is the term's ``warmup_epochs``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.errors import ConfigError, ShapeMismatchError
from kdforge.models.stages import embedding_path
from kdforge.objectives.base import BuildContext, PairContext, register_objective
from kdforge.objectives.layers import default_layer_rules, feature_pairs, is_automatic, layer_pairs, with_default_layers
from kdforge.objectives.vid import paired_maps

PYRAMID = (4, 2, 1)


def hcl(student: Tensor, teacher: Tensor, pyramid: Sequence[int] = PYRAMID) -> Tensor:
    """Hierarchical context loss of one level: MSE at full size and at pooled sizes l < h, weighted 1/2, 1/4, ..."""
    h, w = student.shape[2:]
    loss, weight, total = F.mse_loss(student, teacher), 1.0, 1.0
    for level in pyramid:
        if level >= h:
            continue
        size = (level, min(level, w))
        weight /= 2.0
        loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(student, size), F.adaptive_avg_pool2d(teacher, size))
        total += weight
    return loss / total


class ABF(nn.Module):
    """Attention-based fusion of one level (parameter names as in the reference, so its weights load directly)."""

    def __init__(self, c_in: int, c_mid: int, c_out: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(c_in, c_mid, kernel_size=1, bias=False), nn.BatchNorm2d(c_mid))
        self.conv2 = nn.Sequential(
            nn.Conv2d(c_mid, c_out, kernel_size=3, stride=1, padding=1, bias=False), nn.BatchNorm2d(c_out)
        )
        self.att_conv = nn.Sequential(nn.Conv2d(c_mid * 2, 2, kernel_size=1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: Tensor, residual: Tensor | None, out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """(output at the teacher's size and channels, the fused map passed to the next shallower level)."""
        x = self.conv1(x)
        if self.att_conv is not None:
            if residual is None:
                raise ValueError("ABF: a fusing level needs the deeper level's output")
            y = F.interpolate(residual, tuple(x.shape[2:]), mode="nearest")
            z = self.att_conv(torch.cat([x, y], dim=1))
            x = x * z[:, 0:1] + y * z[:, 1:2]
        if tuple(x.shape[2:]) != tuple(out_size):
            x = F.interpolate(x, tuple(out_size), mode="nearest")
        return self.conv2(x), x


class ReviewModule(nn.Module):
    """The ABF of every level, shallow to deep (the deepest one does not fuse)."""

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int], max_mid_channels: int = 512):
        super().__init__()
        mid = min(max_mid_channels, student_channels[-1])
        last = len(student_channels) - 1
        self.abfs = nn.ModuleList(
            ABF(c_s, mid, c_t, i < last)
            for i, (c_s, c_t) in enumerate(zip(student_channels, teacher_channels, strict=True))
        )

    def forward(self, student: Sequence[Tensor], sizes: Sequence[tuple[int, int]]) -> list[Tensor]:
        """The fused student maps, shallow to deep, each at the teacher's size of its level."""
        outputs: list[Tensor] = []
        residual = None
        for abf, x, size in zip(reversed(self.abfs), reversed(student), reversed(sizes), strict=True):
            out, residual = abf(x, residual, size)
            outputs.insert(0, out)
        return outputs


def review_loss(
    module: ReviewModule, student: Sequence[Tensor], teacher: Sequence[Tensor], pyramid: Sequence[int]
) -> Tensor:
    """Σ over levels of HCL(fused student map, teacher map); all (B, C, H, W), shallow to deep."""
    fused = module(student, [tuple(t.shape[2:]) for t in teacher])
    return torch.stack([hcl(s.float(), t.float(), pyramid) for s, t in zip(fused, teacher, strict=True)]).sum()


# -- the objective ----------------------------------------------------------------------------------------------------

_NEEDS, _RESOLVE_MAP = default_layer_rules("reviewkd", "uniform")


def _resolve(params: Mapping[str, Any], models: Any) -> dict[str, Any]:
    """The automatic map, plus the two classifier inputs as the deepest level when ``pooled``."""
    automatic = is_automatic(with_default_layers(params, "uniform")["layers"])
    out = _RESOLVE_MAP(params, models)
    if automatic and params.get("pooled", True) and params.get("layers") != "embedding":
        try:
            deepest = f"{embedding_path(models.student)} -> {embedding_path(models.teacher)}"
        except ConfigError as err:
            raise ConfigError(
                f"objectives.{models.term}: pooled=true adds the classifier heads' inputs as the deepest level: {err}; "
                "set pooled: false or write the layer map out"
            ) from None
        out["layers"] = [*out["layers"], deepest]
    return out


def _pyramid(term: str, pyramid: Any) -> tuple[int, ...]:
    if pyramid is None:
        return PYRAMID
    if isinstance(pyramid, (str, bytes)) or not isinstance(pyramid, Sequence):
        raise ConfigError(f"objectives.{term}.pyramid={pyramid!r}: expected a list of pooled sizes, e.g. [4, 2, 1]")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pyramid):
        raise ConfigError(f"objectives.{term}.pyramid={list(pyramid)}: expected positive integers, e.g. [4, 2, 1]")
    return tuple(pyramid)


def _maps(term: str, pairs: list[tuple[Tensor, Tensor]], names: list[tuple[str, str]]) -> list[tuple[Tensor, Tensor]]:
    out = []
    for (s, t), pair_names in zip(pairs, names, strict=True):
        if s.dim() != t.dim():
            raise ShapeMismatchError(
                f"objectives.{term}: student {pair_names[0]!r} {tuple(s.shape)} vs teacher {pair_names[1]!r} "
                f"{tuple(t.shape)}: expected the same layout on both sides of a level"
            )
        out.append(paired_maps(term, s, t, pair_names))
    return out


def build_review(params: Mapping[str, Any], ctx: BuildContext) -> nn.Module:
    """One ABF per level, sized from the first batch's student and teacher channels."""
    params = with_default_layers(params, "uniform")
    _pyramid(ctx.term, params.get("pyramid"))
    if int(params["max_mid_channels"]) < 1:
        raise ConfigError(f"objectives.{ctx.term}.max_mid_channels={params['max_mid_channels']}: expected >= 1")
    maps = _maps(ctx.term, ctx.features(params), layer_pairs(ctx.term, params))
    return ReviewModule(
        [int(s.shape[1]) for s, _ in maps], [int(t.shape[1]) for _, t in maps], params["max_mid_channels"]
    )


@register_objective("reviewkd", teacher=False, needs=_NEEDS, inputs="pair", build=build_review, resolve=_resolve)
def reviewkd(
    pair: PairContext,
    *,
    layers: Any = None,
    pooled: bool = True,
    max_mid_channels: int = 512,
    pyramid: Any = None,
) -> Tensor:
    """ReviewKD: attention-fused student stages (deep to shallow) vs the teacher's, by hierarchical context loss."""
    params = with_default_layers({"layers": layers}, "uniform")
    module = pair.connector
    names = layer_pairs("reviewkd", params)
    if not isinstance(module, ReviewModule) or len(module.abfs) != len(names):
        raise ConfigError(
            "objectives.reviewkd: its fusion modules were not built for this layer map; call prepare first"
        )
    maps = _maps("reviewkd", feature_pairs("reviewkd", params, pair.student.features, pair.teacher.features), names)
    for abf, (s, t), (s_name, t_name) in zip(module.abfs, maps, names, strict=True):
        if s.shape[1] != abf.conv1[0].in_channels or t.shape[1] != abf.conv2[0].out_channels:
            raise ShapeMismatchError(
                f"objectives.reviewkd: student {s_name!r} {tuple(s.shape)} / teacher {t_name!r} {tuple(t.shape)}: "
                f"the fusion module was built for {abf.conv1[0].in_channels} -> {abf.conv2[0].out_channels} channels"
            )
    return review_loss(module, [s for s, _ in maps], [t.detach() for _, t in maps], _pyramid("reviewkd", pyramid))
