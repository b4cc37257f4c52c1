"""The label set an LLM teacher labels into: names, verbalizers, descriptions, prompts, and answer parsing.

A label's *name* is what the data set calls it (``earn``); its *verbalizer* is the word the teacher is asked or
scored by (``earnings``), which may differ; its *description* is what an embedding teacher compares a text with.
Parsing never guesses: an answer that names no label, or names two, is unknown.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kdforge.errors import ConfigError


class LabelSpec(BaseModel):
    """One label: the word it is asked or scored by, and a sentence describing it (embedding teachers)."""

    model_config = ConfigDict(extra="forbid")
    verbalizer: str | None = None
    description: str | None = None


class PromptConfig(BaseModel):
    """Prompt templates (recipe text, never code): ``{text}``, ``{labels}`` and ``{examples}`` are filled in."""

    model_config = ConfigDict(extra="forbid")
    system: str | None = None
    instruction: str = "Classify the text into one of these categories: {labels}. Answer with the category only."
    template: str = "Text: {text}\nCategory:"
    example: str = "Text: {text}\nCategory: {label}"
    few_shot: list[dict[str, str]] = Field(default_factory=list, description="[{text, label}] shown before the text")
    max_chars: int = Field(2000, gt=0, description="a longer text is cut here, at a word boundary (recorded)")

    @field_validator("template")
    @classmethod
    def _has_text(cls, value: str) -> str:
        if "{text}" not in value:
            raise ValueError("the template must contain {text}")
        return value


@dataclass(frozen=True)
class LabelSet:
    """Label names (their order gives the ids) and what each is asked, scored and described by."""

    names: tuple[str, ...]
    verbalizers: tuple[str, ...]
    descriptions: tuple[str, ...]

    @classmethod
    def parse(cls, labels: list[Any] | dict[str, Any]) -> LabelSet:
        """From a recipe: a list of names, or a mapping name → verbalizer string or {verbalizer, description}."""
        items = labels.items() if isinstance(labels, dict) else ((name, None) for name in labels)
        names, verbs, descs = [], [], []
        for name, spec in items:
            name = str(name).strip()
            if not name:
                raise ConfigError("labels: an empty label name; every label needs a name")
            if name in names:
                raise ConfigError(f"labels: {name!r} appears twice; each label must appear once")
            if isinstance(spec, str):
                spec = LabelSpec(verbalizer=spec)
            elif spec is None:
                spec = LabelSpec()
            elif isinstance(spec, dict):
                try:
                    spec = LabelSpec.model_validate(spec)
                except Exception as err:
                    raise ConfigError(
                        f"labels.{name}: expected a verbalizer string or {{verbalizer, description}}: "
                        f"{' '.join(str(err).split())[:200]}"
                    ) from None
            else:
                raise ConfigError(
                    f"labels.{name}={spec!r}: expected a verbalizer string or {{verbalizer, description}}"
                )
            names.append(name)
            verbs.append((spec.verbalizer or name).strip())
            descs.append((spec.description or spec.verbalizer or name).strip())
        if len(names) < 2:
            raise ConfigError(f"labels: {len(names)} label(s) given; annotation needs at least 2")
        twice = next((v for i, v in enumerate(verbs) if normalise(v) in map(normalise, verbs[:i])), None)
        if twice is not None:
            raise ConfigError(
                f"labels: verbalizer {twice!r} is used by two labels; an answer could not tell them apart"
            )
        return cls(tuple(names), tuple(verbs), tuple(descs))

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        """Id of label ``name``; an unknown name fails naming it and the label set."""
        try:
            return self.names.index(name)
        except ValueError:
            raise ConfigError(f"label {name!r} is not in the label set ({', '.join(self.names)})") from None

    def parse_answer(self, answer: str) -> int | None:
        """The label an answer names, or None when it names none or several (never guessed)."""
        text = normalise(answer)
        if not text:
            return None
        forms = [(i, normalise(v)) for i, v in enumerate(self.verbalizers)]
        forms += [(i, normalise(n)) for i, n in enumerate(self.names)]
        # The answer as a whole, or its first line, stripped of punctuation and a leading "answer:"-style prefix.
        first = re.sub(r"^(answer|category|label|topic|class)\s*(is)?\s*:?\s*", "", text.split("\n")[0]).strip(
            " .:*\"'"
        )
        for candidate in (text.strip(" .:*\"'"), first):
            exact = {i for i, form in forms if candidate == form}
            if len(exact) == 1:
                return exact.pop()
        # Otherwise: exactly one label named as a whole word in the first line, and no negation ("not sport").
        if _NEGATION.search(first):
            return None
        named = {i for i, form in forms if re.search(rf"(?<![a-z0-9]){re.escape(form)}(?![a-z0-9])", first)}
        return named.pop() if len(named) == 1 else None


_NEGATION = re.compile(r"(?<![a-z])(not|no|never|neither|nor|isn't|isnt|non)(?![a-z])")


def normalise(text: str) -> str:
    """Lower case, unicode-folded, single spaces: how answers and verbalizers are compared."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(text.split())


def clip(text: str, max_chars: int) -> tuple[str, bool]:
    """``text`` cut to ``max_chars`` at a word boundary; the flag says whether it was cut."""
    if len(text) <= max_chars:
        return text, False
    cut = text[:max_chars]
    space = cut.rfind(" ")
    return (cut[:space] if space > max_chars // 2 else cut), True


def fill(template: str, where: str, **values: str) -> str:
    """``template`` with ``{name}`` fields replaced literally (a text holding braces is not a format string)."""
    unknown = set(re.findall(r"\{([A-Za-z_]+)\}", template)) - set(values)
    if unknown:
        raise ConfigError(
            f"{where}: unknown field {{{sorted(unknown)[0]}}}; allowed: " + ", ".join("{" + v + "}" for v in values)
        )
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


def render_prompt(prompt: PromptConfig, labels: LabelSet, text: str, chat: bool) -> list[dict[str, str]] | str:
    """The prompt for one text: chat messages (system + user) or one completion string; few-shot examples included."""
    label_list = ", ".join(labels.verbalizers)
    examples = []
    for i, shot in enumerate(prompt.few_shot):
        if "text" not in shot or "label" not in shot:
            raise ConfigError(f"prompt.few_shot[{i}]: expected keys text and label")
        verbal = labels.verbalizers[labels.index(shot["label"])]
        examples.append(
            fill(prompt.example, "prompt.example", text=clip(shot["text"], prompt.max_chars)[0], label=verbal)
        )
    shown = "\n\n".join(examples)
    instruction = fill(prompt.instruction, "prompt.instruction", labels=label_list, examples=shown)
    body = fill(
        prompt.template, "prompt.template", text=clip(text, prompt.max_chars)[0], labels=label_list, examples=shown
    )
    parts = [p for p in (instruction, shown, body) if p]
    if chat:
        messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
        return [*messages, {"role": "user", "content": "\n\n".join(parts)}]
    head = f"{prompt.system}\n\n" if prompt.system else ""
    return head + "\n\n".join(parts)
