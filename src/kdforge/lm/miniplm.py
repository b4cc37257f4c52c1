"""MiniPLM Difference Sampling (Gu et al., ICLR 2025): keep documents a teacher LM likes more than a small reference LM.

Score of a document x, as in the official code (thu-coai/MiniPLM: per-document mean token loss of each model,
``diff = ref_loss - teacher_loss``)::

    score(x) = (1/|x|_T) Σ_t log p_teacher(x_t | x_<t)  −  (1/|x|_R) Σ_t log p_ref(x_t | x_<t)

each model on its own tokenization (|x|_T, |x|_R = scored tokens), so teacher, reference and student may all use
different tokenizers. The top ``fraction`` (the paper's α, 0.5 by default) is kept and the student is trained on it
with the plain LM loss.
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from kdforge.errors import ConfigError

MODES = ("difference", "random")


@dataclass(frozen=True)
class DocScore:
    """One document's log-likelihood under the teacher and the reference, and its difference score."""

    teacher_logprob: float  # summed over the scored tokens, natural log
    teacher_tokens: int
    reference_logprob: float
    reference_tokens: int

    @property
    def score(self) -> float:
        """Mean log-prob per token under the teacher minus the same under the reference (higher = keep)."""
        return self.teacher_logprob / self.teacher_tokens - self.reference_logprob / self.reference_tokens


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text with the tokenizer's own special-token convention (HF tokenizer or ``tokenizers``)."""
    if hasattr(tokenizer, "encode_batch") and not callable(tokenizer):
        return [list(e.ids) for e in tokenizer.encode_batch(texts)]
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]


@torch.inference_mode()
def sequence_logprobs(
    model: Any, ids: list[list[int]], batch_size: int = 8, max_len: int = 512, device: str = "cpu"
) -> list[tuple[float, int]]:
    """(Σ log p(x_t | x_<t) over t ≥ 1, number of scored tokens) of each id list, truncated to ``max_len`` ids."""
    ids = [seq[:max_len] for seq in ids]
    short = next((i for i, seq in enumerate(ids) if len(seq) < 2), None)
    if short is not None:
        raise ConfigError(f"document {short} has {len(ids[short])} token(s); expected at least 2 to score one")
    model.eval()
    out: list[tuple[float, int]] = [(0.0, 0)] * len(ids)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths together: less padding
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(ids[i]) for i in chunk)
        input_ids = torch.zeros(len(chunk), width, dtype=torch.long)  # pad id 0: masked out, any valid id works
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for row, i in enumerate(chunk):
            input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
            mask[row, : len(ids[i])] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
        target = input_ids[:, 1:]
        # log p = logit[target] - logsumexp(logits): no second (B, S, V) tensor for a full log_softmax.
        token_lp = logits.gather(-1, target.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        del logits
        keep = mask[:, 1:].bool()
        sums = torch.where(keep, token_lp, torch.zeros_like(token_lp)).sum(-1).double().cpu()
        counts = keep.sum(-1).cpu()
        for row, i in enumerate(chunk):
            out[i] = (float(sums[row]), int(counts[row]))
    return out


def score_documents(
    texts: list[str],
    teacher: Any,
    teacher_tokenizer: Any,
    reference: Any,
    reference_tokenizer: Any,
    batch_size: int = 8,
    max_len: int = 512,
    device: str = "cpu",
) -> list[DocScore]:
    """Each document's teacher and reference log-likelihoods (each model with its own tokenizer) and difference."""
    if not texts:
        raise ConfigError("texts is empty; expected at least one document to score")
    teacher_lp = sequence_logprobs(teacher, _encode(teacher_tokenizer, texts), batch_size, max_len, device)
    reference_lp = sequence_logprobs(reference, _encode(reference_tokenizer, texts), batch_size, max_len, device)
    return [DocScore(t, nt, r, nr) for (t, nt), (r, nr) in zip(teacher_lp, reference_lp, strict=True)]


def _check_fraction(fraction: float) -> None:
    if isinstance(fraction, bool) or not (isinstance(fraction, (int, float)) and 0.0 < fraction <= 1.0):
        raise ConfigError(f"fraction = {fraction!r}; expected a number in (0, 1] (the share of documents to keep)")


def keep_count(n: int, fraction: float) -> int:
    """How many of ``n`` documents a ``fraction`` keeps: fraction · n rounded half up, at least one."""
    _check_fraction(fraction)
    return max(1, min(n, math.floor(fraction * n + 0.5)))


def select(scores: list[DocScore] | list[float], fraction: float, mode: str = "difference", seed: int = 0) -> list[int]:
    """Indices (in corpus order) of the kept documents: the top ``fraction`` by score, or as many drawn at random."""
    if mode not in MODES:
        raise ConfigError(f"mode = {mode!r}; expected one of {', '.join(MODES)}")
    if not scores:
        raise ConfigError("scores is empty; expected at least one document")
    values = [s.score if isinstance(s, DocScore) else float(s) for s in scores]
    k = keep_count(len(values), fraction)
    if mode == "random":
        return sorted(random.Random(seed).sample(range(len(values)), k))
    if any(math.isnan(v) for v in values):
        raise ConfigError("a document's score is NaN; expected finite scores (check the models' outputs)")
    ranked = sorted(range(len(values)), key=lambda i: (-values[i], i))  # ties: earlier document first
    return sorted(ranked[:k])


def load_causal_lm(path: str | os.PathLike[str], device: str = "cpu") -> tuple[Any, Any]:
    """A local HF causal LM folder → (model in fp32 eval mode, tokenizer); never downloads."""
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(f"model folder {str(folder)!r} has no config.json; expected a local HF causal-LM folder")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdforge.models.hf.load import OFFLINE, guarded

    where = "causal-LM model folder"
    tokenizer = guarded(lambda: AutoTokenizer.from_pretrained(folder, **OFFLINE), folder, None, where)
    model = guarded(
        lambda: AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **OFFLINE), folder, None, where
    )
    return model.to(device).eval(), tokenizer


def write_jsonl(path: str | os.PathLike[str], records: list[dict[str, Any]]) -> Path:
    """Write ``records`` as JSONL atomically (a temporary file in the same folder, then ``os.replace``)."""
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _per_token(s: DocScore) -> tuple[float, float]:
    return s.teacher_logprob / s.teacher_tokens, s.reference_logprob / s.reference_tokens


def summarize(scores: list[DocScore], kept: list[int]) -> dict[str, Any]:
    """Kept/dropped counts, mean scores and token counts of a selection."""
    chosen = set(kept)
    dropped = [i for i in range(len(scores)) if i not in chosen]
    return {
        "documents": len(scores),
        "kept": len(kept),
        "dropped": len(dropped),
        "mean_score_kept": _mean([scores[i].score for i in kept]),
        "mean_score_dropped": _mean([scores[i].score for i in dropped]),
        "mean_teacher_logprob_per_token_kept": _mean([_per_token(scores[i])[0] for i in kept]),
        "mean_reference_logprob_per_token_kept": _mean([_per_token(scores[i])[1] for i in kept]),
        "teacher_tokens_kept": sum(scores[i].teacher_tokens for i in kept),
        "teacher_tokens_total": sum(s.teacher_tokens for s in scores),
        "reference_tokens_kept": sum(scores[i].reference_tokens for i in kept),
        "reference_tokens_total": sum(s.reference_tokens for s in scores),
    }


def refine_corpus(
    texts: list[str],
    teacher_path: str | os.PathLike[str],
    reference_path: str | os.PathLike[str],
    fraction: float = 0.5,
    out_path: str | os.PathLike[str] = "refined.jsonl",
    *,
    mode: str = "difference",
    seed: int = 0,
    batch_size: int = 8,
    max_len: int = 512,
    device: str = "cpu",
) -> dict[str, Any]:
    """Score ``texts`` with two local HF causal LMs, write the kept ones as JSONL {"text", "score"}; summarize."""
    _check_fraction(fraction)
    if mode not in MODES:
        raise ConfigError(f"mode = {mode!r}; expected one of {', '.join(MODES)}")
    if not texts:
        raise ConfigError("texts is empty; expected at least one document to refine")
    for name, path in (("teacher_path", teacher_path), ("reference_path", reference_path)):
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"{name} = {str(path)!r} is not a folder; expected a local HF causal-LM folder")
        if not (folder / "config.json").is_file():
            raise ConfigError(f"{name} = {str(path)!r} has no config.json; expected a local HF causal-LM folder")
    logprobs = []
    for path in (teacher_path, reference_path):  # one model in memory at a time
        model, tokenizer = load_causal_lm(path, device)
        logprobs.append(sequence_logprobs(model, _encode(tokenizer, texts), batch_size, max_len, device))
        del model
    scores = [DocScore(t, nt, r, nr) for (t, nt), (r, nr) in zip(*logprobs, strict=True)]
    kept = select(scores, fraction, mode, seed)
    target = write_jsonl(out_path, [{"text": texts[i], "score": scores[i].score} for i in kept])
    return {"out_path": str(target), "fraction": fraction, "mode": mode, "seed": seed, **summarize(scores, kept)}


def scores_to_records(scores: list[DocScore]) -> list[dict[str, Any]]:
    """DocScores as plain dicts (for caching scores as JSON)."""
    return [asdict(s) for s in scores]


def scores_from_records(records: list[dict[str, Any]]) -> list[DocScore]:
    """The inverse of :func:`scores_to_records`."""
    return [DocScore(**r) for r in records]
