"""Pure pieces of the LLM teacher: label sets, answer parsing, prompts, token mass, calibration, de-duplication,
rationale verdicts. Golden values are worked out by hand in the comments."""

from __future__ import annotations

import numpy as np
import pytest

from kdforge.errors import ConfigError
from kdforge.llm.dedup import duplicates, jaccard, shingles
from kdforge.llm.labels import LabelSet, PromptConfig, render_prompt
from kdforge.llm.methods import MIN_LABEL_MASS, calibrate, content_free_floor, softmax, token_mass
from kdforge.llm.rationales import final_answer, reasoning

LABELS = LabelSet.parse({"sport": "sports", "business": None, "tech": {"verbalizer": "technology"}})


def test_label_set_names_verbalizers_and_errors() -> None:
    assert LABELS.names == ("sport", "business", "tech")
    assert LABELS.verbalizers == ("sports", "business", "technology")
    with pytest.raises(ConfigError, match="'a' appears twice"):
        LabelSet.parse(["a", "a"])
    with pytest.raises(ConfigError, match="at least 2"):
        LabelSet.parse(["only"])
    with pytest.raises(ConfigError, match="verbalizer 'Same' is used by two labels"):
        LabelSet.parse({"a": "same", "b": "Same"})


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("sports", 0),
        ("Sports.", 0),
        ("Answer: business", 1),
        ("technology\nbecause it mentions chips", 2),
        ("The topic is sports.", 0),
        ("tech", 2),  # the label's own name counts too
        ("sports or business", None),  # two labels: never guessed
        ("Not sports", None),  # a negation is not a label
        ("weather", None),
        ("", None),
        ("sportsmanship", None),  # whole words only
    ],
)
def test_parse_answer_never_guesses(answer: str, expected: int | None) -> None:
    assert LABELS.parse_answer(answer) == expected


def test_render_prompt_fills_fields_literally_and_refuses_unknown_ones() -> None:
    prompt = PromptConfig(few_shot=[{"text": "Goal in the 90th minute", "label": "sport"}])
    messages = render_prompt(prompt, LABELS, "A {brace} text", chat=True)
    assert isinstance(messages, list) and messages[-1]["role"] == "user"
    content = messages[-1]["content"]
    assert "sports, business, technology" in content and "Category: sports" in content and "A {brace} text" in content
    with pytest.raises(ConfigError, match=r"prompt.template: unknown field \{labl\}"):
        render_prompt(PromptConfig(template="{text} {labl}"), LABELS, "x", chat=False)


def test_token_mass_credits_only_unambiguous_label_prefixes() -> None:
    top = {" sports": np.log(0.5), "Bus": np.log(0.2), " te": np.log(0.1), "s": np.log(0.1), "The": np.log(0.1)}
    mass = token_mass(top, LABELS)
    # " sports" → sport; "Bus" → business; " te" → technology; "s" starts "sports" only → sport; "The" → none.
    np.testing.assert_allclose(mass, [0.6, 0.2, 0.1])
    assert MIN_LABEL_MASS == 0.5


def test_calibration_divides_by_the_content_free_distribution() -> None:
    probs = np.array([0.6, 0.3, 0.1])
    free = np.array([0.5, 0.25, 0.25])
    # ratios 1.2, 1.2, 0.4 → normalised by 2.8
    np.testing.assert_allclose(calibrate(probs, free), [1.2 / 2.8, 1.2 / 2.8, 0.4 / 2.8])
    # the same in log space: softmax(log p - log p_cf)
    np.testing.assert_allclose(calibrate(probs, free), softmax(np.log(probs) - np.log(free)))
    floored = content_free_floor(np.array([1.0, 0.0, 0.0]))
    assert floored.min() == pytest.approx(0.01 / 3) and floored.sum() == pytest.approx(1.0)


def test_softmax_keeps_failed_rows_nan() -> None:
    out = softmax(np.array([[0.0, np.log(3.0)], [np.nan, np.nan]]))
    np.testing.assert_allclose(out[0], [0.25, 0.75])
    assert np.isnan(out[1]).all()


def test_duplicates_exact_and_near() -> None:
    texts = [
        "Oil prices rose sharply on Monday after OPEC cut output",
        "oil prices  rose sharply on monday after OPEC cut output",  # exact after normalising
        "Oil prices rose sharply on Monday after OPEC cut its output",  # near
        "Wheat harvest in Kansas beat every forecast this year",
    ]
    assert duplicates(texts, threshold=0.6) == [None, "exact duplicate of #0", "near duplicate of #0", None]
    a, b = shingles(texts[0]), shingles(texts[2])
    assert jaccard(a, b) == pytest.approx(len(a & b) / len(a | b))
    assert duplicates(texts, threshold=1.0)[2] is None  # threshold 1: only exact duplicates


def test_rationale_verdict_reads_the_last_answer_line_only() -> None:
    text = "The text talks about a match.\nAnswer: sports\nI hope this answers your question about business."
    assert final_answer(text, LABELS) == 0
    assert reasoning(text) == "The text talks about a match."
    assert final_answer("Let me answer: it is about chips.\nFinal answer: technology", LABELS) == 2
    assert final_answer("This answers it.", LABELS) is None


def test_generation_requests_show_seed_examples_of_their_own_label() -> None:
    from kdforge.llm.generate import GenerateConfig, clean, requests_for

    cfg = GenerateConfig(labels={"sport": "sports", "business": None}, per_label=2, prompt={"example": " [{text}]"},
                         seeds={"path": "unused", "per_prompt": 1})  # fmt: skip
    seeds = {0: ["goal scored"], 1: ["shares fell"]}
    jobs = requests_for(cfg, LabelSet.parse(cfg.labels), 0, seeds)
    assert [j["label"] for j in jobs] == [0, 0, 1, 1]
    assert all("[goal scored]" in j["messages"][-1]["content"] for j in jobs[:2])
    assert all("[shares fell]" in j["messages"][-1]["content"] for j in jobs[2:])
    assert "about sports" in jobs[0]["messages"][-1]["content"]
    assert clean('Here is a short article:\n\n"Stocks rallied."') == "Stocks rallied."
