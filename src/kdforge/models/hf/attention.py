"""Attention inside transformer blocks: the Q/K/V projections of a block and the weights its attention returns.

Found by module names, never by editing the model: BERT / RoBERTa / ELECTRA name them ``query|key|value`` (under
``attention.self``), Llama / Qwen / Mistral / SmolLM / OPT / BART ``q_proj|k_proj|v_proj`` (under ``self_attn``),
DistilBERT ``q_lin|k_lin|v_lin``, T5 ``q|k|v``. Fused projections whose output is ``[q | k | v]`` in equal thirds
(GPT-2 ``c_attn``, ModernBERT ``Wqkv``, timm ViTs and kdforge's tiny_gpt ``qkv``) are split by the objective.

Attention weights (``<attention module>:1``) are only returned by transformers' eager attention: SDPA and flash
attention never form the probability matrix. ``use_eager`` switches the model owning a recorded attention module to
the eager implementation (the same arithmetic, the one ``output_attentions=True`` uses) for as long as the weights
are recorded, and ``restore`` puts the previous implementation back. Recomputing the probabilities from recorded
Q and K instead would have to repeat each architecture's own details (rotary embeddings, ALiBi, sliding windows,
soft-capping, causal and padding masks), and would silently drift from what the model attends with.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from kdforge.capture import split_path
from kdforge.errors import ConfigError

# Separate Q/K/V projections, by the names each family gives them (checked in this order).
QKV_NAMES: tuple[tuple[str, str, str], ...] = (
    ("query", "key", "value"),
    ("q_proj", "k_proj", "v_proj"),
    ("q_lin", "k_lin", "v_lin"),
    ("q", "k", "v"),
)
# One projection whose output is [q | k | v] in three equal parts (GPT-2, ModernBERT, timm ViT, kdforge tiny_gpt).
FUSED_NAMES = ("c_attn", "Wqkv", "qkv")
# Cross-attention sits next to self-attention in decoder blocks; relations and maps are about self-attention.
CROSS_MARKERS = ("cross", "encdec", "encoder_attn")
_HEAD_ATTRIBUTES = ("num_attention_heads", "num_heads", "n_heads", "heads")


@dataclass(frozen=True)
class AttentionPaths:
    """Where a block's self-attention lives: its module, its Q/K/V projections (or one fused one), its head count."""

    module: str
    q: str = ""
    k: str = ""
    v: str = ""
    fused: str = ""
    heads: int | None = None


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _output_width(module: nn.Module) -> int | None:
    # nn.Linear says out_features; GPT-2's Conv1D says nf.
    width = getattr(module, "out_features", None) or getattr(module, "nf", None)
    return int(width) if width else None


def attention_heads(module: nn.Module) -> int | None:
    """The number of (query) attention heads of an attention module, from its attributes or its config."""
    for name in _HEAD_ATTRIBUTES:
        value = getattr(module, name, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(getattr(module, "config", None), "num_attention_heads", None)
    return value if isinstance(value, int) and value > 0 else None


def _projections(module: nn.Module) -> tuple[str, str, str] | str | None:
    """The Q/K/V child names of ``module`` (a triple), the name of a fused projection, or None."""
    children = dict(module.named_children())
    for names in QKV_NAMES:
        if all(isinstance(children.get(n), nn.Module) for n in names):
            return names
    for name in FUSED_NAMES:
        child = children.get(name)
        width = _output_width(child) if isinstance(child, nn.Module) else None
        if width is not None and width % 3 == 0:
            return name
    return None


def find_attention(model: nn.Module, block: str, side: str = "model") -> AttentionPaths:
    """The self-attention of ``block`` (a block, or the attention module itself) in ``model``; ConfigError if none."""
    modules = dict(model.named_modules())
    if block not in modules:
        raise ConfigError(f"the {side} ({type(model).__name__}) has no module {block!r}")
    root = modules[block]
    for prefix, module in root.named_modules():
        if any(marker in prefix.lower() for marker in CROSS_MARKERS):
            continue
        found = _projections(module)
        if found is None:
            continue
        path = _join(block, prefix)
        heads = attention_heads(module)
        if isinstance(found, str):
            return AttentionPaths(path, fused=_join(path, found), heads=heads)
        q, k, v = (_join(path, name) for name in found)
        return AttentionPaths(path, q, k, v, heads=heads)
    looked = ", ".join("|".join(names) for names in QKV_NAMES)
    raise ConfigError(
        f"{side} block {block!r} ({type(root).__name__}) has no self-attention projections: looked for children "
        f"named {looked} or a fused {'|'.join(FUSED_NAMES)} with [q | k | v] outputs; map a transformer block"
    )


def _owner(model: nn.Module, module_path: str) -> nn.Module | None:
    """The outermost transformers model on the way to ``module_path`` (it owns the config the attention reads)."""
    parts = module_path.split(".") if module_path else []
    for depth in range(len(parts) + 1):
        candidate = model.get_submodule(".".join(parts[:depth])) if depth else model
        if hasattr(candidate, "set_attn_implementation") and hasattr(candidate, "config"):
            return candidate
    return None


def weight_paths(model: nn.Module, paths: Iterable[str]) -> list[str]:
    """The recorded paths that ask an attention module for a tuple element (its weights), e.g. ``…self_attn:1``."""
    modules = dict(model.named_modules())
    out = []
    for path in paths:
        module_path, part = split_path(path)
        module = modules.get(module_path)
        if isinstance(part, int) and part >= 1 and module is not None and "attention" in type(module).__name__.lower():
            out.append(path)
    return out


def use_eager(model: nn.Module, paths: Iterable[str]) -> list[tuple[nn.Module, str]]:
    """Switch the transformers models holding recorded attention weights to eager; returns what ``restore`` undoes."""
    changed: list[tuple[nn.Module, str]] = []
    for path in weight_paths(model, paths):
        owner = _owner(model, split_path(path)[0])
        if owner is None or any(owner is done for done, _ in changed):
            continue
        before = getattr(owner.config, "_attn_implementation", None) or "eager"
        if before == "eager":
            continue
        owner.set_attn_implementation("eager")
        if getattr(owner.config, "_attn_implementation", None) != "eager":
            raise ConfigError(
                f"{path!r}: {type(owner).__name__} cannot switch to the eager attention implementation, the only one "
                f"that returns attention weights (it runs {before!r}); record Q/K/V projections instead"
            )
        changed.append((owner, before))
    return changed


def restore(changed: Iterable[tuple[nn.Module, str]]) -> None:
    """Put back the attention implementations ``use_eager`` replaced."""
    for owner, before in changed:
        owner.set_attn_implementation(before)
