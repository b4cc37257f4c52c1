"""Where a causal LM's responses come from: batched KV-cache generation, speculative KD, SeqKD's cache, GKD's λ mix,
DistiLLM-2's paired responses, and the errors for models that cannot generate."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import torch

from kdforge.errors import ConfigError, IntegrityError
from kdforge.lm.generation import Continuations, continue_prompts, pack
from kdforge.lm.sources import ResponseSource, prompts_of
from kdforge.recipe import ResponsesConfig
from lm_models import tiny_llama as small_llama

transformers = pytest.importorskip("transformers")
V = 50


def tiny_llama(seed: int) -> torch.nn.Module:
    return small_llama(seed, V).eval()


PROMPTS = [torch.tensor([5, 9, 13, 7]), torch.tensor([22, 3]), torch.tensor([8, 8, 40, 2, 17, 31])]


def hf_greedy(model: torch.nn.Module, prompt: torch.Tensor, n: int) -> list[int]:
    """Reference: transformers' own generate on one unpadded prompt."""
    with torch.no_grad():
        out = model.generate(
            input_ids=prompt[None],
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
    return out[0, len(prompt) :].tolist()


def test_batched_greedy_generation_with_left_padding_equals_generate_one_by_one() -> None:
    model = tiny_llama(0)
    got = continue_prompts(model, PROMPTS, 6, temperature=0.0)
    for i, prompt in enumerate(PROMPTS):
        assert got.tokens[i].tolist() == hf_greedy(model, prompt, 6)
    assert got.lengths.tolist() == [6, 6, 6]


def test_speculative_keeps_accepted_proposals_and_replaces_the_rest_by_the_teacher() -> None:
    student, teacher = tiny_llama(0), tiny_llama(1)
    everything = continue_prompts(student, PROMPTS, 5, temperature=0.0, verifier=teacher, accept_top_k=V)
    assert everything.replaced == 0  # every token is in the teacher's top-V
    assert everything.tokens.tolist() == continue_prompts(student, PROMPTS, 5, temperature=0.0).tokens.tolist()
    # With top-1, every token the teacher would not pick greedily is replaced: the teacher's own greedy text.
    strict = continue_prompts(student, PROMPTS, 5, temperature=0.0, verifier=teacher, accept_top_k=1)
    for i, prompt in enumerate(PROMPTS):
        assert strict.tokens[i].tolist() == hf_greedy(teacher, prompt, 5)
    assert strict.replaced > 0


def test_generation_stops_rows_at_eos() -> None:
    model = tiny_llama(0)
    first = continue_prompts(model, PROMPTS, 4, temperature=0.0).tokens[:, 0]
    eos = int(first[0])  # the first row's first token: that row ends at once
    got = continue_prompts(model, PROMPTS, 4, temperature=0.0, eos_id=eos)
    assert int(got.lengths[0]) == 1


def test_pack_puts_labels_on_response_tokens_only() -> None:
    prompts = [torch.tensor([4, 5, 6]), torch.tensor([7])]
    cont = Continuations(torch.tensor([[10, 11, 12], [13, 14, 15]]), torch.tensor([2, 3]))
    batch = pack(prompts, cont, pad_id=0)
    assert batch["input"].tolist() == [[4, 5, 6, 10, 11], [7, 13, 14, 15, 0]]
    assert batch["attention_mask"].tolist() == [[True] * 5, [True] * 4 + [False]]
    # Position j predicts token j + 1: the last prompt token predicts the first response token.
    assert batch["label"].tolist() == [[-100, -100, 10, 11, -100], [13, 14, 15, -100, -100]]


def plain_batch(n: int = 3, s: int = 12) -> dict[str, torch.Tensor]:
    ids = torch.randint(2, V, (n, s), generator=torch.Generator().manual_seed(0))
    labels = torch.full_like(ids, -100)
    labels[:, :-1] = ids[:, 1:]
    return {
        "input": ids,
        "attention_mask": torch.ones_like(ids, dtype=torch.bool),
        "label": labels,
        "index": torch.arange(n),
    }


def test_prompts_of_plain_text_take_the_first_tokens_and_of_prompt_response_rows_the_prompt() -> None:
    batch = plain_batch()
    assert [len(p) for p in prompts_of(batch, 5)] == [5, 5, 5]
    batch["label"][1, :6] = -100  # row 1: a 7-token prompt, its response starts at token 7
    assert len(prompts_of(batch, 5)[1]) == 7


def test_seqkd_generates_each_sample_once_and_reuses_it_from_the_cache(tmp_path) -> None:
    cfg = ResponsesConfig(source="seqkd", prompt_tokens=4, max_new_tokens=5, cache_dir=str(tmp_path))
    student, teacher = tiny_llama(0), tiny_llama(1)
    src = ResponseSource(cfg, student, teacher, pad_id=0, eos_id=None, seed=0, cache_key="k")
    first = src(plain_batch(), step=0)
    assert src.stats()["gen_tokens"] == 15
    again = ResponseSource(cfg, student, teacher, pad_id=0, eos_id=None, seed=1, cache_key="k")
    second = again(plain_batch(), step=0)
    assert again.stats()["gen_tokens"] == 0  # a new run with the same key sends nothing to the teacher
    assert torch.equal(first["input"], second["input"])
    prompt = plain_batch()["input"][0, :4]
    assert first["input"][0, 4:].tolist() == hf_greedy(teacher, prompt, 5)


def _seqkd_cache(folder: Path) -> tuple[ResponsesConfig, Path]:
    """A SeqKD response cache written by a real run of the source (3 samples), closed so its log is in the file."""
    cfg = ResponsesConfig(source="seqkd", prompt_tokens=4, max_new_tokens=5, cache_dir=str(folder))
    src = ResponseSource(cfg, tiny_llama(0), tiny_llama(1), pad_id=0, eos_id=None, seed=0, cache_key="k")
    src(plain_batch(), step=0)
    src.cache.close()
    return cfg, folder / "seqkd-k.sqlite"


@pytest.mark.parametrize("how", ("truncate-half", "truncate-0", "flip-header", "flip-response"))
def test_a_damaged_response_cache_is_refused_in_one_line_and_left_as_it_is(tmp_path: Path, how: str, reliability):
    cfg, path = _seqkd_cache(tmp_path)
    data = bytearray(path.read_bytes())
    if how == "truncate-half":
        data = data[: len(data) // 2]
    elif how == "truncate-0":
        data = bytearray()
    elif how == "flip-header":
        data[1] ^= 0x01
    else:
        with sqlite3.connect(path) as con:
            blob = con.execute("SELECT tokens FROM responses LIMIT 1").fetchone()[0]
        data[bytes(data).index(blob) + 3] ^= 0x01  # inside a token id: still a valid database, wrong text
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as caught:
        src = ResponseSource(cfg, tiny_llama(0), tiny_llama(1), pad_id=0, eos_id=None, seed=0, cache_key="k")
        src(plain_batch(), step=0)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and "delete it" in message, message
    assert path.read_bytes() == bytes(data), "the damaged cache was written to"
    reliability.record(
        "corruption",
        "SeqKD response cache (SQLite): truncate ×2, flip a header byte, flip a stored token; read by the next run",
        "refused: one line naming the file, 'delete it' (responses are generated again); the file is not written",
        trials=1,
    )


def test_a_response_cache_from_before_row_checksums_is_read_and_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "seqkd-k.sqlite"
    tokens = torch.tensor([5, 9, 13, 7, 1, 2, 3, 4, 5], dtype=torch.long)
    with sqlite3.connect(path) as con:  # the layout written before sha256 was added
        con.execute("CREATE TABLE responses (id INTEGER PRIMARY KEY, tokens BLOB)")
        con.execute("INSERT INTO responses VALUES (?, ?)", (0, tokens.numpy().tobytes()))
    from kdforge.lm.sources import ResponseCache

    cache = ResponseCache(path)
    assert torch.equal(cache.get([0, 1])[0], tokens)
    cache.put({1: tokens[:3]})
    assert torch.equal(cache.get([1])[1], tokens[:3])
    cache.close()
    with sqlite3.connect(path) as con:
        assert con.execute("SELECT COUNT(*) FROM responses WHERE sha256 IS NOT NULL").fetchone()[0] == 1


def test_mixed_writes_the_student_share_of_batches() -> None:
    cfg = ResponsesConfig(source="mixed", student_fraction=0.25, prompt_tokens=4, max_new_tokens=2)
    src = ResponseSource(cfg, tiny_llama(0), tiny_llama(1), pad_id=0, eos_id=None, seed=0)
    batch = plain_batch()
    kept = sum(src(batch, step) is batch for step in range(40))
    assert src.stats()["gen_batches"] == 40 - kept
    assert 4 <= 40 - kept <= 18  # λ = 0.25 of 40 batches, seeded


def test_contrastive_pairs_teacher_and_student_responses(tmp_path) -> None:
    cfg = ResponsesConfig(source="contrastive", prompt_tokens=4, max_new_tokens=3, cache_dir=str(tmp_path))
    src = ResponseSource(cfg, tiny_llama(0), tiny_llama(1), pad_id=0, eos_id=None, seed=0, cache_key="c")
    out = src(plain_batch(), step=0)
    assert out["input"].shape[0] == 6 and out["from_student"].tolist() == [False] * 3 + [True] * 3


def test_sources_that_generate_refuse_models_that_cannot(tmp_path) -> None:
    from kdforge.models.gpt import TinyGPT

    own = TinyGPT(V, 16, 8, 1, 1)
    with pytest.raises(ConfigError, match="student to generate text, but it is a TinyGPT"):
        ResponseSource(ResponsesConfig(source="on_policy"), own, None, 0, None, 0)
    with pytest.raises(ConfigError, match="needs a teacher network that generates"):
        ResponseSource(ResponsesConfig(source="seqkd", cache_dir=str(tmp_path)), tiny_llama(0), None, 0, None, 0)
