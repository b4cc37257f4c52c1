"""Hidden-state maps for transformers: the student's block outputs matched to the teacher's, token by token.

``hidden_mse`` is TinyBERT's hidden-state loss (Jiao et al. 2020, eq. 8: MSE(H^S·W_h, H^T)) and ``hidden_cosine``
DistilBERT's cosine loss (Sanh et al. 2019: 1 − cos between student and teacher hidden states of the real tokens),
both for any map of blocks. A block's output is the first tensor of what it returns (its hidden states). Padding
(``pair.attention_mask``) is left out, so the loss is the mean over the batch's real tokens. ``layers`` defaults to
``uniform`` over the two encoders' block stacks (``encoder.layer.N`` / ``model.layers.N``); several pairs average.
``connector: auto`` (the default) is a learned linear map W_h where the widths differ and none where they match;
any registered connector kind may be named instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.connectors import build_connector
from kdforge.errors import ShapeMismatchError
from kdforge.objectives.base import BuildContext, PairContext, register_objective
from kdforge.objectives.features import connected
from kdforge.objectives.layers import default_layer_rules, layer_pairs, with_default_layers
from kdforge.objectives.minilm import token_mask

DEFAULT_LAYERS = "uniform"


def _with_default(params: Mapping[str, Any]) -> dict[str, Any]:
    return with_default_layers(params, DEFAULT_LAYERS)


def _needs(term: str) -> Any:
    return default_layer_rules(term, DEFAULT_LAYERS)[0]


_resolve = default_layer_rules("hidden_mse", DEFAULT_LAYERS)[1]


def _build(params: Mapping[str, Any], ctx: BuildContext) -> nn.Module:
    """One connector per pair: ``auto`` → a linear map where the widths differ, none where they match."""
    kind = params.get("connector") or "auto"
    modules = []
    for (s, t), (s_name, t_name) in zip(ctx.features(params), layer_pairs(ctx.term, params), strict=True):
        chosen = kind if kind != "auto" else ("identity" if s.shape[-1] == t.shape[-1] else "linear")
        try:
            modules.append(build_connector(chosen, s, t))
        except ShapeMismatchError as err:
            raise ShapeMismatchError(f"objectives.{ctx.term}: {s_name!r} -> {t_name!r}: {err}") from None
    return nn.ModuleList(modules)


def token_rows(pair: PairContext, term: str, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """The (n, width) rows of the real tokens of (B, S, W) hidden states; (B, W) embeddings pass as they are."""
    if s.dim() == 2 and t.dim() == 2:
        return s, t
    if s.dim() != 3:
        raise ShapeMismatchError(
            f"objectives.{term}: feature {tuple(s.shape)} is not hidden states; expected (batch, tokens, width)"
        )
    valid = token_mask(pair, tuple(s.shape), s.device, term)
    return s[valid], t.to(s.device)[valid]


def _pairs(pair: PairContext, term: str, layers: Any, connector: str) -> list[tuple[Tensor, Tensor]]:
    params = _with_default({"layers": layers, "connector": connector})
    return [token_rows(pair, term, s.float(), t.float()) for s, t in connected(pair, term, params)]


def _mean(values: list[Tensor]) -> Tensor:
    return sum(values[1:], values[0]) / len(values)


@register_objective(
    "hidden_mse", teacher=False, needs=_needs("hidden_mse"), inputs="pair", build=_build, resolve=_resolve
)
def hidden_mse(pair: PairContext, *, layers: Any = None, connector: str = "auto") -> Tensor:
    """TinyBERT: mean squared error between connector(student hidden states) and the teacher's, real tokens only."""
    losses = []
    for s, t in _pairs(pair, "hidden_mse", layers, connector):
        # No real token (an all-padding batch) gives 0, not the NaN of an empty mean.
        losses.append(F.mse_loss(s, t) if s.numel() else s.sum())
    return _mean(losses)


@register_objective(
    "hidden_cosine", teacher=False, needs=_needs("hidden_cosine"), inputs="pair", build=_build, resolve=_resolve
)
def hidden_cosine(pair: PairContext, *, layers: Any = None, connector: str = "auto") -> Tensor:
    """DistilBERT: 1 − cosine similarity between connector(student hidden states) and the teacher's, per real token."""
    losses = []
    for s, t in _pairs(pair, "hidden_cosine", layers, connector):
        losses.append((1.0 - F.cosine_similarity(s, t, dim=-1)).mean() if s.numel() else s.sum())
    return _mean(losses)
