"""MiniLMv2 Q/K/V relations, MiniLM attention KL, hidden-state maps, and attention capture on transformers models."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from torch import Tensor

from kdforge import Distiller
from kdforge.adapters import adapter_for
from kdforge.errors import ConfigError, ShapeMismatchError
from kdforge.models import build_model
from kdforge.models.hf.attention import find_attention
from kdforge.objectives import objective
from kdforge.objectives.base import PairContext
from kdforge.signals import FeatureSignal, Needs, StudentOutput, TeacherOutput

SQ, SK, SV = "s.q", "s.k", "s.v"
TQ, TK, TV = "t.q", "t.k", "t.v"
QKV = [{"student": {"q": SQ, "k": SK, "v": SV}, "teacher": {"q": TQ, "k": TK, "v": TV}}]
# Pinned once from the seeded inputs below; the loop tests check the formulas independently.
GOLDEN_MINILM = 2.3089132
GOLDEN_ATTENTION = 1.6857506
GOLDEN_HIDDEN_MSE = 2.3624842
GOLDEN_HIDDEN_COSINE = 1.1603816
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 1, 1, 1]])


def pair_of(student: dict[str, Tensor], teacher: dict[str, Tensor], mask: Tensor | None) -> PairContext:
    """A pair as the Distiller builds it for a token batch: recorded features and the batch's attention mask."""
    return PairContext(
        StudentOutput(None, student), TeacherOutput(features=FeatureSignal(teacher)), attention_mask=mask
    )


def qkv_features(seed: int, batch: int, tokens: int, s_widths: tuple, t_widths: tuple, scale: float = 1.0):
    """Seeded student and teacher Q/K/V vectors (B, S, W) of the given widths."""
    g = torch.Generator().manual_seed(seed)
    student = {
        p: torch.randn(batch, tokens, w, generator=g) * scale for p, w in zip((SQ, SK, SV), s_widths, strict=True)
    }
    teacher = {
        p: torch.randn(batch, tokens, w, generator=g) * scale for p, w in zip((TQ, TK, TV), t_widths, strict=True)
    }
    return student, teacher


def minilm_loops(student: dict, teacher: dict, mask: np.ndarray, heads: int, relations: dict) -> float:
    """MiniLMv2 eqs. 5-9 with explicit loops: per sequence, relation head and real query token, a softmax over the
    real keys only, KL(teacher ‖ student) summed, divided by heads × real tokens, averaged over sequences."""
    total = 0.0
    for name, alpha in relations.items():
        per_sequence = []
        for b in range(mask.shape[0]):
            real = [i for i in range(mask.shape[1]) if mask[b, i]]
            if not real:
                continue
            acc = 0.0
            for a in range(heads):
                rows = {}
                for side, vec, roles in (("s", student, (SQ, SK, SV)), ("t", teacher, (TQ, TK, TV))):
                    x = vec[roles["qkv".index(name[0])]][b].double().numpy()
                    y = vec[roles["qkv".index(name[1])]][b].double().numpy()
                    d = x.shape[1] // heads
                    xa, ya = x[:, a * d : (a + 1) * d], y[:, a * d : (a + 1) * d]
                    rows[side] = {}
                    for i in real:
                        scores = np.array([xa[i] @ ya[j] / math.sqrt(d) for j in real])
                        e = np.exp(scores - scores.max())
                        rows[side][i] = e / e.sum()
                for i in real:
                    p, q = rows["t"][i], rows["s"][i]
                    acc += float(np.sum(p * np.log(p / q)))
            per_sequence.append(acc / (heads * len(real)))
        total += alpha * float(np.mean(per_sequence))
    return total


# -- minilm_relations: the math --------------------------------------------------------------------------------------


def test_minilm_relations_golden_value() -> None:
    student, teacher = qkv_features(0, 3, 5, (8, 8, 8), (12, 12, 12), scale=2.0)
    loss = objective("minilm_relations", qkv=QKV, relation_heads=2).compute(pair_of(student, teacher, MASK))
    assert float(loss) == pytest.approx(GOLDEN_MINILM, rel=1e-4)


def test_minilm_relations_matches_per_head_loops_in_numpy() -> None:
    # Teacher 12 wide, student 8 wide, re-split into 4 relation heads of 3 and 2; left and right padding.
    student, teacher = qkv_features(1, 3, 5, (8, 8, 8), (12, 12, 12), scale=1.5)
    for relations in (["qq", "kk", "vv"], {"qq": 0.5, "vk": 2.0}):
        got = objective("minilm_relations", qkv=QKV, relation_heads=4, relations=relations)
        weights = dict(relations) if isinstance(relations, dict) else dict.fromkeys(relations, 1.0)
        want = minilm_loops(student, teacher, MASK.numpy(), 4, weights)
        value = got.compute(pair_of(student, teacher, MASK)).double()
        torch.testing.assert_close(value, torch.tensor(want, dtype=torch.float64), rtol=1e-5, atol=1e-7)


def test_minilm_relations_parity_with_an_independent_implementation() -> None:
    # benchmarks/parity/transformer_relations.py: Bloomberg's MiniLMv2 (no MiniLMv2 in torchdistill or mdistiller).
    data = json.loads((Path(__file__).parent / "data/parity/minilm_relations.json").read_text())
    x = {k: torch.tensor(v) for k, v in data["inputs"].items()}
    student = {SQ: x["student_q"], SK: x["student_k"], SV: x["student_v"]}
    teacher = {TQ: x["teacher_q"], TK: x["teacher_k"], TV: x["teacher_v"]}
    term = objective("minilm_relations", qkv=QKV, **data["params"])
    assert float(term.compute(pair_of(student, teacher, x["attention_mask"]))) == pytest.approx(data["value"], rel=1e-4)


def test_minilm_padded_positions_do_not_change_the_loss() -> None:
    student, teacher = qkv_features(2, 3, 5, (8, 8, 8), (12, 12, 12))
    term = objective("minilm_relations", qkv=QKV, relation_heads=2)
    before = term.compute(pair_of(student, teacher, MASK))
    padded = ~MASK.bool()
    noisy = [
        {k: v.masked_fill(padded[..., None], 0.0) + padded[..., None] * 50 for k, v in side.items()}
        for side in (student, teacher)
    ]
    torch.testing.assert_close(term.compute(pair_of(*noisy, MASK)), before, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(term.compute(pair_of(*noisy, None)), before)  # without the mask padding would count


def test_minilm_gradients_reach_the_student_only() -> None:
    student, teacher = qkv_features(3, 2, 4, (8, 8, 8), (12, 12, 12))
    for x in (*student.values(), *teacher.values()):
        x.requires_grad_(True)
    objective("minilm_relations", qkv=QKV, relation_heads=2).compute(pair_of(student, teacher, MASK[:2, :4])).backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in student.values())
    assert all(x.grad is None for x in teacher.values())


def test_minilm_parameter_errors_name_the_key() -> None:
    student, teacher = qkv_features(4, 2, 4, (8, 8, 8), (12, 12, 12))
    pair = pair_of(student, teacher, None)
    with pytest.raises(ConfigError, match="relations: 'qz'"):
        objective("minilm_relations", qkv=QKV, relation_heads=2, relations=["qz"]).compute(pair)
    with pytest.raises(ShapeMismatchError, match="not divisible by relation_heads=5"):
        objective("minilm_relations", qkv=QKV, relation_heads=5).compute(pair)
    with pytest.raises(ConfigError, match="not resolved"):
        objective("minilm_relations", relation_heads=2).compute(pair)
    with pytest.raises(ConfigError, match=r"returned no feature 't.k'"):
        objective("minilm_relations", qkv=QKV, relation_heads=2).compute(pair_of(student, {TQ: teacher[TQ]}, None))
    with pytest.raises(ShapeMismatchError, match="differ in batch or tokens"):
        objective("minilm_relations", qkv=QKV, relation_heads=2).compute(
            pair_of(student, {k: v[:, :3] for k, v in teacher.items()}, None)
        )


# -- attention_kl: the math -----------------------------------------------------------------------------------------


def attention_weights(seed: int, batch: int, heads: int, tokens: int, mask: Tensor) -> Tensor:
    """Seeded attention distributions (B, H, S, S) with no probability on padded keys."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, heads, tokens, tokens, generator=g) * 2
    return scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf")).softmax(-1)


def attention_loops(student: np.ndarray, teacher: np.ndarray, mask: np.ndarray) -> float:
    """MiniLM eq. 6 per sequence: Σ_heads Σ_real rows KL over real keys / (heads × real tokens), mean over batch."""
    out = []
    for b in range(mask.shape[0]):
        real = [i for i in range(mask.shape[1]) if mask[b, i]]
        acc = sum(
            teacher[b, a, i, j] * math.log(teacher[b, a, i, j] / student[b, a, i, j])
            for a in range(student.shape[1])
            for i in real
            for j in real
        )
        out.append(acc / (student.shape[1] * len(real)))
    return float(np.mean(out))


def test_attention_kl_golden_value_and_loops() -> None:
    s, t = attention_weights(5, 3, 2, 5, MASK), attention_weights(6, 3, 2, 5, MASK)
    names = {"layers": ["s.attn:1 -> t.attn:1"]}
    loss = objective("attention_kl", **names).compute(pair_of({"s.attn:1": s}, {"t.attn:1": t}, MASK))
    assert float(loss) == pytest.approx(GOLDEN_ATTENTION, rel=1e-4)
    want = attention_loops(s.double().numpy(), t.double().numpy(), MASK.numpy())
    torch.testing.assert_close(loss.double(), torch.tensor(want, dtype=torch.float64), rtol=1e-5, atol=1e-7)
    s.requires_grad_(True)
    objective("attention_kl", **names).compute(pair_of({"s.attn:1": s}, {"t.attn:1": t}, MASK)).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and torch.isfinite(s.grad).all()


def test_attention_kl_heads_must_match_or_be_averaged() -> None:
    s, t = attention_weights(7, 3, 2, 5, MASK), attention_weights(8, 3, 4, 5, MASK)
    layers = ["s.attn:1 -> t.attn:1"]
    pair = pair_of({"s.attn:1": s}, {"t.attn:1": t}, MASK)
    with pytest.raises(ShapeMismatchError, match=r"has 2 heads and teacher 't.attn:1' 4"):
        objective("attention_kl", layers=layers).compute(pair)
    mean = objective("attention_kl", layers=layers, heads="mean").compute(pair)
    want = attention_loops(
        s.mean(1, keepdim=True).double().numpy(), t.mean(1, keepdim=True).double().numpy(), MASK.numpy()
    )
    assert float(mean) == pytest.approx(want, rel=1e-5)
    dropped = s * (torch.rand(s.shape, generator=torch.Generator().manual_seed(0)) > 0.1) / 0.9
    with pytest.raises(ConfigError, match="attention dropout"):
        objective("attention_kl", layers=layers, heads="mean").compute(
            pair_of({"s.attn:1": dropped}, {"t.attn:1": t}, MASK)
        )


# -- hidden_mse / hidden_cosine: the math ---------------------------------------------------------------------------


def hidden_features(seed: int, width: int = 6) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    return {"s.h": torch.randn(3, 5, width, generator=g)}, {"t.h": torch.randn(3, 5, width, generator=g)}


def test_hidden_losses_golden_values_and_loops() -> None:
    student, teacher = hidden_features(9)
    pair = pair_of(student, teacher, MASK)
    mse = objective("hidden_mse", layers=["s.h -> t.h"]).compute(pair)
    cos = objective("hidden_cosine", layers=["s.h -> t.h"]).compute(pair)
    assert float(mse) == pytest.approx(GOLDEN_HIDDEN_MSE, rel=1e-4)
    assert float(cos) == pytest.approx(GOLDEN_HIDDEN_COSINE, rel=1e-4)
    s, t, m = student["s.h"].double().numpy(), teacher["t.h"].double().numpy(), MASK.numpy()
    real = [(b, i) for b in range(3) for i in range(5) if m[b, i]]
    want_mse = sum(((s[b, i] - t[b, i]) ** 2).sum() for b, i in real) / (len(real) * s.shape[-1])
    want_cos = sum(1 - s[b, i] @ t[b, i] / np.linalg.norm(s[b, i]) / np.linalg.norm(t[b, i]) for b, i in real)
    assert float(mse) == pytest.approx(want_mse, rel=1e-5)
    assert float(cos) == pytest.approx(want_cos / len(real), rel=1e-5)
    noisy = {"s.h": student["s.h"] + (~MASK.bool())[..., None] * 9.0}
    assert float(objective("hidden_mse", layers=["s.h -> t.h"]).compute(pair_of(noisy, teacher, MASK))) == float(mse)


def test_hidden_shape_errors_name_the_layers() -> None:
    student, teacher = hidden_features(10)
    short = {"t.h": teacher["t.h"][:, :4]}
    with pytest.raises(ShapeMismatchError, match=r"student 's.h' .* vs teacher 't.h'"):
        objective("hidden_mse", layers=["s.h -> t.h"]).compute(pair_of(student, short, None))
    with pytest.raises(ConfigError, match=r"returned no feature 's.nope'"):
        objective("hidden_cosine", layers=["s.nope -> t.h"]).compute(pair_of(student, teacher, None))


# -- transformers models ----------------------------------------------------------------------------------------------


def bert(layers: int, heads: int, hidden: int, seed: int, init: float = 0.02) -> torch.nn.Module:
    """A tiny random BertForSequenceClassification (no download), dropout off."""
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=60,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=32,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=init,
    )
    return transformers.BertForSequenceClassification(config)


def llama(layers: int, heads: int, kv_heads: int, hidden: int, seed: int) -> torch.nn.Module:
    """A tiny random LlamaForCausalLM with grouped-query attention."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=60,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=32,
        initializer_range=0.2,
    )
    return transformers.LlamaForCausalLM(config)


def token_batch(seed: int = 0, batch: int = 4, tokens: int = 8) -> dict[str, Tensor]:
    """Right-padded token ids with their attention mask and labels."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, tokens, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    ids = torch.randint(1, 60, (batch, tokens), generator=g) * mask
    return {"input": ids, "attention_mask": mask, "label": torch.arange(batch) % 3}


def test_find_attention_in_bert_llama_distilbert_and_kdforge_models() -> None:
    b = find_attention(bert(2, 2, 16, 0), "bert.encoder.layer.1")
    assert (b.q, b.k, b.v, b.heads) == (
        "bert.encoder.layer.1.attention.self.query",
        "bert.encoder.layer.1.attention.self.key",
        "bert.encoder.layer.1.attention.self.value",
        2,
    )
    ll = find_attention(llama(2, 4, 2, 16, 0), "model.layers.0")
    assert (ll.module, ll.k, ll.heads) == ("model.layers.0.self_attn", "model.layers.0.self_attn.k_proj", 4)
    config = transformers.DistilBertConfig(vocab_size=60, dim=16, n_layers=2, n_heads=2, hidden_dim=32)
    d = find_attention(transformers.DistilBertModel(config), "transformer.layer.1")
    assert (d.q, d.heads) == ("transformer.layer.1.attention.q_lin", 2)
    gpt = find_attention(build_model("tiny_gpt", 60, (8,), width=16), "blocks.1")
    assert (gpt.fused, gpt.heads) == ("blocks.1.qkv", 2)
    with pytest.raises(ConfigError, match=r"student block 'bert.encoder.layer.1.output' \(BertOutput\) has no"):
        find_attention(bert(2, 2, 16, 0), "bert.encoder.layer.1.output", "student")


def test_attention_capture_equals_output_attentions_on_bert_and_llama() -> None:
    batch = token_batch()
    left = {**batch, "attention_mask": batch["attention_mask"].flip(1)}  # Llama's left padding
    for model, path, data in (
        (bert(2, 4, 32, 1), "bert.encoder.layer.1.attention.self:1", batch),
        (llama(2, 4, 2, 32, 2), "model.layers.1.self_attn:1", left),
    ):
        model.eval()
        reference = copy.deepcopy(model)
        reference.set_attn_implementation("eager")
        before = model.config._attn_implementation
        adapter = adapter_for(model)
        adapter.record((path,))
        with torch.no_grad():
            got = adapter(data, Needs(student_features=(path,))).features[path]
            want = reference(input_ids=data["input"], attention_mask=data["attention_mask"], output_attentions=True)
        adapter.release()
        assert before != "eager" and model.config._attn_implementation == before  # switched only while recorded
        torch.testing.assert_close(got, want.attentions[1], rtol=1e-5, atol=1e-6)


def test_minilm_resolves_blocks_and_rejects_a_block_without_qkv() -> None:
    teacher, student = bert(4, 4, 32, 3), bert(2, 2, 16, 4)
    d = Distiller(student, teacher, {"minilm_relations": 1.0})
    params = d.terms["minilm_relations"].objective.params
    assert params["relation_heads"] == 4  # the teacher's attention heads
    assert params["qkv"][0]["teacher"]["v"] == "bert.encoder.layer.3.attention.self.value"
    assert params["qkv"][0]["student"]["q"] == "bert.encoder.layer.1.attention.self.query"
    with pytest.raises(
        ConfigError, match=r"objectives.minilm_relations.layers: student block 'bert.encoder.layer.1.output'"
    ):
        Distiller(
            student, teacher, {"minilm_relations": {"layers": ["bert.encoder.layer.1.output -> bert.encoder.layer.3"]}}
        )
    with pytest.raises(ConfigError, match=r"teacher.*has no module 'bert.encoder.layer.9'"):
        Distiller(student, teacher, {"minilm_relations": {"layers": ["bert.encoder.layer.1 -> bert.encoder.layer.9"]}})


def test_distill_bert_to_a_smaller_bert_on_a_padded_batch() -> None:
    teacher, student = bert(4, 4, 48, 5, init=0.3), bert(2, 2, 32, 6)
    batch = token_batch(1)
    d = Distiller(student, teacher, {"minilm_relations": 1.0, "hidden_mse": 1.0, "attention_kl": {"heads": "mean"}})
    d.prepare(batch)
    opt = torch.optim.Adam(d.parameters_to_train(), lr=3e-3)
    values = []
    for _ in range(6):
        out = d(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        values.append({k: float(v) for k, v in out.terms.items()} | {"loss": float(out.loss.detach())})
    assert all(math.isfinite(v) for step in values for v in step.values())
    for key in ("loss", "minilm_relations", "hidden_mse", "attention_kl"):
        assert values[-1][key] < values[0][key], key
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in d.connectors["hidden_mse"].parameters())
    # Other tokens at padded positions change nothing the terms see.
    again = {**batch, "input": batch["input"] + (1 - batch["attention_mask"]) * 7}
    with torch.no_grad():
        d.eval()
        a, b = d(batch), d(again)
    for key in ("minilm_relations", "hidden_mse", "attention_kl"):
        torch.testing.assert_close(a.terms[key], b.terms[key], rtol=1e-5, atol=1e-6)


def test_grouped_query_llama_relations_match_the_loops() -> None:
    teacher, student = llama(2, 4, 2, 32, 7), llama(2, 2, 1, 16, 8)  # K/V 16 and 8 wide: fewer heads than Q
    batch = {"input": token_batch(2)["input"].clamp(min=1)}
    d = Distiller(student, teacher, {"minilm_relations": {"relation_heads": 2}})
    params = d.terms["minilm_relations"].objective.params
    assert params["qkv"][0]["teacher"]["k"] == "model.layers.1.self_attn.k_proj"
    d.prepare(batch)
    out = d(batch)
    s, t = out.outputs["student"].features, d.teachers["teacher"].signals(batch, d.teacher_needs["teacher"])
    s = {
        SQ: s["model.layers.1.self_attn.q_proj"],
        SK: s["model.layers.1.self_attn.k_proj"],
        SV: s["model.layers.1.self_attn.v_proj"],
    }
    tt = t.features.tensors
    t = {
        TQ: tt["model.layers.1.self_attn.q_proj"],
        TK: tt["model.layers.1.self_attn.k_proj"],
        TV: tt["model.layers.1.self_attn.v_proj"],
    }
    assert s[SK].shape[-1] == 8 and t[TK].shape[-1] == 16
    want = minilm_loops(
        {k: v.detach() for k, v in s.items()}, t, np.ones((4, 8), dtype=bool), 2, dict.fromkeys(("qq", "kk", "vv"), 1.0)
    )
    assert float(out.terms["minilm_relations"]) == pytest.approx(want, rel=1e-4)
    out.loss.backward()
    assert student.model.layers[1].self_attn.k_proj.weight.grad.abs().sum() > 0
    with pytest.raises(ShapeMismatchError, match="grouped-query"):
        Distiller(student, teacher, {"minilm_relations": {"relation_heads": 2, "relations": ["qk"]}})(batch)


def test_kdforge_tiny_bert_student_learns_from_a_bert_teacher() -> None:
    teacher = bert(2, 4, 32, 9, init=0.3)
    torch.manual_seed(10)
    student = build_model("tiny_bert", 3, (8,), layers=2, hidden=16, heads=2)
    batch = token_batch(3)
    d = Distiller(student, teacher, {"minilm_relations": 1.0, "hidden_cosine": 1.0})
    assert d.terms["minilm_relations"].objective.params["qkv"][0]["student"]["q"] == (
        "encoder.encoder.layer.1.attention.self.query"
    )
    d.prepare(batch)
    out = d(batch)
    assert math.isfinite(float(out.loss.detach()))
    out.loss.backward()
    assert student.encoder.encoder.layer[1].attention.self.value.weight.grad.abs().sum() > 0
