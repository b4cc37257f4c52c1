"""Relation objectives: the student matches how the teacher relates the samples of a batch to each other.

SP (similarity matrices), RKD (distances and angles), PKT (cosine-kernel probabilities) and CC (a Taylor-expanded
Gaussian kernel). Each compares a (B, B) or (B, B, B) structure built *within* each network, so the two widths never
meet and no connector is needed (CC's optional embedding heads are the method's own, not a connector).

Every sample's feature is its tensor flattened; on a token batch the padded positions of a (B, S, D) feature are
zeroed first (``pair.attention_mask``) so padding never changes a relation. ``layers`` defaults to ``embedding``: the
input of each network's classifier head (its pooled features), resolved against the two networks by the Distiller.
Several layer pairs average their losses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.errors import ConfigError, ShapeMismatchError
from kdforge.objectives.base import BuildContext, PairContext, register_objective
from kdforge.objectives.layers import (
    default_layer_rules,
    feature_pairs,
    is_automatic,
    layer_pairs,
    with_default_layers,
)

DEFAULT_LAYERS = "embedding"

# -- the math (pure functions of (B, D) float tensors) ----------------------------------------------------------------


def similarity_matrix(x: Tensor) -> Tensor:
    """SP's G = row-normalized x·xᵀ (Tung & Mori 2019)."""
    return F.normalize(x @ x.t(), p=2, dim=1)


def sp_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """SP: ‖G_t − G_s‖²_F / b² for one layer pair."""
    b = student.shape[0]
    return (similarity_matrix(teacher) - similarity_matrix(student)).pow(2).sum() / (b * b)


def pairwise_distances(x: Tensor, squared: bool = False, eps: float = 1e-12) -> Tensor:
    """Euclidean distances between the rows of x (squared when asked); the diagonal is exactly 0."""
    sq = x.pow(2).sum(dim=1)
    # Clamped before the square root: a zero distance would give an infinite gradient.
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * x @ x.t()).clamp(min=eps)
    if not squared:
        d = d.sqrt()
    return d * (1 - torch.eye(len(x), dtype=d.dtype, device=d.device))


def rkd_distance_loss(student: Tensor, teacher: Tensor, squared: bool = False, eps: float = 1e-12) -> Tensor:
    """RKD-D: Huber loss between distances normalized by their mean over distinct pairs (Park et al. 2019)."""

    def normalized(x: Tensor) -> Tensor:
        d = pairwise_distances(x, squared, eps)
        return d / d[d > 0].mean()

    # Mean over all b² entries (the zero diagonal included), as the authors' code reduces it.
    return F.smooth_l1_loss(normalized(student), normalized(teacher))


def triplet_cosines(x: Tensor) -> Tensor:
    """cos∠(x_j, x_i, x_k) for every (i, j, k): the angle at x_i; 0 wherever j or k equals i."""
    e = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)  # e[i, j] = unit(x_j − x_i)
    return torch.bmm(e, e.transpose(1, 2))


def rkd_angle_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """RKD-A: Huber loss between the cosines of the angles every triplet forms, mean over b³ entries."""
    return F.smooth_l1_loss(triplet_cosines(student), triplet_cosines(teacher))


def cosine_conditionals(x: Tensor, eps: float = 1e-7) -> Tensor:
    """PKT's p_{j|i}: the cosine kernel (cos + 1)/2 of every pair, each row normalized to sum to 1."""
    x = x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)
    k = (x @ x.t() + 1.0) / 2.0
    return k / k.sum(dim=1, keepdim=True)


def pkt_loss(student: Tensor, teacher: Tensor, eps: float = 1e-7) -> Tensor:
    """PKT: KL(teacher ‖ student) of the conditional probabilities, mean over the b² entries (authors' code)."""
    p, q = cosine_conditionals(teacher, eps), cosine_conditionals(student, eps)
    return (p * torch.log((p + eps) / (q + eps))).mean()


def correlation_matrix(x: Tensor, kernel: str = "gaussian", gamma: float = 0.4, max_p: int = 2) -> Tensor:
    """CC's ψ(F): a Gaussian RBF of the L2-normalized rows by its order-P Taylor series, or the bilinear kernel.

    exp(−γ‖f_i − f_j‖²) ≈ Σ_{p=0..P} e^{−2γ}(2γ)^p/p!·(f_i·f_j)^p (Peng et al. 2019); bilinear: f_i·f_j.
    """
    x = F.normalize(x, p=2, dim=1)
    dots = x @ x.t()
    if kernel == "bilinear":
        return dots
    # exp(−γ‖a − b‖²) = e^{−2γ}·exp(2γ a·b) for unit a, b; its series is truncated at p = P.
    terms = [(2 * gamma) ** p / math.factorial(p) * dots.pow(p) for p in range(max_p + 1)]
    return math.exp(-2 * gamma) * torch.stack(terms).sum(dim=0)


def cc_loss(student: Tensor, teacher: Tensor, kernel: str = "gaussian", gamma: float = 0.4, max_p: int = 2) -> Tensor:
    """CC: ‖ψ(F_t) − ψ(F_s)‖²_F / b², the mean squared difference of the two correlation matrices."""
    b = student.shape[0]
    diff = correlation_matrix(teacher, kernel, gamma, max_p) - correlation_matrix(student, kernel, gamma, max_p)
    return diff.pow(2).sum() / (b * b)


# -- the layer map: the embedding unless written out -----------------------------------------------------------------


def _needs(term: str) -> Any:
    return default_layer_rules(term, DEFAULT_LAYERS)[0]


_resolve = default_layer_rules("sp", DEFAULT_LAYERS)[1]  # the same rule for every relation objective


def samples(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """One float row per sample: the tensor flattened, with a (B, S, D) token feature's padding zeroed."""
    x = x.float()
    if mask is not None and x.dim() == 3 and tuple(mask.shape) == tuple(x.shape[:2]):
        x = x * mask.unsqueeze(-1).to(x.dtype)
    return x.reshape(x.shape[0], -1)


def relation_pairs(pair: PairContext, term: str, layers: Any, minimum: int = 2) -> list[tuple[Tensor, Tensor]]:
    """Each (student, teacher) pair of the map as per-sample rows, checked to hold the same ≥ ``minimum`` samples."""
    params = with_default_layers({"layers": layers}, DEFAULT_LAYERS)
    if is_automatic(params["layers"]):
        raise ConfigError(
            f"objectives.{term}.layers={params['layers']!r} is resolved against the two networks by the Distiller; "
            "call the objective through a Distiller or write the pairs out: ['STUDENT_PATH -> TEACHER_PATH']"
        )
    tensors = feature_pairs(term, params, pair.student.features, pair.teacher.features)
    out = []
    for (s, t), (s_name, t_name) in zip(tensors, layer_pairs(term, params), strict=True):
        if s.shape[0] != t.shape[0]:
            raise ShapeMismatchError(
                f"objectives.{term}: student {s_name!r} has {s.shape[0]} samples, teacher {t_name!r} has "
                f"{t.shape[0]}; relations compare the same samples on both sides"
            )
        if s.shape[0] < minimum:
            raise ShapeMismatchError(
                f"objectives.{term}: {s_name!r} -> {t_name!r} holds {s.shape[0]} sample(s); relations compare "
                f"samples within a batch and need at least {minimum} (use a larger batch or drop the last one)"
            )
        out.append((samples(s, pair.attention_mask), samples(t, pair.attention_mask)))
    return out


def _mean(losses: list[Tensor]) -> Tensor:
    return torch.stack(losses).mean()


# -- the objectives ----------------------------------------------------------------------------------------------------


@register_objective("sp", teacher=False, needs=_needs("sp"), inputs="pair", resolve=_resolve)
def sp(pair: PairContext, *, layers: Any = None) -> Tensor:
    """Similarity-preserving KD (Tung & Mori 2019): ‖G_t − G_s‖²_F / b², G = row-normalized F·Fᵀ."""
    return _mean([sp_loss(s, t) for s, t in relation_pairs(pair, "sp", layers)])


@register_objective("rkd", teacher=False, needs=_needs("rkd"), inputs="pair", resolve=_resolve)
def rkd(
    pair: PairContext,
    *,
    layers: Any = None,
    distance: float = 25.0,
    angle: float = 50.0,
    squared: bool = False,
    eps: float = 1e-12,
) -> Tensor:
    """Relational KD (Park et al. 2019): distance·RKD-D + angle·RKD-A, Huber losses on normalized distances/angles."""
    losses = []
    # Three samples even for the distance term alone: two have one distance, which its mean normalizes to 1.
    for s, t in relation_pairs(pair, "rkd", layers, minimum=3):
        loss = s.new_zeros(())
        if distance:
            loss = loss + distance * rkd_distance_loss(s, t, squared, eps)
        if angle:
            loss = loss + angle * rkd_angle_loss(s, t)
        losses.append(loss)
    return _mean(losses)


@register_objective("pkt", teacher=False, needs=_needs("pkt"), inputs="pair", resolve=_resolve)
def pkt(pair: PairContext, *, layers: Any = None, eps: float = 1e-7) -> Tensor:
    """Probabilistic KT (Passalis & Tefas 2018): KL(teacher ‖ student) of cosine-kernel conditional probabilities."""
    return _mean([pkt_loss(s, t, eps) for s, t in relation_pairs(pair, "pkt", layers)])


class EmbeddingHeads(nn.Module):
    """CC's trainable linear embedding of each side (the teacher's trains too; its network stays frozen)."""

    def __init__(self, student_dim: int, teacher_dim: int, dim: int):
        super().__init__()
        self.student = nn.Linear(student_dim, dim)
        self.teacher = nn.Linear(teacher_dim, dim)


def cc_heads(params: Mapping[str, Any], ctx: BuildContext) -> nn.Module | None:
    """A ``build`` rule: one pair of ``embed``-wide heads per layer pair, sized from the first batch (none at 0)."""
    dim = int(params.get("embed", 0))
    if dim <= 0:
        return None
    pairs = ctx.features(with_default_layers(params, DEFAULT_LAYERS))
    return nn.ModuleList([EmbeddingHeads(samples(s).shape[1], samples(t).shape[1], dim) for s, t in pairs])


@register_objective("cc", teacher=False, needs=_needs("cc"), inputs="pair", build=cc_heads, resolve=_resolve)
def cc(
    pair: PairContext,
    *,
    layers: Any = None,
    embed: int = 128,
    kernel: Literal["gaussian", "bilinear"] = "gaussian",
    gamma: float = 0.4,
    max_p: int = 2,
) -> Tensor:
    """Correlation congruence (Peng et al. 2019): ‖ψ(F_t) − ψ(F_s)‖²_F / b², ψ a Taylor-expanded Gaussian kernel."""
    if isinstance(max_p, float) or max_p < 0:
        raise ConfigError(f"objectives.cc.max_p={max_p!r}: expected the Taylor order P, an integer >= 0")
    if embed > 0 and pair.connector is None:
        raise ConfigError(
            f"objectives.cc: embed={embed} asks for embedding heads, which the Distiller builds on the first batch; "
            "call it through a Distiller or set embed: 0 to compare the features themselves"
        )
    losses = []
    for i, (s, t) in enumerate(relation_pairs(pair, "cc", layers)):
        if embed > 0:
            s, t = pair.connector[i].student(s), pair.connector[i].teacher(t)
        losses.append(cc_loss(s, t, kernel, gamma, max_p))
    return _mean(losses)
