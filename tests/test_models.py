"""Model builders: shapes, published parameter counts and parameter validation."""

from __future__ import annotations

import pytest
import torch

from kdforge.errors import ConfigError
from kdforge.models import build_model, count_parameters, model_params
from kdforge.registry import MODELS

# CIFAR-100 parameter counts in millions as reported by the CRD paper (Tian et al. 2020) / RepDistiller.
PUBLISHED_M = {
    "resnet8x4": 1.23,
    "resnet32x4": 7.43,
    "resnet20": 0.28,
    "resnet56": 0.86,
    "resnet110": 1.74,
    "wrn_40_2": 2.26,
    "wrn_16_2": 0.70,
    "vgg13": 9.46,
    "vgg8": 3.96,
    "mobilenetv2": 0.81,
    "shufflenetv2": 1.36,
}

EXPECTED_NAMES = {
    "mlp",
    "cnn",
    *(f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)),
    "resnet8x4",
    "resnet32x4",
    "wrn_16_1",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
    *(f"vgg{d}" for d in (8, 11, 13, 16, 19)),
    "mobilenetv2",
    "shufflenetv2",
}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_expected_models_are_registered() -> None:
    assert set(MODELS.names()) >= EXPECTED_NAMES


# Text models take token ids of shape (max_len,); tests/test_text.py and tests/test_store_sequences.py cover them.
# Hugging Face models need a folder or a config: tests/test_hf_models.py covers them.
TOKEN_MODELS = {"minilm_classifier", "text_bag", "text_bilstm", "tiny_bert", "tiny_gpt", "hf", "sentence_transformers"}
IMAGE_MODELS = [n for n in MODELS.names() if n not in TOKEN_MODELS]


@pytest.mark.parametrize("name", IMAGE_MODELS)
@pytest.mark.parametrize(("shape", "classes"), [((3, 32, 32), 100), ((1, 28, 28), 10)])
def test_forward_gives_batch_by_classes(name: str, shape: tuple[int, ...], classes: int) -> None:
    model = build_model(name, classes, shape).eval()
    with torch.inference_mode():
        logits = model(torch.randn(2, *shape))
    assert logits.shape == (2, classes)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(("name", "millions"), sorted(PUBLISHED_M.items()))
def test_parameter_count_matches_published(name: str, millions: float) -> None:
    count = count_parameters(build_model(name, 100, (3, 32, 32)))
    assert count == pytest.approx(millions * 1e6, rel=0.03)


def test_default_cnn_is_a_fashion_mnist_teacher() -> None:
    assert 300_000 <= count_parameters(build_model("cnn", 10, (1, 28, 28))) <= 500_000


def test_cnn_can_be_a_tiny_student() -> None:
    tiny = build_model("cnn", 10, (1, 28, 28), widths=(8, 16), double=False)
    assert 1_000 <= count_parameters(tiny) <= 5_000


def test_mlp_params_shape_the_network() -> None:
    model = build_model("mlp", 10, (1, 28, 28), hidden=(64, 32), dropout=0.1)
    assert count_parameters(model) == 784 * 64 + 64 + 64 * 32 + 32 + 32 * 10 + 10


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as info:
        build_model("resnet9000", 10, (3, 32, 32))
    message = str(info.value)
    assert "resnet9000" in message
    assert "resnet20" in message and "wrn_40_2" in message


def test_unknown_param_names_model_key_and_valid_params() -> None:
    with pytest.raises(ConfigError) as info:
        build_model("cnn", 10, (1, 28, 28), widht=(8, 16))
    message = str(info.value)
    assert "'cnn'" in message and "'widht'" in message
    assert "widths=(32, 64, 160)" in message and "double=True" in message


def test_param_free_model_rejects_any_param() -> None:
    with pytest.raises(ConfigError, match=r"resnet20.*depth"):
        build_model("resnet20", 10, (3, 32, 32), depth=32)


def test_model_params_lists_defaults() -> None:
    assert model_params("mlp") == {"hidden": (128,), "dropout": 0.0}
    assert model_params("resnet20") == {}


def test_conv_model_rejects_non_image_shape() -> None:
    with pytest.raises(ConfigError, match="vgg8"):
        build_model("vgg8", 10, (784,))
