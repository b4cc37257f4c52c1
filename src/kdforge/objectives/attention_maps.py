"""Feature-map objectives: attention transfer (AT), neuron selectivity transfer (NST) and FSP matrices.

AT compares *where* a layer responds (its activation energy per position), NST *how* each channel's response is
spread over the positions (as a distribution, by MMD), FSP the Gram matrix *between* two layers of one network.
AT and NST never compare channels one to one, so student and teacher may differ in width without a connector; FSP
needs the same channels on both sides (the paper's condition) or a connector per student layer.

Features are (B, C, H, W) maps on both sides or (B, N, C) tokens of one length N on both sides. Maps of different
resolution are compared at the smaller one: the larger *feature map* is adaptive-average-pooled down before the
attention map (or the channel distributions) is computed, as RepDistiller and mdistiller do; nothing is upsampled, so
no position is invented. On a token batch the padded positions (``pair.attention_mask``) are zeroed and not counted.
Several layer pairs average their losses (the reference implementations sum them: see each objective's weight note).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.connectors import build_connector
from kdforge.errors import ConfigError, ShapeMismatchError
from kdforge.models.stages import feature_stages
from kdforge.objectives.base import BuildContext, ModelsContext, PairContext, register_objective
from kdforge.objectives.layers import (
    feature_pairs,
    is_automatic,
    layer_needs,
    layer_pairs,
    resolve_layers,
    written_items,
)
from kdforge.signals import Needs

# -- the math (pure functions of (B, C, P) activations: P positions, ``keep`` (B, P) marks the real ones) -------------


def pool_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """A (B, C, H, W) map at ``size`` (never larger than its own): adaptive average pooling, or ``x`` itself."""
    return x if tuple(x.shape[2:]) == size else F.adaptive_avg_pool2d(x, size)


def common_resolution(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Two (B, C, H, W) maps at the smaller height and width of the two (the larger one pooled down)."""
    size = (min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3]))
    return pool_to(a, size), pool_to(b, size)


def attention_map(x: Tensor, p: float = 2.0, keep: Tensor | None = None) -> Tensor:
    """AT's map (Zagoruyko & Komodakis 2017, Sec. 3.1): mean over channels of |x|^p, L2-normalized over positions."""
    energy = x.float().abs().pow(p).mean(1)
    if keep is not None:
        energy = energy * keep
    return F.normalize(energy, dim=1)


def at_distance(student: Tensor, teacher: Tensor, p: float = 2.0, keep: Tensor | None = None) -> Tensor:
    """Mean over samples and positions of the squared difference of the normalized maps (the authors' code)."""
    diff = (attention_map(student, p, keep) - attention_map(teacher, p, keep)).pow(2)
    if keep is None:
        return diff.mean()
    return (diff * keep).sum() / keep.sum().clamp_min(1)


def selectivity(x: Tensor, keep: Tensor | None = None) -> Tensor:
    """NST's per-channel distributions (Huang & Wang 2017): each channel's responses L2-normalized over positions."""
    x = x.float()
    if keep is not None:
        x = x * keep.unsqueeze(1)
    return F.normalize(x, dim=2)


def poly_mmd(student: Tensor, teacher: Tensor) -> Tensor:
    """NST's squared MMD between the channel sets, polynomial kernel k(x, y) = (xᵀy + c)^d with d=2, c=0, batch mean.

    1/C_t² ΣΣ k(t_i, t_i') + 1/C_s² ΣΣ k(s_j, s_j') − 2/(C_s C_t) ΣΣ k(s_j, t_i); the teacher-only term is a constant.
    """
    k_tt = (teacher @ teacher.transpose(1, 2)).pow(2).mean().detach()
    k_ss = (student @ student.transpose(1, 2)).pow(2).mean()
    k_st = (student @ teacher.transpose(1, 2)).pow(2).mean()
    return k_tt + k_ss - 2 * k_st


def fsp_matrix(first: Tensor, second: Tensor, keep: Tensor | None = None) -> Tensor:
    """FSP matrix (Yim et al. 2017, eq. 1): G_ij = mean over positions of first_i · second_j, shape (B, C1, C2)."""
    first, second = first.float(), second.float()
    if keep is None:
        return first @ second.transpose(1, 2) / first.shape[2]
    first = first * keep.unsqueeze(1)
    return first @ second.transpose(1, 2) / keep.sum(1).clamp_min(1)[:, None, None]


# -- layouts ----------------------------------------------------------------------------------------------------------


def _keep(x: Tensor, mask: Tensor | None) -> Tensor | None:
    """The (B, N) real-token mask of a token feature, when the batch has one of its length."""
    if x.dim() != 3 or mask is None or tuple(mask.shape) != tuple(x.shape[:2]):
        return None
    return mask.to(device=x.device, dtype=torch.float32)


def as_positions(where: str, a: Tensor, b: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Two features as (B, C, P) at the same P positions (maps pooled to the smaller resolution), and ``keep``."""
    if a.shape[0] == b.shape[0] and a.dim() == b.dim() == 4:
        a, b = common_resolution(a, b)
        return a.flatten(2), b.flatten(2), None
    if a.shape[0] == b.shape[0] and a.dim() == b.dim() == 3 and a.shape[1] == b.shape[1]:
        return a.transpose(1, 2), b.transpose(1, 2), _keep(a, mask)
    raise ShapeMismatchError(
        f"{where}: expected (B, C, H, W) maps on both sides or (B, N, C) tokens of one length on both sides"
    )


def _map_pairs(term: str, pair: PairContext, layers: Any) -> list[tuple[Tensor, Tensor, Tensor | None]]:
    """Each (student, teacher, keep) of the term's layer map, as (B, C, P) activations at common positions."""
    params = {"layers": layers}
    tensors = feature_pairs(term, params, pair.student.features, pair.teacher.features)
    if not tensors:
        raise ConfigError(f"objectives.{term}.layers={layers!r} is resolved against the two networks by the Distiller")
    out = []
    for (s, t), (s_name, t_name) in zip(tensors, layer_pairs(term, params), strict=True):
        where = f"objectives.{term}: student {s_name!r} {tuple(s.shape)} vs teacher {t_name!r} {tuple(t.shape)}"
        out.append(as_positions(where, s, t, pair.attention_mask))
    return out


# -- AT and NST -------------------------------------------------------------------------------------------------------


@register_objective("at", teacher=False, needs=layer_needs("at"), inputs="pair", resolve=resolve_layers)
def at(pair: PairContext, *, layers: Any = None, p: float = 2.0) -> Tensor:
    """Attention transfer: squared distance of normalized spatial attention maps (mean |F|^p), averaged over pairs.

    Per pair: mean over samples and positions of (Q_s/‖Q_s‖ − Q_t/‖Q_t‖)², Q = mean_c |F_c|^p flattened — the
    authors' code and RepDistiller/mdistiller/torchdistill(mode='code'). The paper's β = 1000 (which it divides by
    the map size and batch size, as this mean does) is the weight: the references *sum* the pairs, so their 1000
    over K pairs is ``weight: 1000·K`` here (the same for one pair).
    """
    pairs = _map_pairs("at", pair, layers)
    return sum(at_distance(s, t, p, keep) for s, t, keep in pairs) / len(pairs)


@register_objective("nst", teacher=False, needs=layer_needs("nst"), inputs="pair", resolve=resolve_layers)
def nst(pair: PairContext, *, layers: Any = None) -> Tensor:
    """Neuron selectivity transfer: MMD² (polynomial kernel d=2, c=0) between per-channel distributions, pair mean.

    Per pair: each channel's responses L2-normalized over the positions, then the batch mean of the squared MMD
    between the student's and the teacher's channel sets (any widths). The paper's λ is the weight (mdistiller
    uses 50, summed over the pairs: ``weight: 50·K`` here for K pairs).
    """
    pairs = _map_pairs("nst", pair, layers)
    return sum(poly_mmd(selectivity(s, keep), selectivity(t, keep)) for s, t, keep in pairs) / len(pairs)


# -- FSP: pairs of layers on each side ---------------------------------------------------------------------------------

FSP_AUTOMATIC = ("uniform", "last-K")
_LAST = re.compile(r"^last(?:-\d+)?$")
FspPair = tuple[tuple[str, str], tuple[str, str]]


def _two(term: str, item: Any, side: Any) -> tuple[str, str]:
    """One side of an FSP pair: 'A, B' or [A, B]."""
    names = [p.strip() for p in side.split(",")] if isinstance(side, str) else side
    if isinstance(names, Sequence) and len(names) == 2 and all(isinstance(n, str) and n.strip() for n in names):
        return str(names[0]).strip(), str(names[1]).strip()
    raise _not_an_fsp_pair(term, item)


def _not_an_fsp_pair(term: str, item: Any) -> ConfigError:
    return ConfigError(
        f"objectives.{term}.layers: {item!r} is not an FSP pair; expected 'S_FIRST, S_SECOND -> T_FIRST, T_SECOND' "
        "(two layers of each network, e.g. 'layer1, layer2 -> layer1, layer2') or {student: [A, B], teacher: [A, B]}"
    )


def fsp_layers(term: str, params: Mapping[str, Any]) -> list[FspPair]:
    """The written-out ((student first, second), (teacher first, second)) pairs; [] while the map is automatic."""
    value = params.get("layers")
    if value in (None, "", []):
        raise ConfigError(
            f"objectives.{term}: needs a layer map: layers: ['S_FIRST, S_SECOND -> T_FIRST, T_SECOND', ...] or "
            f"one of {', '.join(FSP_AUTOMATIC)} (consecutive stages)"
        )
    out = []
    for item in written_items(term, value, "'S_A, S_B -> T_A, T_B' pairs"):
        if isinstance(item, Mapping) and set(item) == {"student", "teacher"}:
            out.append((_two(term, item, item["student"]), _two(term, item, item["teacher"])))
        elif isinstance(item, str) and item.count("->") == 1:
            s, t = item.split("->")
            out.append((_two(term, item, s), _two(term, item, t)))
        else:
            raise _not_an_fsp_pair(term, item)
    return out


def _fsp_needs(params: Mapping[str, Any]) -> Needs:
    pairs = fsp_layers("fsp", params)
    student = tuple(dict.fromkeys(p for s, _ in pairs for p in s))
    return Needs(student_features=student, teacher_features=tuple(dict.fromkeys(p for _, t in pairs for p in t)))


def _fsp_resolve(params: Mapping[str, Any], models: ModelsContext) -> dict[str, Any]:
    """``uniform`` / ``last-K``: the stage map of that name, each two consecutive stages making one FSP pair."""
    value = params.get("layers")
    if not is_automatic(value):
        return dict(params)
    if value != "uniform" and not _LAST.match(str(value)):
        raise ConfigError(
            f"objectives.{models.term}.layers={value!r}: FSP pairs consecutive stages; expected one of "
            f"{', '.join(FSP_AUTOMATIC)} or a list of 'S_A, S_B -> T_A, T_B'"
        )
    staged = resolve_layers({"layers": value}, models)["layers"]
    stages = [tuple(p.strip() for p in item.split("->")) for item in staged]
    if len(stages) < 2:
        raise ConfigError(
            f"objectives.{models.term}.layers={value!r} gives {len(stages)} stage pair(s); FSP needs at least 2 "
            f"(student stages {feature_stages(models.student)})"
        )
    pairs = [f"{a[0]}, {b[0]} -> {a[1]}, {b[1]}" for a, b in itertools.pairwise(stages)]
    return {**params, "layers": pairs}


class LayerConnectors(nn.Module):
    """One connector per distinct (student layer, teacher layer) of an FSP map, looked up by that pair."""

    def __init__(self, keys: list[str], modules: list[nn.Module]):
        super().__init__()
        self.keys = list(keys)
        self.maps = nn.ModuleList(modules)

    def forward(self, key: str, x: Tensor) -> Tensor:
        """``x`` (the student's ``key`` layer) mapped onto its teacher layer's channels and resolution."""
        return self.maps[self.keys.index(key)](x)


def _links(pairs: list[FspPair]) -> list[tuple[str, str]]:
    """The distinct (student layer, teacher layer) links of an FSP map, in order."""
    return list(dict.fromkeys((s[i], t[i]) for s, t in pairs for i in (0, 1)))


def fsp_connectors(params: Mapping[str, Any], ctx: BuildContext) -> nn.Module | None:
    """A ``build`` rule: with ``connector`` other than identity, one per student layer, onto its teacher layer."""
    kind = params.get("connector") or "identity"
    if kind == "identity":
        return None
    teacher = ctx.teacher.features.tensors if ctx.teacher.features is not None else {}
    keys, modules = [], []
    for s_name, t_name in _links(fsp_layers(ctx.term, params)):
        if s_name not in ctx.student.features or t_name not in teacher:
            missing = s_name if s_name not in ctx.student.features else t_name
            raise ConfigError(f"objectives.{ctx.term}: no feature {missing!r} was recorded")
        try:
            modules.append(build_connector(kind, ctx.student.features[s_name], teacher[t_name]))
        except ShapeMismatchError as err:
            raise ShapeMismatchError(f"objectives.{ctx.term}: {s_name!r} -> {t_name!r}: {err}") from None
        keys.append(f"{s_name} -> {t_name}")
    return LayerConnectors(keys, modules)


def _gram(where: str, first: Tensor, second: Tensor, mask: Tensor | None) -> Tensor:
    a, b, keep = as_positions(where, first, second, mask)
    return fsp_matrix(a, b, keep)


def _feature(term: str, features: Mapping[str, Tensor], name: str, side: str) -> Tensor:
    if name not in features:
        raise ConfigError(f"objectives.{term}: the {side} returned no feature {name!r}")
    return features[name]


@register_objective("fsp", teacher=False, needs=_fsp_needs, inputs="pair", build=fsp_connectors, resolve=_fsp_resolve)
def fsp(pair: PairContext, *, layers: Any = None, connector: str = "identity") -> Tensor:
    """FSP: mean squared difference of the Gram (FSP) matrices between two layers of each network, pair mean.

    ``layers``: 'S_FIRST, S_SECOND -> T_FIRST, T_SECOND' items, or ``uniform`` / ``last-K``: the stage map of that
    name with each two consecutive stages making one pair. Within a network the larger map is pooled to the smaller
    one's resolution; G = F₁F₂ᵀ / (h·w) (paper eq. 1). Per pair the mean over (B, C₁, C₂) of (G_s − G_t)² (RepDistiller;
    the paper sums the matrix entries: multiply the weight by C₁·C₂ for its scale). Student and teacher channels must
    match, as in the paper, unless ``connector`` (e.g. linear) maps each student layer onto its teacher layer.
    """
    pairs = fsp_layers("fsp", {"layers": layers})
    if not pairs:
        raise ConfigError(f"objectives.fsp.layers={layers!r} is resolved against the two networks by the Distiller")
    student = pair.student.features
    teacher = pair.teacher.features.tensors if pair.teacher.features is not None else {}
    mask = pair.attention_mask
    losses = []
    for s_names, t_names in pairs:
        s_maps = [_feature("fsp", student, n, "student") for n in s_names]
        t_maps = [_feature("fsp", teacher, n, "teaching side") for n in t_names]
        if pair.connector is not None:
            s_maps = [pair.connector(f"{s} -> {t}", x) for s, t, x in zip(s_names, t_names, s_maps, strict=True)]
        s_where = f"objectives.fsp: student {', '.join(s_names)!r} {[tuple(x.shape) for x in s_maps]}"
        t_where = f"objectives.fsp: teacher {', '.join(t_names)!r} {[tuple(x.shape) for x in t_maps]}"
        g_s = _gram(s_where, *s_maps, mask)
        g_t = _gram(t_where, *t_maps, mask)
        if g_s.shape != g_t.shape:
            raise ShapeMismatchError(
                f"objectives.fsp: student {', '.join(s_names)!r} FSP matrix {tuple(g_s.shape[1:])} vs teacher "
                f"{', '.join(t_names)!r} {tuple(g_t.shape[1:])}: the channels must match (Yim et al.); set "
                "connector: linear to map each student layer onto its teacher layer"
            )
        losses.append((g_s - g_t).pow(2).mean())
    return torch.stack(losses).mean()
