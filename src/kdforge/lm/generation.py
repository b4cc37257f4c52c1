"""Batched continuation of prompts with a causal LM's KV cache: sampling, greedy, and speculative (teacher-verified).

Prompts of different lengths are left-padded for generation (position ids follow the attention mask) and repacked
right-padded afterwards, the layout training uses. Speculative KD (Xu et al. 2024): the student proposes each token;
a token outside the teacher's top-k at that position is replaced by a sample from the teacher.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kdforge.errors import ConfigError

IGNORE = -100


def require_generative(model: nn.Module, who: str) -> None:
    """A generation source needs a transformers causal LM (KV cache, position ids); say so before training."""
    name = type(model).__name__
    if not name.endswith("ForCausalLM") or not hasattr(model, "config"):
        raise ConfigError(
            f"responses.source needs the {who} to generate text, but it is a {name}, not a transformers causal LM "
            "(…ForCausalLM with a KV cache); use responses.source: dataset, or a transformers causal LM"
        )


@dataclass
class Continuations:
    """Generated tokens (B, n) after each prompt, and how many of them are real (stopped at EOS)."""

    tokens: Tensor
    lengths: Tensor
    replaced: int = 0  # speculative: proposals the teacher rejected


def left_pad(prompts: list[Tensor], pad_id: int) -> tuple[Tensor, Tensor]:
    """(ids, mask) of prompts left-padded to the longest one."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = p
        mask[i, width - len(p) :] = 1
    return ids, mask


def _cache_name(model: nn.Module) -> str:
    """The forward's KV-cache argument: ``cache`` since transformers 5.2x, ``past_key_values`` before."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class _Stepper:
    """One model decoding with its KV cache, a token at a time."""

    def __init__(self, model: nn.Module, ids: Tensor, mask: Tensor):
        self.model, self.mask, self.key = model, mask, _cache_name(model)
        self.positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=self.positions, use_cache=True, logits_to_keep=1)
        self.past, self.logits = getattr(out, self.key), out.logits[:, -1].float()
        self.positions = self.positions[:, -1:]

    def push(self, token: Tensor) -> None:
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        self.positions = self.positions + 1
        out = self.model(
            input_ids=token[:, None],
            attention_mask=self.mask,
            position_ids=self.positions,
            use_cache=True,
            **{self.key: self.past},
        )
        self.past, self.logits = getattr(out, self.key), out.logits[:, -1].float()


def _draw(logits: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


@torch.no_grad()
def continue_prompts(
    model: nn.Module,
    prompts: list[Tensor],
    max_new_tokens: int,
    temperature: float = 1.0,
    pad_id: int = 0,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    verifier: nn.Module | None = None,
    accept_top_k: int = 25,
) -> Continuations:
    """Continue every prompt by ``max_new_tokens`` (fewer where EOS comes first); ``verifier``: speculative KD."""
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    modes = [(m, m.training) for m in (model, verifier) if m is not None]
    for m, _ in modes:
        m.eval()
    try:
        proposer = _Stepper(model, ids, mask)
        teacher = _Stepper(verifier, ids.to(_device(verifier)), mask.to(_device(verifier))) if verifier else None
        out = torch.empty((len(prompts), max_new_tokens), dtype=torch.long, device=device)
        done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
        lengths = torch.full((len(prompts),), max_new_tokens, dtype=torch.long, device=device)
        replaced = 0
        for t in range(max_new_tokens):
            token = _draw(proposer.logits, temperature, generator)
            if teacher is not None:
                t_logits = teacher.logits.to(device)
                top = t_logits.topk(min(accept_top_k, t_logits.shape[-1]), dim=-1).indices
                rejected = ~(top == token[:, None]).any(-1)
                if rejected.any():
                    token = torch.where(rejected, _draw(t_logits, max(temperature, 1e-6), generator), token)
                    replaced += int((rejected & ~done).sum())
            out[:, t] = token
            if eos_id is not None:
                ended = (token == eos_id) & ~done
                lengths[ended] = t + 1
                done |= ended
                if bool(done.all()):
                    out = out[:, : t + 1]
                    break
            if t + 1 < max_new_tokens:
                proposer.push(token)
                if teacher is not None:
                    teacher.push(token.to(_device(verifier)))
        return Continuations(out.cpu(), lengths.clamp(max=out.shape[1]).cpu(), replaced)
    finally:
        for m, was in modes:
            m.train(was)


def _device(model: nn.Module | None) -> torch.device:
    return next(model.parameters()).device if model is not None else torch.device("cpu")


def pack(prompts: list[Tensor], responses: Continuations, pad_id: int = 0) -> dict[str, Tensor]:
    """Right-padded training rows: prompt + response, attention mask, labels only on response tokens."""
    rows = [torch.cat([p.long(), responses.tokens[i, : int(responses.lengths[i])]]) for i, p in enumerate(prompts)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (row, prompt) in enumerate(zip(rows, prompts, strict=True)):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = True
        # Position j predicts token j + 1: the last prompt position predicts the first response token.
        start = len(prompt) - 1
        labels[i, start : len(row) - 1] = row[start + 1 :]
    return {"input": ids, "attention_mask": mask, "label": labels}
