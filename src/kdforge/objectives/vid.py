"""VID (Ahn et al., CVPR 2019): a regressor predicts a Gaussian over each teacher feature; minimise its NLL.

Per layer pair, q(t | s) = N(t; μ(s), σ²) with μ a stack of three 1×1 convolutions over the student's map (mid
channels = the teacher's, as RepDistiller's and mdistiller's ``VIDLoss(s, t, t)``) and one variance per teacher
channel, σ_c² = softplus(α_c) + ε (paper Eq. 5), α initialised so that σ² starts at ``init_pred_var``. The loss of a
pair is the mean over every element of ½((t − μ)²/σ² + log σ²) (the NLL up to a constant); pairs are summed, as
both references do. A map of another resolution is average-pooled to the smaller one first (the reference's rule).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.errors import ConfigError, ShapeMismatchError
from kdforge.objectives.base import BuildContext, PairContext, register_objective
from kdforge.objectives.layers import default_layer_rules, feature_pairs, layer_pairs, with_default_layers

# -- helpers shared by the objectives with built modules (vid, crd, reviewkd) ------------------------------------------


def as_map(x: Tensor) -> Tensor:
    """Any feature as a (B, C, H, W) map: an embedding (B, C) is 1×1, tokens (B, N, C) are an N×1 map."""
    if x.dim() == 2:
        return x[:, :, None, None]
    if x.dim() == 3:
        return x.transpose(1, 2).unsqueeze(-1)
    return x


def paired_maps(term: str, s: Tensor, t: Tensor, names: tuple[str, str]) -> tuple[Tensor, Tensor]:
    """Both sides of a pair as maps; the layouts must agree (maps, tokens) unless one side is an embedding."""
    if s.dim() not in (2, 3, 4) or t.dim() not in (2, 3, 4) or (s.dim() != t.dim() and 2 not in (s.dim(), t.dim())):
        raise ShapeMismatchError(
            f"objectives.{term}: student {names[0]!r} {tuple(s.shape)} vs teacher {names[1]!r} {tuple(t.shape)}: "
            "expected the same layout on both sides (maps (B, C, H, W), tokens (B, N, C)) or an embedding (B, C)"
        )
    if s.shape[0] != t.shape[0]:
        raise ShapeMismatchError(
            f"objectives.{term}: student {names[0]!r} has batch {s.shape[0]} but teacher {names[1]!r} {t.shape[0]}"
        )
    return as_map(s), as_map(t)


def pool_to_smaller(s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool whichever map is larger to the other's resolution (VID's rule for stages of unequal size)."""
    size = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
    if tuple(s.shape[2:]) != size:
        s = F.adaptive_avg_pool2d(s, size)
    if tuple(t.shape[2:]) != size:
        t = F.adaptive_avg_pool2d(t, size)
    return s, t


# -- VID --------------------------------------------------------------------------------------------------------------


def gaussian_nll(mean: Tensor, target: Tensor, variance: Tensor) -> Tensor:
    """Mean over every element of ½((target − mean)²/σ² + log σ²); ``variance`` is (C,), one per channel."""
    var = variance.view(1, -1, 1, 1)
    return (0.5 * ((mean - target) ** 2 / var + torch.log(var))).mean()


def conv1x1(c_in: int, c_out: int) -> nn.Conv2d:
    """The reference's bias-free 1×1 convolution."""
    return nn.Conv2d(c_in, c_out, kernel_size=1, bias=False)


class VIDHead(nn.Module):
    """One pair's regressor μ(s) (1×1 conv, ReLU, 1×1 conv, ReLU, 1×1 conv) and per-channel variance parameter α."""

    def __init__(self, c_s: int, c_mid: int, c_t: int, init_pred_var: float = 5.0, eps: float = 1e-5):
        super().__init__()
        self.regressor = nn.Sequential(
            conv1x1(c_s, c_mid), nn.ReLU(), conv1x1(c_mid, c_mid), nn.ReLU(), conv1x1(c_mid, c_t)
        )
        # softplus(α) + ε = init_pred_var at the start, as the reference initialises it.
        self.log_scale = nn.Parameter(torch.full((c_t,), math.log(math.expm1(init_pred_var - eps))))
        self.eps = eps

    def variance(self) -> Tensor:
        """σ² per teacher channel: softplus(α) + ε."""
        return F.softplus(self.log_scale.float()) + self.eps

    def forward(self, s: Tensor, t: Tensor) -> Tensor:
        """The pair's NLL for student map ``s`` and teacher map ``t`` (pooled to the smaller resolution)."""
        s, t = pool_to_smaller(s, t)
        return gaussian_nll(self.regressor(s).float(), t.float(), self.variance())


def _vid_params(params: Mapping[str, Any]) -> dict[str, Any]:
    return with_default_layers(params, "uniform")


def build_vid(params: Mapping[str, Any], ctx: BuildContext) -> nn.Module:
    """One VIDHead per layer pair, sized from the first batch's feature shapes."""
    params = _vid_params(params)
    eps, init_var, mid = float(params["eps"]), float(params["init_pred_var"]), int(params["mid_channels"])
    if eps <= 0 or init_var <= eps:
        raise ConfigError(
            f"objectives.{ctx.term}: init_pred_var={init_var} and eps={eps}: expected 0 < eps < init_pred_var"
        )
    if mid < 0:
        raise ConfigError(f"objectives.{ctx.term}.mid_channels={mid}: expected >= 0 (0 = the teacher's channels)")
    heads = []
    for (s, t), names in zip(ctx.features(params), layer_pairs(ctx.term, params), strict=True):
        s, t = paired_maps(ctx.term, s, t, names)
        c_t = int(t.shape[1])
        heads.append(VIDHead(int(s.shape[1]), mid or c_t, c_t, init_var, eps))
    return nn.ModuleList(heads)


def vid_terms(term: str, pair: PairContext, params: Mapping[str, Any]) -> list[Tensor]:
    """Each layer pair's NLL through its built head."""
    params = _vid_params(params)
    heads = pair.connector
    names = layer_pairs(term, params)
    if heads is None or len(heads) != len(names):
        raise ConfigError(f"objectives.{term}: its regressors were not built for this layer map; call prepare first")
    out = []
    for head, (s, t), pair_names in zip(
        heads, feature_pairs(term, params, pair.student.features, pair.teacher.features), names, strict=True
    ):
        s, t = paired_maps(term, s, t, pair_names)
        if s.shape[1] != head.regressor[0].in_channels or t.shape[1] != head.log_scale.numel():
            raise ShapeMismatchError(
                f"objectives.{term}: student {pair_names[0]!r} {tuple(s.shape)} / teacher {pair_names[1]!r} "
                f"{tuple(t.shape)}: the regressor was built for {head.regressor[0].in_channels} -> "
                f"{head.log_scale.numel()} channels"
            )
        out.append(head(s, t.detach()))
    return out


_NEEDS, _RESOLVE = default_layer_rules("vid", "uniform")


@register_objective("vid", teacher=False, needs=_NEEDS, inputs="pair", build=build_vid, resolve=_RESOLVE)
def vid(
    pair: PairContext,
    *,
    layers: Any = None,
    mid_channels: int = 0,
    init_pred_var: float = 5.0,
    eps: float = 1e-5,
) -> Tensor:
    """VID: Gaussian NLL of the teacher's features under a regressor of the student's, with learned variance."""
    params = {"layers": layers, "mid_channels": mid_channels, "init_pred_var": init_pred_var, "eps": eps}
    return torch.stack(vid_terms("vid", pair, params)).sum()
