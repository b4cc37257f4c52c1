"""How a teacher's label distribution is obtained for a batch of texts: one registered function per method.

``score``: the log-likelihood of each label's verbalizer after the prompt (served with echoed logprobs, or local).
``logprobs``: the first answer token's top log-probabilities, mapped onto the labels (served chat).
``vote``: self-consistency, the share of ``samples`` sampled answers naming each label (any server).
``answer``: one greedy answer, parsed (a one-hot distribution).
``similarity``: an embedding teacher's cosine similarity to each label's description, softmaxed.
Each returns, per text, a probability vector over the labels (or None) and the teacher's raw answer or failure reason.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from kdforge.errors import ConfigError
from kdforge.llm.backend import Completion, GenParams
from kdforge.llm.labels import LabelSet, PromptConfig, normalise, render_prompt
from kdforge.registry import Registry


@dataclass
class Outcome:
    """One text's result: ``probs`` over the labels (None: no distribution), the answer shown, a failure reason."""

    probs: np.ndarray | None
    answer: str | None = None
    failed: str | None = None


@dataclass
class MethodContext:
    """What every method needs: the backend, the label set, the prompt and the method's settings."""

    backend: object
    labels: LabelSet
    prompt: PromptConfig
    samples: int
    temperature: float
    top_logprobs: int
    max_tokens: int
    seed: int
    similarity_temperature: float
    fallbacks: int = 0  # texts labelled by vote because the server gave no logprobs
    lock: threading.Lock = field(default_factory=threading.Lock)


METHODS: Registry[Callable[[MethodContext, list[str]], list[Outcome]]] = Registry("annotation method")


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax that keeps NaN rows NaN."""
    with warnings.catch_warnings():  # an all-NaN row (a failed text) stays NaN, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        shifted = scores - np.nanmax(scores, axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def _from_scores(scores: np.ndarray, scale: float = 1.0) -> list[Outcome]:
    probs = softmax(scores / scale)
    return [
        Outcome(None, failed="request failed") if np.isnan(row).any() else Outcome(p)
        for row, p in zip(scores, probs, strict=True)
    ]


@METHODS.register("score")
def score(ctx: MethodContext, texts: list[str]) -> list[Outcome]:
    """Label scoring: softmax over the summed log-probabilities of each verbalizer after the prompt."""
    prompts = [str(render_prompt(ctx.prompt, ctx.labels, t, chat=False)) for t in texts]
    # A leading space: the verbalizer is a new word after "Category:", tokenized as it would be generated.
    return _from_scores(ctx.backend.score(prompts, [" " + v for v in ctx.labels.verbalizers]))  # type: ignore[attr-defined]


@METHODS.register("similarity")
def similarity(ctx: MethodContext, texts: list[str]) -> list[Outcome]:
    """Embedding zero-shot: softmax of cosine similarity to each label's description over a temperature."""
    return _from_scores(
        ctx.backend.score(list(texts), list(ctx.labels.descriptions)),  # type: ignore[attr-defined]
        ctx.similarity_temperature,
    )


MIN_LABEL_MASS = 0.5


def token_mass(top: dict[str, float], labels: LabelSet) -> np.ndarray:
    """Probability mass of the top first tokens credited to the one label each token can begin (ambiguous: none)."""
    mass = np.zeros(len(labels))
    forms = [normalise(v) for v in labels.verbalizers]
    for token, logprob in top.items():
        piece = normalise(token.replace("Ġ", " ").replace("▁", " ")).strip(" .:*\"'")
        if not piece:
            continue
        starts = [i for i, form in enumerate(forms) if form.startswith(piece)]
        if len(starts) == 1:
            mass[starts[0]] += float(np.exp(logprob))
    return mass


def _greedy(ctx: MethodContext) -> GenParams:
    return GenParams(max_tokens=ctx.max_tokens, temperature=0.0, seed=ctx.seed)


def _prompts(ctx: MethodContext, texts: list[str]) -> list:
    return [render_prompt(ctx.prompt, ctx.labels, t, chat=True) for t in texts]


@METHODS.register("logprobs")
def logprobs(ctx: MethodContext, texts: list[str]) -> list[Outcome]:
    """The first answer token's top log-probabilities mapped onto labels; without them (server gives none): vote."""
    backend = ctx.backend
    if not hasattr(backend, "complete"):
        raise ConfigError("annotate.method=logprobs needs a served teacher; use score with a local one")

    def one(prompt: object) -> Outcome:
        done: Completion = backend.complete(prompt, _greedy(ctx), 0, ctx.top_logprobs)  # type: ignore[attr-defined]
        if not done.top_logprobs:
            with ctx.lock:
                ctx.fallbacks += 1
            return vote_one(ctx, prompt)
        mass = token_mass(done.top_logprobs, ctx.labels)
        # Renormalising a sliver of mass would turn noise into a confident label: below half the probability
        # the first token is not a label at all, and the answer's text decides.
        if mass.sum() >= MIN_LABEL_MASS:
            return Outcome(mass / mass.sum(), answer=done.text)
        parsed = ctx.labels.parse_answer(done.text)
        return Outcome(None if parsed is None else np.eye(len(ctx.labels))[parsed], answer=done.text)

    return [_outcome(r) for r in backend.map(one, _prompts(ctx, texts))]  # type: ignore[attr-defined]


def _outcome(result: object) -> Outcome:
    return result if isinstance(result, Outcome) else Outcome(None, failed=str(result))


def failure(answers: object) -> str | None:
    """Why a prompt's completions are missing (None: they are there)."""
    if isinstance(answers, list):
        return None
    return str(answers) if isinstance(answers, Exception) else "request failed"


def _votes(ctx: MethodContext, answers: list[Completion] | None) -> Outcome:
    if (why := failure(answers)) is not None:
        return Outcome(None, failed=why)
    assert isinstance(answers, list)
    counts = np.zeros(len(ctx.labels))
    for answer in answers:
        parsed = ctx.labels.parse_answer(answer.text)
        if parsed is not None:
            counts[parsed] += 1
    shown = " | ".join(a.text.strip()[:40] for a in answers)
    return Outcome(counts / counts.sum() if counts.sum() else None, answer=shown)


def vote_one(ctx: MethodContext, prompt: object) -> Outcome:
    """Self-consistency for one prompt: ``samples`` sampled answers, each request cached under its own seed."""
    params = GenParams(max_tokens=ctx.max_tokens, temperature=ctx.temperature, n=1, seed=ctx.seed)
    answers = [ctx.backend.complete(prompt, params, s) for s in range(ctx.samples)]  # type: ignore[attr-defined]
    return _votes(ctx, answers)


@METHODS.register("vote")
def vote(ctx: MethodContext, texts: list[str]) -> list[Outcome]:
    """Self-consistency: the share of ``samples`` sampled answers naming each label (for servers without logprobs)."""
    params = GenParams(max_tokens=ctx.max_tokens, temperature=ctx.temperature, n=ctx.samples, seed=ctx.seed)
    prompts = _prompts(ctx, texts) if hasattr(ctx.backend, "complete") else _plain(ctx, texts)
    return [_votes(ctx, answers) for answers in ctx.backend.generate(prompts, params)]  # type: ignore[attr-defined]


def _plain(ctx: MethodContext, texts: list[str]) -> list:
    chat = getattr(ctx.backend, "chat_prompt", None)
    prompts = _prompts(ctx, texts)
    return [chat(p) for p in prompts] if chat else [str(render_prompt(ctx.prompt, ctx.labels, t, False)) for t in texts]


@METHODS.register("answer")
def answer(ctx: MethodContext, texts: list[str]) -> list[Outcome]:
    """One greedy answer per text, parsed into a one-hot distribution (unknown when it names no single label)."""
    prompts = _prompts(ctx, texts) if hasattr(ctx.backend, "complete") else _plain(ctx, texts)
    out = []
    for answers in ctx.backend.generate(prompts, _greedy(ctx)):  # type: ignore[attr-defined]
        if (why := failure(answers)) is not None:
            out.append(Outcome(None, failed=why))
            continue
        parsed = ctx.labels.parse_answer(answers[0].text)
        out.append(Outcome(None if parsed is None else np.eye(len(ctx.labels))[parsed], answer=answers[0].text))
    return out


def calibrate(probs: np.ndarray, content_free: np.ndarray) -> np.ndarray:
    """Contextual calibration: p / p_cf renormalised, i.e. the scores minus the content-free input's scores in log
    space (Zhao et al. 2021 take the same argmax of diag(p_cf)⁻¹ p; softmax over those ratios, their soft output,
    would flatten every distribution towards uniform, so the normalised ratio is kept as the soft label).

    ``content_free`` must have no zero (see ``content_free_floor``): a label the content-free input never gets
    would win every text with any mass on it.
    """
    ratio = probs / content_free
    return ratio / ratio.sum()


def content_free_floor(content_free: np.ndarray) -> np.ndarray:
    """The content-free distribution mixed with 1% of uniform: no label is divided by (nearly) zero."""
    return 0.99 * content_free + 0.01 / len(content_free)
