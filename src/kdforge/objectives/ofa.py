"""OFA-KD (Hao et al., "One-for-All: Bridge the Gap Between Heterogeneous Architectures in KD", NeurIPS 2023).

A cross-architecture teacher's features do not resemble the student's (a CNN's maps, a ViT's tokens, an MLP's
vectors), so OFA compares no features: a branch per student stage projects that stage's features into the logit
space, and every branch's logits (and the student's own) learn the teacher's prediction through the OFA loss, which
sharpens the target class by the exponent ε: −Σ_c [(p_t + y)^ε − y]_c · log p_s,c (reference: Hao840/OFAKD
distillers/ofa.py, ``ofa_loss``; its CLI default ε = 1, its README trains ImageNet CNN students with 1.5, CIFAR-100
ones with 1.0). Branches, as in the reference: maps (B, C, H, W) → one depthwise-separable stride-2 block per later
stage (the last one widening to ``width``; the deepest stage a 1×1 conv instead) → global pool → linear; tokens
(B, N, C) → 2×2 patch merging down to a 7×7 grid (square grids only) → pre-norm transformer blocks → mean over tokens
→ linear; vectors (B, C) → linear.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.errors import ConfigError, ShapeMismatchError
from kdforge.models.stages import feature_stages, head_path
from kdforge.objectives.base import BuildContext, ModelsContext, PairContext, register_objective
from kdforge.objectives.functional import IGNORE
from kdforge.signals import DenseSignal, Needs, SparseSignal

FINAL_GRID = 7  # token branches merge patches down to a 7×7 grid, as the reference does ("49 patches")
HEADS = 4  # attention heads of a token branch's blocks (the reference's Block(num_heads=4))


def _wide(x: Tensor) -> Tensor:
    """Half-precision logits in float32; float32 and float64 as they are."""
    return x if x.dtype == torch.float64 else x.float()


def ofa_loss(student: Tensor, teacher: Tensor, target: Tensor, eps: float, T: float = 1.0) -> Tensor:
    """The OFA loss −Σ_c [(p_t + y)^ε − y]_c · log softmax(s/T)_c, averaged over the rows (no T² factor)."""
    p_t = F.softmax(_wide(teacher) / T, dim=-1)
    # log_softmax rather than the reference's log(softmax): the same value, finite where a probability underflows.
    log_p_s = F.log_softmax(_wide(student) / T, dim=-1)
    weight = (p_t + target).pow(eps) - target
    return -(weight * log_p_s).sum(-1).mean()


def target_mask(labels: Tensor, logits: Tensor) -> Tensor:
    """One-hot rows y of the labels (soft labels: of their argmax, as the reference does; -100: a zero row)."""
    n, classes = logits.shape
    if labels.dim() == 2 and labels.is_floating_point() and tuple(labels.shape) == (n, classes):
        return F.one_hot(labels.argmax(-1), classes).float()
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ShapeMismatchError(
            f"objectives.ofa: labels of shape {tuple(labels.shape)} do not fit logits {tuple(logits.shape)}: expected "
            "one class id per sample (or one row of soft labels)"
        )
    valid = labels != IGNORE
    out = F.one_hot(labels.clamp(min=0).long(), classes).float()
    return out * valid.unsqueeze(-1)


# -- parameters ------------------------------------------------------------------------------------------------------


def _stage_list(stages: Any) -> list[str]:
    """The stage paths of the ``stages`` parameter ([] while it is still automatic)."""
    if stages is None or stages == "":
        return []
    items = [stages] if isinstance(stages, str) else stages
    if not isinstance(items, Sequence) or not all(isinstance(s, str) and s.strip() for s in items):
        raise ConfigError(f"objectives.ofa.stages={stages!r}: expected a list of student module paths")
    return [s.strip() for s in items]


def _epsilons(term: str, eps: Any, n_stages: int, final: bool) -> list[float]:
    """One ε per branch (the stages, then the final logits): a single value is shared by all."""
    branches = n_stages + int(final)
    values = list(eps) if isinstance(eps, (list, tuple)) else [eps]
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values):
        raise ConfigError(f"objectives.{term}.eps={eps!r}: expected a positive number or a list of them")
    if len(values) == 1:
        return [float(values[0])] * branches
    if len(values) != branches:
        raise ConfigError(
            f"objectives.{term}.eps: {len(values)} values for {branches} branches ({n_stages} stages"
            f"{' + the final logits' if final else ''}); expected one value or {branches}"
        )
    return [float(v) for v in values]


def _needs(params: Mapping[str, Any]) -> Needs:
    return Needs(student_features=tuple(_stage_list(params.get("stages"))))


def _head_width(model: nn.Module | None) -> int | None:
    """The width of a network's embedding: the input of its classifier head (None when it has no Linear head)."""
    if model is None:
        return None
    try:
        path = head_path(model)
    except ConfigError:
        return None
    return int(dict(model.named_modules())[path].in_features)


def _resolve(params: Mapping[str, Any], models: ModelsContext) -> dict[str, Any]:
    """Default stages (every student stage), the branch width and ε per branch, fixed before the first batch."""
    stages = params.get("stages")
    stages = feature_stages(models.student) if stages is None or stages == "" else _stage_list(stages)
    if not stages and not params.get("final", True):
        raise ConfigError(f"objectives.{models.term}: no stages and final=false leave nothing to distil")
    _epsilons(models.term, params.get("eps"), len(stages), bool(params.get("final", True)))
    if float(params.get("T", 1.0)) <= 0:
        raise ConfigError(f"objectives.{models.term}.T={params.get('T')!r}: expected a positive temperature")
    width = int(params.get("width") or 0)
    if width < 0:
        raise ConfigError(f"objectives.{models.term}.width={width}: expected a positive width (0: automatic)")
    if width == 0:
        # The reference's max(student feature dim, teacher feature dim): the wider of the two embeddings.
        width = max((w for w in (_head_width(models.student), _head_width(models.teacher)) if w), default=0)
    return {**params, "stages": list(stages), "width": width}


# -- branches --------------------------------------------------------------------------------------------------------


def sep_conv(c_in: int, c_out: int) -> nn.Sequential:
    """A depthwise-separable block that halves the resolution (the reference's SepConv, from DARTS)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, stride=2, padding=1, groups=c_in, bias=False),
        nn.Conv2d(c_in, c_in, 1, bias=False),
        nn.BatchNorm2d(c_in),
        nn.ReLU(),
        nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False),
        nn.Conv2d(c_in, c_out, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


def map_branch(channels: int, later: int, width: int, classes: int) -> nn.Sequential:
    """(B, C, H, W) → logits: ``later`` stride-2 blocks (channels doubling, the last to ``width``), pool, linear."""
    blocks: list[nn.Module] = []
    if later == 0:
        blocks.append(nn.Conv2d(channels, width, 1))
    c = channels
    for i in range(later):
        blocks.append(sep_conv(c, width if i == later - 1 else c * 2))
        c *= 2
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes))


class PatchMerging(nn.Module):
    """Swin's 2×2 patch merging over a square token grid: concatenate neighbours, LayerNorm, linear (no bias)."""

    def __init__(self, grid: int, c_in: int, c_out: int, act: bool):
        super().__init__()
        self.grid = grid
        self.norm = nn.LayerNorm(4 * c_in)
        self.reduction = nn.Linear(4 * c_in, c_out, bias=False)
        self.act = nn.GELU() if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """(B, g², C) → (B, (g/2)², C_out)."""
        b, _, c = x.shape
        x = x.view(b, self.grid, self.grid, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.act(self.reduction(self.norm(x.reshape(b, -1, 4 * c))))


class TokenBranch(nn.Module):
    """(B, N, C) → logits: patch merging to a 7×7 grid, ``later`` (≥ 1) transformer blocks, mean over tokens, linear."""

    def __init__(self, tokens: int, channels: int, later: int, width: int, classes: int):
        super().__init__()
        grid, merges = math.isqrt(tokens), 0
        if grid * grid == tokens:  # a grid of patches, no class token: merge while it halves evenly above 7×7
            g = grid
            while g % 2 == 0 and g >= 2 * FINAL_GRID:
                g, merges = g // 2, merges + 1
        merging: list[nn.Module] = [
            # As in the reference: GELU after every merge but the last, and always after the first.
            PatchMerging(grid // 2**i, channels if i == 0 else width, width, act=i == 0 or i != merges - 1)
            for i in range(merges)
        ]
        if not merging and channels != width:
            merging.append(nn.Linear(channels, width))
        self.merge = nn.Sequential(*merging)
        layer = {"nhead": math.gcd(HEADS, width), "dim_feedforward": 4 * width, "dropout": 0.0, "activation": "gelu"}
        self.blocks = nn.Sequential(
            *[nn.TransformerEncoderLayer(width, batch_first=True, norm_first=True, **layer) for _ in range(later)]
        )
        self.head = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, classes)."""
        return self.head(self.blocks(self.merge(x)).mean(1))


def make_branch(term: str, path: str, feature: Tensor, later: int, width: int, classes: int) -> nn.Module:
    """The branch for one student stage, sized from its recorded feature."""
    shape = tuple(feature.shape)
    if feature.dim() == 4:
        return map_branch(shape[1], later, width, classes)
    if feature.dim() == 3:
        # The reference's token branches keep the student's own width (its feature_dim_s), not the teacher's.
        return TokenBranch(shape[1], shape[2], max(later, 1), width, classes)
    if feature.dim() == 2:
        return nn.Linear(shape[1], classes)
    raise ShapeMismatchError(
        f"objectives.{term}: student stage {path!r} gives a feature of shape {shape}; expected maps (B, C, H, W), "
        "tokens (B, N, C) or vectors (B, C)"
    )


def init_branch(module: nn.Module) -> None:
    """The reference's initialisation: Kaiming (fan-out) convs, unit BatchNorm, truncated-normal (0.02) linears."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def build_branches(params: Mapping[str, Any], ctx: BuildContext) -> nn.Module | None:
    """A ``build`` rule: one branch per stage, sized from the first batch's features and the number of classes."""
    stages = _stage_list(params.get("stages"))
    if not stages:
        return None
    if ctx.num_classes is None:
        raise ConfigError(f"objectives.{ctx.term}: the student gives no logits; OFA needs a classifier student")
    missing = [s for s in stages if s not in ctx.student.features]
    if missing:
        raise ConfigError(f"objectives.{ctx.term}: the student returned no feature {missing[0]!r}")
    feats = [ctx.student.features[s] for s in stages]
    tokens = [f for f in feats if f.dim() == 3]
    # Token branches work at the deepest token stage's width (the student's feature_dim_s); maps at ``width``.
    # Without a Linear head to read it from, the width is the deepest stage's own.
    width = int(params.get("width") or 0) or int(feats[-1].shape[1 if feats[-1].dim() == 4 else -1])
    token_width = int(tokens[-1].shape[-1]) if tokens else width
    branches = nn.ModuleList(
        make_branch(ctx.term, path, f, len(stages) - 1 - i, token_width if f.dim() == 3 else width, ctx.num_classes)
        for i, (path, f) in enumerate(zip(stages, feats, strict=True))
    )
    init_branch(branches)
    return branches


# -- the objective ---------------------------------------------------------------------------------------------------


def _teacher_logits(pair: PairContext) -> Tensor:
    got = pair.teacher.logits
    if isinstance(got, DenseSignal):
        return got.logits
    if isinstance(got, SparseSignal):
        return got.to_dense_logits()
    raise ConfigError(f"objectives.ofa: needs the teacher's logits, got {type(got).__name__}")


@register_objective(
    "ofa", teacher=True, labels=True, needs=_needs, inputs="pair", build=build_branches, resolve=_resolve
)
def ofa(
    pair: PairContext,
    *,
    stages: Any = None,
    eps: Any = (1.0,),
    T: float = 1.0,
    final: bool = True,
    width: int = 0,
) -> Tensor:
    """OFA-KD: per-stage branches to logits, each and the final logits trained with the target-enhanced OFA loss.

    ``stages``: student stage paths (default: all of them); ``eps``: one ε, or one per stage then the final logits;
    ``final``: include the final logits' term; ``width``: the map branches' width (0: the wider embedding of student
    and teacher). The value is the sum over branches (the reference's loss_ofa + loss_kd at weights 1).
    """
    paths = _stage_list(stages)
    epsilons = _epsilons("ofa", eps, len(paths), final)
    teacher = _teacher_logits(pair)
    logits = pair.student.logits
    if logits is None or logits.dim() != 2:
        got = None if logits is None else tuple(logits.shape)
        raise ShapeMismatchError(f"objectives.ofa: student logits of shape {got}; expected (batch, classes)")
    if pair.labels is None:
        raise ConfigError("objectives.ofa: needs labels; the batch has none")
    target = target_mask(pair.labels, logits)
    if paths and pair.connector is None:
        raise ConfigError("objectives.ofa: its stage branches are not built; call it through a Distiller")
    terms = []
    for i, path in enumerate(paths):
        if path not in pair.student.features:
            raise ConfigError(f"objectives.ofa: the student returned no feature {path!r}")
        branch_logits = pair.connector[i](pair.student.features[path])
        if tuple(branch_logits.shape) != tuple(teacher.shape):
            raise ShapeMismatchError(
                f"objectives.ofa: the branch of stage {path!r} gives logits {tuple(branch_logits.shape)} but the "
                f"teacher's are {tuple(teacher.shape)}; expected one prediction per sample"
            )
        terms.append(ofa_loss(branch_logits, teacher, target, epsilons[i], T))
    if final:
        terms.append(ofa_loss(logits, teacher, target, epsilons[-1], T))
    return torch.stack(terms).sum()
