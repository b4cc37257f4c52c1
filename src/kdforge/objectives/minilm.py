"""Self-attention distillation for transformers: MiniLMv2 Q/K/V relations and MiniLM attention distributions.

``minilm_relations`` (Wang et al. 2021, "MiniLMv2", eqs. 5-9): per relation head a, R_ij = softmax(A_i·A_jᵀ/√d_r)
for A ∈ {Q, K, V}; each side's vectors are the concatenation of its attention heads re-split into ``relation_heads``
heads of size d_r = width / relation_heads, so the two networks need not have the same number of attention heads
(nor the same number of K/V heads: Llama's grouped-query K/V are re-split the same way). The loss is
Σ_ij α_ij · 1/(A_r|x|) Σ_a Σ_t KL(R^T_ij,a,t ‖ R^S_ij,a,t): the relation terms are summed (α_ij = 1, as in the
paper, for Q-Q, K-K, V-V), each averaged over relation heads and the sequence's tokens, then over the batch.

``attention_kl`` (Wang et al. 2020, "MiniLM", eq. 6; TinyBERT's attention transfer with KL): the KL divergence between
the teacher's and the student's attention distributions of mapped layers, per head (the head counts must match) or of
the head-averaged distributions (``heads: mean``). The weights are recorded from the attention modules themselves,
which switches transformers models to eager attention (kdforge.models.hf.attention). transformers returns the weights
after attention dropout, which are no distributions; rows that do not sum to 1 fail with a message asking for the
student's attention dropout to be 0 (``attention_probs_dropout_prob: 0``), so no KL of dropped-out weights is taken.

Padding (``pair.attention_mask``) takes no probability as a key and counts as no query row, so the padded tokens of a
batch never change either loss.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from kdforge.errors import ConfigError, ShapeMismatchError
from kdforge.models.hf.attention import attention_heads, find_attention
from kdforge.objectives.base import ModelsContext, PairContext, register_objective
from kdforge.objectives.layers import feature_pairs, layer_needs, layer_pairs, resolve_layers
from kdforge.signals import Needs

ROLES = ("q", "k", "v")
DEFAULT_RELATIONS = ("qq", "kk", "vv")

# -- the math (pure functions) -----------------------------------------------------------------------------------------


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, S, W) vectors, the attention heads concatenated, re-split into ``heads`` heads: (B, heads, S, W/heads)."""
    b, s, w = x.shape
    return x.reshape(b, s, heads, w // heads).transpose(1, 2)


def relation_log_probs(a: Tensor, b: Tensor, heads: int, valid: Tensor) -> Tensor:
    """log softmax(A·Bᵀ/√d_r) per relation head, (B, heads, S, S); padded keys (``valid`` False) get no probability."""
    ha, hb = split_heads(a.float(), heads), split_heads(b.float(), heads)
    scores = ha @ hb.transpose(-1, -2) / math.sqrt(ha.shape[-1])
    # The most negative finite value rather than -inf: a row of padding keys stays finite, and is never counted.
    scores = scores.masked_fill(~valid[:, None, None, :], torch.finfo(scores.dtype).min)
    return scores.log_softmax(-1)


def row_kl(teacher: Tensor, log_teacher: Tensor, log_student: Tensor, valid: Tensor) -> Tensor:
    """KL(teacher row ‖ student row) over real keys: 1/(heads·real tokens) Σ_heads Σ_rows per sequence, batch mean."""
    terms = teacher * (log_teacher - log_student)
    per_row = terms.masked_fill(~valid[:, None, None, :], 0.0).sum(-1)  # (B, H, S)
    rows = valid[:, None, :].to(per_row.dtype)
    counts = rows.sum((1, 2)) * per_row.shape[1]  # heads × real tokens of each sequence
    per_sequence = (per_row * rows).sum((1, 2))
    kept = counts > 0
    if not bool(kept.any()):
        return per_row.sum() * 0.0
    return (per_sequence[kept] / counts[kept]).mean()


def attention_row_kl(teacher: Tensor, student: Tensor, valid: Tensor) -> Tensor:
    """``row_kl`` of two attention distributions (B, H, S, S); zero probabilities (masked, causal) contribute 0."""
    tiny = torch.finfo(torch.float32).tiny
    t, s = teacher.float(), student.float()
    return row_kl(t, t.clamp_min(tiny).log(), s.clamp_min(tiny).log(), valid)


# -- parameters -------------------------------------------------------------------------------------------------------


def relation_weights(term: str, relations: Any) -> dict[str, float]:
    """``["qq", "kk", "vv"]`` (α = 1 each) or ``{qq: 1.0, vv: 0.5}`` → {relation: α}; checked names."""
    if isinstance(relations, str):
        relations = [relations]
    items = relations.items() if isinstance(relations, Mapping) else ((r, 1.0) for r in relations or ())
    out: dict[str, float] = {}
    for name, weight in items:
        if not (isinstance(name, str) and len(name) == 2 and all(c in ROLES for c in name)):
            raise ConfigError(
                f"objectives.{term}.relations: {name!r} is not a relation; expected two of q, k, v such as qq, kk, vv"
            )
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ConfigError(f"objectives.{term}.relations.{name}={weight!r}: expected a number (its weight α)")
        out[name] = float(weight)
    if not out:
        raise ConfigError(f"objectives.{term}.relations: empty; expected e.g. [qq, kk, vv]")
    return out


def _side(term: str, side: str, value: Any) -> dict[str, str]:
    """One side of a ``qkv`` entry: {q, k, v} paths, or {qkv: path} of a fused [q | k | v] projection."""
    if isinstance(value, Mapping):
        got = {str(k): str(v) for k, v in value.items()}
        if set(got) == set(ROLES) or set(got) == {"qkv"}:
            return got
    raise ConfigError(
        f"objectives.{term}.qkv: {side} entry {value!r}; expected {{q: PATH, k: PATH, v: PATH}} or {{qkv: PATH}}"
    )


def qkv_pairs(term: str, qkv: Any) -> list[tuple[dict[str, str], dict[str, str]]]:
    """The (student, teacher) Q/K/V paths of each mapped block pair, from the resolved ``qkv`` parameter."""
    if qkv is None:
        raise ConfigError(
            f"objectives.{term}: the Q/K/V paths are not resolved; run it through a Distiller (which finds them from "
            "`layers`) or write them out: qkv: [{student: {q: P, k: P, v: P}, teacher: {q: P, k: P, v: P}}]"
        )
    items = [qkv] if isinstance(qkv, Mapping) else qkv
    out = []
    for item in items:
        if not isinstance(item, Mapping) or set(item) != {"student", "teacher"}:
            raise ConfigError(f"objectives.{term}.qkv: {item!r}; expected {{student: {{...}}, teacher: {{...}}}}")
        out.append((_side(term, "student", item["student"]), _side(term, "teacher", item["teacher"])))
    return out


def _paths(side: Mapping[str, str], roles: set[str]) -> tuple[str, ...]:
    return (side["qkv"],) if "qkv" in side else tuple(side[r] for r in ROLES if r in roles)


def _default_last(params: Mapping[str, Any]) -> dict[str, Any]:
    return {**params, "layers": "last"} if params.get("layers") in (None, "", []) else dict(params)


def _minilm_needs(params: Mapping[str, Any]) -> Needs:
    """The Q/K/V projections the chosen relations use, on both sides (none until the paths are resolved)."""
    if params.get("qkv") is None:
        layer_pairs("minilm_relations", _default_last(params))  # a malformed written map fails now
        return Needs()
    roles = set("".join(relation_weights("minilm_relations", params.get("relations"))))
    pairs = qkv_pairs("minilm_relations", params["qkv"])
    student = tuple(p for s, _ in pairs for p in _paths(s, roles))
    teacher = tuple(p for _, t in pairs for p in _paths(t, roles))
    return Needs(student_features=tuple(dict.fromkeys(student)), teacher_features=tuple(dict.fromkeys(teacher)))


def _entry(found: Any) -> dict[str, str]:
    return {"qkv": found.fused} if found.fused else {"q": found.q, "k": found.k, "v": found.v}


def _resolve_minilm(params: Mapping[str, Any], models: ModelsContext) -> dict[str, Any]:
    """Blocks → their Q/K/V projection paths (``qkv``); ``relation_heads: 0`` → the teacher's attention heads."""
    term = models.term
    out = dict(params)
    relation_weights(term, out.get("relations"))
    if out.get("qkv") is None:
        out = resolve_layers(_default_last(out), models)
        if models.teacher is None:
            raise ConfigError(
                f"objectives.{term}.qkv: the teaching side is not a network kdforge can look into; write the Q/K/V "
                "paths out: qkv: [{student: {q: P, k: P, v: P}, teacher: {q: P, k: P, v: P}}]"
            )
        entries = []
        for s, t in layer_pairs(term, out):
            try:
                found = find_attention(models.student, s, "student"), find_attention(models.teacher, t, "teacher")
            except ConfigError as err:
                raise ConfigError(f"objectives.{term}.layers: {err}") from None
            entries.append({"student": _entry(found[0]), "teacher": _entry(found[1])})
        out["qkv"] = entries
    heads = out.get("relation_heads", 0)
    if isinstance(heads, bool) or not isinstance(heads, (int, float)) or heads < 0 or int(heads) != heads:
        raise ConfigError(f"objectives.{term}.relation_heads={heads!r}: expected a positive whole number")
    if not heads:
        out["relation_heads"] = _teacher_heads(term, models, qkv_pairs(term, out["qkv"]))
    out["relation_heads"] = int(out["relation_heads"])
    return out


def _teacher_heads(term: str, models: ModelsContext, pairs: list[tuple[dict[str, str], dict[str, str]]]) -> int:
    """The attention heads of the module holding the teacher's first projection (the paper's base setting)."""
    path = next(iter(pairs[0][1].values()))
    owner = path.rpartition(".")[0]
    modules = dict(models.teacher.named_modules()) if models.teacher is not None else {}
    heads = attention_heads(modules[owner]) if owner in modules else None
    if heads is None:
        raise ConfigError(
            f"objectives.{term}.relation_heads: cannot read the teacher's attention heads at {owner!r}; set "
            "relation_heads (the paper uses 12 for base-size and 48 for large-size teachers)"
        )
    return heads


# -- the objectives ---------------------------------------------------------------------------------------------------


def token_mask(pair: PairContext, shape: tuple[int, ...], device: torch.device, term: str) -> Tensor:
    """The (B, S) real-token mask for features of ``shape`` (B, S, ...): the batch's attention mask, or all True."""
    mask = pair.attention_mask
    if mask is None:
        return torch.ones(shape[:2], dtype=torch.bool, device=device)
    mask = torch.as_tensor(mask).to(device).bool()
    if tuple(mask.shape) != tuple(shape[:2]):
        raise ShapeMismatchError(
            f"objectives.{term}: attention_mask of shape {tuple(mask.shape)} does not fit features {tuple(shape)}; "
            "expected (batch, tokens) of the same token batch"
        )
    return mask


def _vectors(
    term: str, side: str, features: Mapping[str, Tensor], paths: Mapping[str, str], roles: str
) -> dict[str, Tensor]:
    """The side's (B, S, W) vectors of ``roles`` (of q, k, v); a fused [q | k | v] projection is split in three."""
    wanted = _paths(paths, set(roles))
    missing = [p for p in wanted if p not in features]
    if missing:
        raise ConfigError(f"objectives.{term}: the {side} returned no feature {missing[0]!r}")
    if "qkv" in paths:
        fused = features[paths["qkv"]]
        if fused.dim() != 3 or fused.shape[-1] % 3:
            raise ShapeMismatchError(
                f"objectives.{term}: {side} {paths['qkv']!r} {tuple(fused.shape)}: expected (batch, tokens, 3·width)"
            )
        return dict(zip(ROLES, fused.chunk(3, dim=-1), strict=True))
    out = {}
    for role in sorted(set(roles)):
        x = features[paths[role]]
        if x.dim() != 3:
            raise ShapeMismatchError(
                f"objectives.{term}: {side} {paths[role]!r} {tuple(x.shape)}: expected (batch, tokens, width)"
            )
        out[role] = x
    return out


def _relation(term: str, side: str, vectors: Mapping[str, Tensor], name: str, heads: int, valid: Tensor) -> Tensor:
    a, b = vectors[name[0]], vectors[name[1]]
    for x in (a, b):
        if x.shape[-1] % heads:
            raise ShapeMismatchError(
                f"objectives.{term}: {side} {name[0]}/{name[1]} width {x.shape[-1]} is not divisible by "
                f"relation_heads={heads}; expected relation_heads dividing every Q/K/V width"
            )
    if a.shape[-1] != b.shape[-1]:
        raise ShapeMismatchError(
            f"objectives.{term}: {side} relation {name}: {name[0]} width {a.shape[-1]} and {name[1]} width "
            f"{b.shape[-1]} differ (grouped-query K/V); use same-role relations such as qq, kk, vv"
        )
    return relation_log_probs(a, b, heads, valid)


@register_objective("minilm_relations", teacher=False, needs=_minilm_needs, inputs="pair", resolve=_resolve_minilm)
def minilm_relations(
    pair: PairContext,
    *,
    layers: Any = None,
    relations: Any = DEFAULT_RELATIONS,
    relation_heads: int = 0,
    qkv: Any = None,
) -> Tensor:
    """MiniLMv2: KL between teacher and student Q-Q, K-K, V-V self-attention relations, heads re-split to match."""
    term = "minilm_relations"
    weights = relation_weights(term, relations)
    if relation_heads < 1:
        raise ConfigError(
            f"objectives.{term}.relation_heads={relation_heads}: not resolved; expected a positive number"
        )
    heads = int(relation_heads)
    roles = "".join(weights)
    role = min(roles)  # a role the relations use: its tensors give the batch and token shape
    teacher = pair.teacher.features.tensors if pair.teacher.features is not None else {}
    losses = []
    for s_paths, t_paths in qkv_pairs(term, qkv):
        s_vec = _vectors(term, "student", pair.student.features, s_paths, roles)
        t_vec = _vectors(term, "teaching side", teacher, t_paths, roles)
        shape = tuple(s_vec[role].shape)
        if shape[:2] != tuple(t_vec[role].shape[:2]):
            raise ShapeMismatchError(
                f"objectives.{term}: student {_paths(s_paths, {role})[0]!r} {shape} and teacher "
                f"{_paths(t_paths, {role})[0]!r} {tuple(t_vec[role].shape)} differ in batch or tokens; expected the "
                "same token batch on both sides"
            )
        device = s_vec[role].device
        t_vec = {k: v.to(device) for k, v in t_vec.items()}
        valid = token_mask(pair, shape, device, term)
        total = torch.zeros((), device=device)
        for name, alpha in weights.items():
            log_s = _relation(term, "student", s_vec, name, heads, valid)
            with torch.no_grad():  # the teacher's relations are targets, whatever side produced them
                log_t = _relation(term, "teacher", t_vec, name, heads, valid)
            total = total + alpha * row_kl(log_t.exp(), log_t, log_s, valid)
        losses.append(total)
    return torch.stack(losses).mean()


def _attention_needs(params: Mapping[str, Any]) -> Needs:
    return layer_needs("attention_kl")(_default_last(params))


def _resolve_attention(params: Mapping[str, Any], models: ModelsContext) -> dict[str, Any]:
    """Blocks → ``<attention module>:1`` (its weights); paths already naming a tuple element are kept."""
    term = models.term
    out = resolve_layers(_default_last(params), models)
    nets = {"student": models.student, "teacher": models.teacher}
    pairs = []
    for s, t in layer_pairs(term, out):
        mapped = []
        for side, path in (("student", s), ("teacher", t)):
            if ":" in path:
                mapped.append(path)
                continue
            net = nets[side]
            if net is None:
                raise ConfigError(
                    f"objectives.{term}.layers: {path!r}: the teaching side is not a network kdforge can look into; "
                    "name its attention weights (e.g. 'encoder.layer.3.attention.self:1')"
                )
            try:
                found = find_attention(net, path, side)
            except ConfigError as err:
                raise ConfigError(f"objectives.{term}.layers: {err}") from None
            module = net.get_submodule(found.module)
            if found.fused or "attention" not in type(module).__name__.lower():
                raise ConfigError(
                    f"objectives.{term}.layers: {side} {found.module!r} ({type(module).__name__}) does not return its "
                    "attention weights; attention_kl needs transformers attention modules (or use minilm_relations)"
                )
            mapped.append(f"{found.module}:1")
        pairs.append(f"{mapped[0]} -> {mapped[1]}")
    return {**out, "layers": pairs}


def check_distributions(term: str, side: str, path: str, weights: Tensor, valid: Tensor) -> None:
    """Fail when the real query rows of recorded attention weights are not distributions (dropout was applied)."""
    sums = weights.detach().float().sum(-1)  # (B, H, S)
    error = ((sums - 1.0).abs() * valid[:, None, :]).amax() if sums.numel() else sums.sum()
    if float(error) > 1e-3:
        raise ConfigError(
            f"objectives.{term}: {side} {path!r}: attention rows sum to 1 ± {float(error):.3g}, not 1: transformers "
            "returns the weights after attention dropout; set the model's attention dropout to 0 "
            "(attention_probs_dropout_prob / attention_dropout) to distil its attention distributions"
        )


def _heads(term: str, s: Tensor, t: Tensor, names: tuple[str, str], heads: str) -> tuple[Tensor, Tensor]:
    if (
        s.dim() != 4
        or t.dim() != 4
        or s.shape[-1] != s.shape[-2]
        or s.shape[0] != t.shape[0]
        or s.shape[2:] != t.shape[2:]
    ):
        raise ShapeMismatchError(
            f"objectives.{term}: student {names[0]!r} {tuple(s.shape)} and teacher {names[1]!r} {tuple(t.shape)}: "
            "expected attention weights (batch, heads, tokens, tokens) of the same token batch"
        )
    if heads == "mean":
        return s.mean(1, keepdim=True), t.mean(1, keepdim=True)
    if s.shape[1] != t.shape[1]:
        raise ShapeMismatchError(
            f"objectives.{term}: student {names[0]!r} has {s.shape[1]} heads and teacher {names[1]!r} {t.shape[1]}; "
            "expected the same number, or heads: mean (compare the head-averaged distributions)"
        )
    return s, t


@register_objective("attention_kl", teacher=False, needs=_attention_needs, inputs="pair", resolve=_resolve_attention)
def attention_kl(pair: PairContext, *, layers: Any = None, heads: Literal["match", "mean"] = "match") -> Tensor:
    """MiniLM / TinyBERT: KL between teacher and student self-attention distributions of mapped layers."""
    term = "attention_kl"
    params = _default_last({"layers": layers})
    names = layer_pairs(term, params)
    losses = []
    for (s, t), pair_names in zip(
        feature_pairs(term, params, pair.student.features, pair.teacher.features), names, strict=True
    ):
        s, t = _heads(term, s, t.to(s.device), pair_names, heads)
        valid = token_mask(pair, (s.shape[0], s.shape[-1]), s.device, term)
        check_distributions(term, "student", pair_names[0], s, valid)
        check_distributions(term, "teacher", pair_names[1], t, valid)
        losses.append(attention_row_kl(t, s, valid))
    return torch.stack(losses).mean()
