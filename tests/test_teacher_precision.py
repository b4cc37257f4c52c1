"""Teacher placement: bf16/fp16/int8 teachers stay close to float32, int8 keeps the LM head float, a teacher with a
device of its own is not moved by the trainer, and bad dtype/device values are refused naming the key."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdforge.errors import ConfigError
from kdforge.recipe import NetworkTeacherConfig
from kdforge.signals import HeadSignal, Needs
from kdforge.teachers.live import Live
from kdforge.teachers.precision import quantize_int8, teacher_device, with_precision
from lm_models import tiny_llama

pytest.importorskip("transformers")

V = 300


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, V, (3, 12), generator=g)
    return {"input": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool)}


def _log_probs(teacher: Live, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    out = teacher.signals(batch, Needs(teacher_logits=True))
    return torch.log_softmax(out.logits.logits.float(), -1)


@pytest.mark.parametrize(("fmt", "max_kl"), [("bfloat16", 2e-2), ("float16", 1e-3), ("int8", 2e-2)])
def test_low_precision_teacher_stays_close_to_float32(fmt: str, max_kl: float) -> None:
    batch = _batch()
    ref = _log_probs(Live(tiny_llama(0, V, hidden=64)), batch)
    model, dtype = with_precision(tiny_llama(0, V, hidden=64), fmt)
    got = _log_probs(Live(model, dtype=dtype), batch)
    kl = (ref.exp() * (ref - got)).sum(-1).mean().item()  # KL(float32 ‖ low precision) per token
    assert 0.0 <= kl < max_kl, kl
    assert (ref.argmax(-1) == got.argmax(-1)).float().mean() > 0.9


def test_int8_quantizes_the_layers_but_not_the_output_head() -> None:
    model = quantize_int8(tiny_llama(1, V, hidden=32))
    quantized = [n for n, m in model.named_modules() if "quantized" in type(m).__module__ and hasattr(m, "weight")]
    plain = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    assert len(quantized) == 7  # q, k, v, o, gate, up, down of the one layer
    assert plain == ["lm_head"]
    head = model.get_output_embeddings()
    assert isinstance(head, nn.Linear) and isinstance(head.weight, torch.Tensor)
    # The chunked loss reads the teacher's head weight: an int8 teacher still sends hidden states + a float head.
    out = Live(model).signals(_batch(1), Needs(teacher_logits=True, teacher_hidden=True))
    assert isinstance(out.logits, HeadSignal) and out.logits.weight.dtype == torch.float32


def test_a_teacher_with_its_own_device_is_not_moved() -> None:
    teacher = Live(tiny_llama(2, V), home=torch.device("cpu"))
    moved = []
    teacher.network.to = lambda *a, **k: moved.append(a)  # type: ignore[method-assign]
    teacher.to("meta")  # what the trainer does with every teacher: ignored, the teacher keeps its device
    assert not moved and teacher.device == torch.device("cpu")


@pytest.mark.parametrize(
    ("value", "message"),
    [("gpu:0", "is not a device name"), ("cuda:7", "CUDA device"), ("disk", "is not a device name")],
)
def test_bad_teacher_device_is_refused_naming_the_key(value: str, message: str) -> None:
    if value == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    with pytest.raises(ConfigError, match=rf"teacher\.device '{value}'.*{message}|{message}"):
        teacher_device(value)


def test_bad_teacher_dtype_is_refused_by_the_recipe() -> None:
    with pytest.raises(Exception, match="dtype"):
        NetworkTeacherConfig(kind="live", dtype="int4")
