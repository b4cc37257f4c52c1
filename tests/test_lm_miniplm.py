"""MiniPLM Difference Sampling: log-likelihoods, padding, ordering, selection, cross-tokenizer use and errors."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from kdforge.errors import ConfigError  # noqa: E402
from kdforge.lm.miniplm import DocScore, keep_count, refine_corpus, score_documents, select  # noqa: E402

TEXTS = [
    "It is a truth universally acknowledged.",
    "The cat sat on the mat with another cat.",
    "A single man in possession of a good fortune must be in want of a wife, however little known.",
    "Emma Woodhouse, handsome, clever, and rich.",
    "cat cat cat",
    "She was the youngest of the two daughters of a most affectionate, indulgent father.",
]
WORDS = ["[UNK]", "[PAD]", "a", "the", "cat", "sat", "on", "mat", "with", "another", "it", "is", "truth", "of", "in"]


@pytest.fixture(scope="module")
def smol_tokenizer():
    """The real SmolLM2 tokenizer (49,152 ids) from the kdforge cache."""
    from kdforge.llm.assets import smollm2_folder

    try:
        folder = smollm2_folder()
    except ConfigError as err:
        pytest.skip(str(err))
    return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)


def tiny_llama(vocab_size: int, seed: int) -> torch.nn.Module:
    """A one-layer Llama with random weights (fast on CPU even with a 49k vocabulary)."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).eval()


def word_tokenizer() -> tokenizers.Tokenizer:
    """A small WordLevel tokenizer built in memory (no download)."""
    from tokenizers.models import WordLevel
    from tokenizers.normalizers import Lowercase
    from tokenizers.pre_tokenizers import Whitespace

    tok = tokenizers.Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.normalizer = Lowercase()
    tok.pre_tokenizer = Whitespace()
    return tok


class Unigram(torch.nn.Module):
    """A model that gives every position the same next-token logits."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.register_buffer("table", logits.float())

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        return SimpleNamespace(logits=self.table.expand(*input_ids.shape, -1).clone())


def reference_logprob(model, ids: list[int]) -> float:
    """Plain forward on one unpadded document, then log_softmax and gather."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].double()
    return float(torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:]).unsqueeze(-1)).sum())


def test_logprob_matches_plain_computation(smol_tokenizer):
    teacher, reference = tiny_llama(49152, 0), tiny_llama(49152, 1)
    scores = score_documents(TEXTS, teacher, smol_tokenizer, reference, smol_tokenizer, batch_size=4)
    for text, s in zip(TEXTS, scores, strict=True):
        ids = smol_tokenizer(text)["input_ids"]
        assert s.teacher_tokens == s.reference_tokens == len(ids) - 1
        assert s.teacher_logprob == pytest.approx(reference_logprob(teacher, ids), rel=1e-5, abs=1e-3)
        assert s.reference_logprob == pytest.approx(reference_logprob(reference, ids), rel=1e-5, abs=1e-3)
        expected = s.teacher_logprob / s.teacher_tokens - s.reference_logprob / s.reference_tokens
        assert s.score == pytest.approx(expected)


def test_padding_does_not_change_scores(smol_tokenizer):
    teacher, reference = tiny_llama(49152, 0), tiny_llama(49152, 1)
    batched = score_documents(TEXTS, teacher, smol_tokenizer, reference, smol_tokenizer, batch_size=8)
    single = score_documents(TEXTS, teacher, smol_tokenizer, reference, smol_tokenizer, batch_size=1)
    for a, b in zip(batched, single, strict=True):
        assert a.teacher_logprob == pytest.approx(b.teacher_logprob, rel=1e-5, abs=1e-3)
        assert a.reference_logprob == pytest.approx(b.reference_logprob, rel=1e-5, abs=1e-3)


def test_max_len_truncates(smol_tokenizer):
    model = tiny_llama(49152, 0)
    s = score_documents(TEXTS[2:3], model, smol_tokenizer, model, smol_tokenizer, max_len=5)[0]
    assert s.teacher_tokens == 4 and s.score == pytest.approx(0.0)


def test_difference_prefers_what_the_teacher_likes_more():
    tok = word_tokenizer()
    likes_cat = torch.zeros(len(WORDS))
    likes_cat[WORDS.index("cat")] = 4.0
    teacher, reference = Unigram(likes_cat), Unigram(torch.zeros(len(WORDS)))
    scores = score_documents(TEXTS, teacher, tok, reference, tok)
    # The reference is uniform, so the score is the teacher's per-token gain; "cat cat cat" gains most.
    kept = select(scores, 1 / len(TEXTS))
    assert kept == [TEXTS.index("cat cat cat")]
    assert scores[1].score > scores[0].score  # a sentence with cats beats one without
    swapped = score_documents(TEXTS, reference, tok, teacher, tok)
    for a, b in zip(scores, swapped, strict=True):
        assert a.score == pytest.approx(-b.score, abs=1e-9)


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.3, 0.5, 0.75, 1.0])
def test_select_keeps_the_top_round_fraction(fraction):
    values = [math.sin(7.0 * i) for i in range(40)]
    kept = select(values, fraction)
    k = keep_count(40, fraction)
    assert k == max(1, math.floor(fraction * 40 + 0.5)) and len(kept) == k
    assert kept == sorted(kept)
    assert set(kept) == set(sorted(range(40), key=lambda i: -values[i])[:k])


def test_select_accepts_docscores_and_rounds_half_up():
    scores = [DocScore(-float(i), 1, 0.0, 1) for i in range(10)]
    assert select(scores, 0.25) == [0, 1, 2]  # 2.5 → 3 documents, the three highest
    assert select(scores, 0.01) == [0]  # at least one


def test_random_mode_is_seeded():
    values = list(range(50))
    a, b = select(values, 0.5, "random", seed=3), select(values, 0.5, "random", seed=3)
    assert a == b and len(a) == 25 and a == sorted(a)
    assert select(values, 0.5, "random", seed=4) != a


def test_cross_tokenizer(smol_tokenizer):
    words = word_tokenizer()
    teacher, reference = tiny_llama(49152, 0), tiny_llama(len(WORDS), 1)
    scores = score_documents(TEXTS, teacher, smol_tokenizer, reference, words, batch_size=3)
    for text, s in zip(TEXTS, scores, strict=True):
        ids = words.encode(text).ids
        assert s.reference_tokens == len(ids) - 1
        assert s.teacher_tokens == len(smol_tokenizer(text)["input_ids"]) - 1
        assert s.reference_logprob == pytest.approx(reference_logprob(reference, ids), rel=1e-5, abs=1e-3)
        assert math.isfinite(s.score)
    # The same tokenizer through the transformers wrapper gives the same scores.
    wrapped = transformers.PreTrainedTokenizerFast(tokenizer_object=words)
    again = score_documents(TEXTS, teacher, smol_tokenizer, reference, wrapped, batch_size=3)
    assert [s.reference_tokens for s in again] == [s.reference_tokens for s in scores]


def test_refine_corpus_writes_top_fraction(tmp_path, smol_tokenizer):
    for name, seed in (("teacher", 0), ("reference", 1)):
        tiny_llama(49152, seed).save_pretrained(tmp_path / name)
        smol_tokenizer.save_pretrained(tmp_path / name)
    out = tmp_path / "out" / "refined.jsonl"
    summary = refine_corpus(TEXTS, tmp_path / "teacher", tmp_path / "reference", 0.5, out, batch_size=4)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["kept"] == len(rows) == 3 and summary["dropped"] == 3
    assert [r["text"] for r in rows] == [t for t in TEXTS if t in {r["text"] for r in rows}]  # corpus order
    assert min(r["score"] for r in rows) >= summary["mean_score_dropped"]
    assert summary["teacher_tokens_total"] >= summary["teacher_tokens_kept"] > 0
    assert not [p for p in out.parent.iterdir() if p.name != "refined.jsonl"]  # no temporary file left


@pytest.mark.parametrize("fraction", [0, 0.0, -0.5, 1.5, float("nan"), "0.5", True])
def test_bad_fraction(fraction):
    with pytest.raises(ConfigError, match="fraction"):
        select([1.0, 2.0], fraction)


def test_errors(tmp_path):
    with pytest.raises(ConfigError, match="fraction = 2"):
        refine_corpus(TEXTS, tmp_path, tmp_path, 2, tmp_path / "o.jsonl")
    with pytest.raises(ConfigError, match=r"teacher_path = .*missing"):
        refine_corpus(TEXTS, tmp_path / "missing", tmp_path, 0.5, tmp_path / "o.jsonl")
    with pytest.raises(ConfigError, match=r"has no config\.json"):
        refine_corpus(TEXTS, tmp_path, tmp_path, 0.5, tmp_path / "o.jsonl")
    with pytest.raises(ConfigError, match="empty"):
        refine_corpus([], tmp_path, tmp_path, 0.5, tmp_path / "o.jsonl")
    with pytest.raises(ConfigError, match="mode"):
        select([1.0], 0.5, mode="bottom")
    tok, model = word_tokenizer(), Unigram(torch.zeros(len(WORDS)))
    with pytest.raises(ConfigError, match="document 1 has 1 token"):
        score_documents(["the cat", "cat"], model, tok, model, tok)
    with pytest.raises(ConfigError, match="empty"):
        score_documents([], model, tok, model, tok)
