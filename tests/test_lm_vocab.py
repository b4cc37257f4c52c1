"""Vocabulary alignment between a teacher and a student LM: the four cases, the id map, position alignment, ULD."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from kdforge.errors import ConfigError
from kdforge.lm.cross_tokenizer import (
    Alignment,
    align_positions,
    align_text,
    cross_tokenizer_signal,
    map_rows,
    uld_rest_rows,
    uld_rows,
)
from kdforge.lm.vocab import (
    check_alignable,
    check_head,
    compare_vocabularies,
    fit_head,
    padding_rows,
    token_map,
)
from kdforge.objectives.sparse import sparse_forward_kl

transformers = pytest.importorskip("transformers", reason="the real tokenizers need transformers (`make setup`)")

SMOL_ROWS = 49_152
GEMMA_ROWS = 262_144
SENTENCE = (
    "It is a truth  universally acknowledged, that a single man in possession of a good fortune,\n"
    "must be in want of a wife. Café au lait — naïve façade; 3.14159 × 2 = 6.28318!"
)


@pytest.fixture(scope="module")
def smol() -> Any:
    """SmolLM2's tokenizer (byte-level BPE, 'Ġ' spaces, 49,152 tokens)."""
    from kdforge.llm.assets import smollm2_folder

    return transformers.AutoTokenizer.from_pretrained(str(smollm2_folder()))


@pytest.fixture(scope="module")
def gemma() -> Any:
    """Gemma-3-270M's tokenizer (SentencePiece-style '▁' spaces, byte fallback, 262,144 tokens), if converted."""
    from kdforge.llm.assets import GEMMA_FOLDER, llm_cache

    folder: Path = llm_cache() / GEMMA_FOLDER
    if not (folder / "tokenizer.json").is_file():
        # Never converted here: gemma_folder() would spend ~40 s building it from the GGUF inside a test.
        pytest.skip(
            f"Gemma-3-270M folder not converted at {folder} (build it once with kdforge.llm.assets.gemma_folder)"
        )
    return transformers.AutoTokenizer.from_pretrained(str(folder))


@pytest.fixture(scope="module")
def gemma_to_smol(gemma: Any, smol: Any) -> torch.Tensor:
    """Gemma id → SmolLM2 id (built once: reading Gemma's 262k tokens takes a second or two)."""
    return token_map(gemma, smol, GEMMA_ROWS)


def word_level(tokens: list[str]) -> Any:
    """A tiny whitespace-split WordLevel tokenizer over ``tokens`` (ids in order), built without any download."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=tokens[0]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


# --- the four cases -----------------------------------------------------------------------------------------------


def test_identical_tokenizer(smol: Any) -> None:
    report = compare_vocabularies(smol, smol, SMOL_ROWS, SMOL_ROWS)
    assert report.case == "identical"
    assert (report.teacher_tokens, report.student_tokens, report.shared) == (SMOL_ROWS, SMOL_ROWS, SMOL_ROWS)
    assert "identical" in report.describe()
    assert json.loads(json.dumps(report.to_json()))["case"] == "identical"
    assert torch.equal(token_map(smol, smol, SMOL_ROWS), torch.arange(SMOL_ROWS))
    check_alignable(report)  # no error


def test_identical_separately_loaded(smol: Any) -> None:
    from kdforge.llm.assets import smollm2_folder

    again = transformers.AutoTokenizer.from_pretrained(str(smollm2_folder()))
    assert compare_vocabularies(smol, again, SMOL_ROWS, SMOL_ROWS).case == "identical"


def test_padded_head_masks_exactly_the_extra_rows(smol: Any) -> None:
    report = compare_vocabularies(smol, smol, SMOL_ROWS, 49_216)
    assert report.case == "padded_head"
    assert "49,152–49,215" in report.describe()
    check_alignable(report)
    pad = padding_rows(49_216, report.student_tokens)
    assert pad.shape == (49_216,) and int(pad.sum()) == 64 and int(pad.nonzero()[0]) == SMOL_ROWS
    # The other way round: a padded teacher's extra rows map nowhere.
    m = token_map(smol, smol, 49_216)
    assert torch.equal(m[:SMOL_ROWS], torch.arange(SMOL_ROWS)) and bool((m[SMOL_ROWS:] == -1).all())
    # Logits widened to the student's head: real columns kept, padding columns −inf; and narrowed back.
    z = torch.randn(2, 3, SMOL_ROWS)
    wide = fit_head(z, 49_216, SMOL_ROWS)
    assert torch.equal(wide[..., :SMOL_ROWS], z) and bool(torch.isinf(wide[..., SMOL_ROWS:]).all())
    assert torch.equal(fit_head(wide, SMOL_ROWS, SMOL_ROWS), z)
    with pytest.raises(ConfigError, match="never truncated"):
        fit_head(z[..., :49_000], SMOL_ROWS, SMOL_ROWS)


def test_shared_gemma_teacher_smollm2_student(gemma: Any, smol: Any, gemma_to_smol: torch.Tensor) -> None:
    report = compare_vocabularies(gemma, smol, GEMMA_ROWS, SMOL_ROWS)
    assert report.case == "shared"
    assert 40_000 < report.shared < SMOL_ROWS
    assert 0.9 < report.student_shared_fraction < 1.0  # nearly all of SmolLM2's tokens exist in Gemma
    assert 0.1 < report.teacher_shared_fraction < 0.3  # Gemma's vocabulary is five times larger
    assert f"{report.student_shared_fraction:.1%}" in report.describe()
    check_alignable(report)

    m = gemma_to_smol
    assert m.shape == (GEMMA_ROWS,) and int(m.max()) < SMOL_ROWS
    g, s = gemma.get_vocab(), smol.get_vocab()
    assert int(m[g["▁the"]]) == s["Ġthe"]  # the two space markers are the same byte
    assert int(m[g["<0x0A>"]]) == s["Ċ"] == int(m[g["\n"]])  # byte fallback and the newline token: one byte
    assert int(m[g["<0xC3>"]]) == s["Ã"]  # a raw byte, spelled differently on each side
    assert int(m[gemma.eos_token_id]) == smol.eos_token_id  # end of sequence matched by role
    assert int(m[gemma.bos_token_id]) == -1  # no special token named <bos> in SmolLM2
    assert int(m[g["<table>"]]) == -1 or smol.decode([int(m[g["<table>"]])]) == "<table>"

    # Every mapped text token decodes to the same string on both sides (where a single token is valid UTF-8).
    rng = random.Random(0)
    mapped = [i for i in (m >= 0).nonzero().squeeze(-1).tolist() if i not in gemma.all_special_ids]
    checked = 0
    for i in rng.sample(mapped, 400):
        a, b = gemma.decode([i]), smol.decode([int(m[i])])
        if "\ufffd" not in a:
            assert a == b, (i, a, b)
            checked += 1
    assert checked > 300


def test_shared_smollm2_teacher_gemma_student(gemma: Any, smol: Any) -> None:
    report = compare_vocabularies(smol, gemma, SMOL_ROWS, GEMMA_ROWS)
    assert report.case == "shared" and report.overlap > 0.9
    assert 0.9 < report.teacher_shared_fraction < 1.0 and 0.1 < report.student_shared_fraction < 0.3
    m = token_map(smol, gemma, SMOL_ROWS)
    g, s = gemma.get_vocab(), smol.get_vocab()
    assert int(m[s["Ġthe"]]) == g["▁the"]
    # Of Gemma's two ids for "\n" the map picks the one its tokenizer emits.
    assert [int(m[s["Ċ"]])] == gemma("\n", add_special_tokens=False).input_ids
    assert int(m[s["<|endoftext|>"]]) == -1


def test_disjoint_vocabularies_are_refused(smol: Any) -> None:
    tiny = word_level(["[UNK]", *(f"qzxv{i}ψ" for i in range(11))])
    report = compare_vocabularies(tiny, smol, 12, SMOL_ROWS)
    assert report.case == "disjoint" and report.shared == 0
    assert "SeqKD" in report.describe()
    with pytest.raises(ConfigError) as err:
        check_alignable(report)
    msg = str(err.value)
    assert "\n" not in msg
    assert "12 tokens" in msg and "49152 tokens" in msg and "share 0 tokens" in msg
    assert "SeqKD" in msg and "kdforge annotate" in msg


def test_small_overlap_is_disjoint_below_min_shared() -> None:
    teacher = word_level(["a", "b", "c", "d"])
    student = word_level(["a", "x", "y", "z"])
    report = compare_vocabularies(teacher, student, 4, 4)
    assert report.case == "disjoint" and report.shared == 1 and report.overlap == 0.25
    assert compare_vocabularies(teacher, student, 4, 4, min_shared=0.25).case == "shared"
    assert torch.equal(token_map(teacher, student, 4), torch.tensor([0, -1, -1, -1]))


def test_tokenizer_larger_than_its_head(smol: Any) -> None:
    with pytest.raises(ConfigError) as err:
        compare_vocabularies(smol, smol, SMOL_ROWS, 49_000)
    msg = str(err.value)
    assert "student tokenizer does not match its model" in msg
    assert "49152 tokens" in msg and "49000 rows" in msg and "id 49000" in msg
    with pytest.raises(ConfigError, match=r"teacher tokenizer .* 49152 tokens .* 48000 rows; id 48000"):
        check_head(smol, 48_000, "teacher")


# --- positions ----------------------------------------------------------------------------------------------------


def test_align_positions_by_hand() -> None:
    # Text "ab cd": teacher [<bos>, "ab", " cd", <eos>]; student ["a", "b", " c", "d"] with two byte pieces of "d".
    teacher = [(0, 0), (0, 2), (2, 5), (0, 0)]
    student = [(0, 1), (1, 2), (2, 4), (4, 5), (4, 5)]
    a = align_positions(teacher, student)
    # Student prefixes: "a" (inside "ab": teacher <bos>), "ab" (= teacher "ab"), "ab c" (teacher "ab"), the first
    # piece of "d" (not a prefix end), "ab cd" (= teacher " cd"; the trailing <eos> predicts past the text).
    assert a.teacher_index.tolist() == [0, 1, 1, -1, 2]
    assert a.aligned.tolist() == [False, True, False, False, True]
    assert [t.tolist() for t in a.pairs] == [[1, 2], [1, 4]]


def test_aligned_positions_have_equal_decoded_prefixes(gemma: Any, smol: Any) -> None:
    for teacher, student in ((gemma, smol), (smol, gemma)):
        text = align_text(SENTENCE, teacher, student)
        t_pos, s_pos = text.alignment.pairs
        assert len(s_pos) > 0.75 * len(text.student_ids)
        for i, j in zip(t_pos.tolist(), s_pos.tolist(), strict=True):
            left = teacher.decode(text.teacher_ids[: i + 1], skip_special_tokens=True)
            right = student.decode(text.student_ids[: j + 1], skip_special_tokens=True)
            assert left == right and SENTENCE.startswith(left), (i, j, left, right)


# --- mapped distributions -----------------------------------------------------------------------------------------


def test_mapped_distribution_by_hand() -> None:
    # Teacher ids 1 and 3 both become student id 2; teacher id 2 has no student token.
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.25, 0.15]])
    tmap = torch.tensor([0, 2, -1, 2, 3])
    signal, dropped = map_rows(probs.log(), tmap, student_rows=4, k=4)
    assert dropped.item() == pytest.approx(0.3, abs=1e-6)
    dense = torch.zeros(4).scatter(0, signal.ids[0], signal.logprobs[0].exp())
    assert dense.tolist() == pytest.approx([0.1 / 0.7, 0.0, 0.45 / 0.7, 0.15 / 0.7], abs=1e-6)
    top2, _ = map_rows(probs.log(), tmap, student_rows=4, k=2)
    assert top2.ids[0].tolist() == [2, 3]
    assert top2.logprobs[0].exp().tolist() == pytest.approx([0.45 / 0.7, 0.15 / 0.7], abs=1e-6)
    assert top2.tail.exp().item() == pytest.approx(0.1 / 0.7, abs=1e-6)
    # All the mass on teacher-only tokens: the row is reported fully dropped.
    _, lost = map_rows(torch.tensor([[-math.inf, -math.inf, 0.0, -math.inf, -math.inf]]), tmap, 4, 2)
    assert lost.item() == 1.0


def test_cross_signal_by_hand_left_and_right_padding() -> None:
    tmap = torch.tensor([0, 2, -1, 2, 3])
    logits = torch.randn(1, 3, 5)
    align = Alignment(teacher_index=torch.tensor([0, 1, 2]), aligned=torch.tensor([True, False, True]))
    right = cross_tokenizer_signal(logits, [align], tmap, 4, student_length=4, k=2)
    assert right.mask.tolist() == [[True, False, True, False]]
    assert right.rest.tolist() == [[False, True, False, False]]
    expected, lost = map_rows(torch.log_softmax(logits[0, [0, 2]], -1), tmap, 4, 2)
    assert torch.allclose(right.signal.logprobs[0, [0, 2]], expected.logprobs)
    assert right.mean_dropped == pytest.approx(float(lost.mean()), abs=1e-6)
    # The same rows left-padded by one on each side give the same targets, one column later.
    left = cross_tokenizer_signal(
        torch.cat([torch.zeros(1, 1, 5), logits], 1),
        [align],
        tmap,
        4,
        student_length=5,
        k=2,
        teacher_mask=torch.tensor([[False, True, True, True]]),
        student_mask=torch.tensor([[False, True, True, True, True]]),
    )
    assert left.mask.tolist() == [[False, True, False, True, False]]
    assert torch.allclose(left.signal.logprobs[0, 1:], right.signal.logprobs[0])
    assert left.teacher_index[0].tolist() == [-1, 1, 2, 3, -1]


def test_cross_signal_on_real_tokenizers_sums_to_one(gemma: Any, smol: Any, gemma_to_smol: torch.Tensor) -> None:
    torch.manual_seed(0)
    texts = [SENTENCE, "Anne Elliot walked\tto Uppercross."]
    aligned = [align_text(t, gemma, smol) for t in texts]
    t_len = max(len(a.teacher_ids) for a in aligned)
    s_len = max(len(a.student_ids) for a in aligned)
    t_mask = torch.tensor([[i < len(a.teacher_ids) for i in range(t_len)] for a in aligned])
    logits = torch.randn(len(texts), t_len, GEMMA_ROWS) * 3
    cross = cross_tokenizer_signal(
        logits, [a.alignment for a in aligned], gemma_to_smol, SMOL_ROWS, s_len, k=32,
        teacher_mask=t_mask,
    )  # fmt: skip
    sig = cross.signal
    assert sig.ids.shape == (2, s_len, 32) and sig.vocab_size == SMOL_ROWS and int(sig.ids.max()) < SMOL_ROWS
    total = sig.logprobs.exp().sum(-1) + sig.tail.exp()
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)
    for b, a in enumerate(aligned):
        n = len(a.student_ids)
        assert cross.mask[b, :n].tolist() == a.alignment.aligned.tolist()
        assert not bool(cross.mask[b, n:].any())
    # Random logits spread mass over all 262k ids, so about 1 − 46k/262k of it falls on Gemma-only tokens.
    assert 0.7 < cross.mean_dropped < 0.9
    # The engine's sparse kernels consume the selected rows unchanged.
    student = torch.randn(2, s_len, SMOL_ROWS, requires_grad=True)
    kl = sparse_forward_kl(student[cross.mask], cross.signal.select(cross.mask))
    dense = torch.log_softmax(student[cross.mask], -1)
    p = cross.signal.select(cross.mask).to_dense_logprobs()
    assert torch.allclose(kl, (p.exp() * (p - dense)).sum(-1), atol=1e-3)
    uld = uld_rest_rows(student, logits, cross)
    assert uld.shape == (int(cross.rest.sum()),) and bool(torch.isfinite(uld).all())


# --- ULD ----------------------------------------------------------------------------------------------------------


def test_uld_golden_value() -> None:
    student = torch.tensor([[0.5, 0.3, 0.2]]).log()
    teacher = torch.tensor([[0.1, 0.6, 0.2, 0.1]]).log()
    # Sorted: student [0.5, 0.3, 0.2, 0 (pad)], teacher [0.6, 0.2, 0.1, 0.1]: 0.1 + 0.1 + 0.1 + 0.1.
    assert uld_rows(student, teacher).item() == pytest.approx(0.4, abs=1e-6)


def _uld_reference(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> list[float]:
    """ULD as the paper's code writes it: softmax, sort descending, zero-pad the shorter side, L1 per row."""
    out = []
    for s_row, t_row in zip(student_logits.double(), teacher_logits.double(), strict=True):
        p = sorted((math.exp(v) for v in (s_row - torch.logsumexp(s_row, 0)).tolist()), reverse=True)
        q = sorted((math.exp(v) for v in (t_row - torch.logsumexp(t_row, 0)).tolist()), reverse=True)
        width = max(len(p), len(q))
        p, q = p + [0.0] * (width - len(p)), q + [0.0] * (width - len(q))
        out.append(sum(abs(a - b) for a, b in zip(p, q, strict=True)))
    return out


@pytest.mark.parametrize(("v_s", "v_t"), [(7, 11), (11, 7), (9, 9)])
def test_uld_matches_the_reference_and_is_differentiable(v_s: int, v_t: int) -> None:
    torch.manual_seed(v_s * 100 + v_t)
    student = (torch.randn(5, v_s) * 2).requires_grad_()
    teacher = torch.randn(5, v_t) * 2
    loss = uld_rows(student, teacher)
    assert loss.tolist() == pytest.approx(_uld_reference(student.detach(), teacher), abs=1e-5)
    loss.sum().backward()
    assert student.grad is not None and bool(torch.isfinite(student.grad).all()) and student.grad.abs().sum() > 0
    # Blind to token identity: any permutation of the teacher's vocabulary gives the same loss.
    shuffled = teacher[:, torch.randperm(v_t)]
    assert torch.allclose(uld_rows(student.detach(), shuffled), loss.detach(), atol=1e-6)


# --- end to end with small models on the real tokenizers -----------------------------------------------------------


class TinyLM(torch.nn.Module):
    """A small causal LM over ``rows`` head rows: each position sees the mean embedding of its prefix."""

    def __init__(self, rows: int, width: int = 8) -> None:
        super().__init__()
        torch.manual_seed(rows)
        self.embed = torch.nn.Embedding(rows, width)
        self.head = torch.nn.Linear(width, rows)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids).cumsum(1) / torch.arange(1, ids.shape[1] + 1).view(1, -1, 1)
        return self.head(torch.tanh(h))


def _right_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    return ids, torch.tensor([[i < len(r) for i in range(width)] for r in rows])


def test_gemma_teacher_padded_smollm2_student_end_to_end(gemma: Any, smol: Any, gemma_to_smol: torch.Tensor) -> None:
    student_rows = 49_216  # SmolLM2's 49,152 tokens in a head padded to a multiple of 64
    report = compare_vocabularies(gemma, smol, GEMMA_ROWS, student_rows)
    assert report.case == "shared" and report.student_rows == student_rows
    check_alignable(report)
    teacher, student = TinyLM(GEMMA_ROWS), TinyLM(student_rows)
    texts = [SENTENCE, "Captain Wentworth had no fortune."]
    pairs = [align_text(t, gemma, smol) for t in texts]
    t_ids, t_mask = _right_padded([p.teacher_ids for p in pairs])
    s_ids, s_mask = _right_padded([p.student_ids for p in pairs])
    with torch.no_grad():
        t_logits = teacher(t_ids)
    cross = cross_tokenizer_signal(
        t_logits, [p.alignment for p in pairs], gemma_to_smol, student_rows, s_ids.shape[1], k=16,
        teacher_mask=t_mask, student_mask=s_mask,
    )  # fmt: skip
    assert cross.signal.vocab_size == student_rows and int(cross.signal.ids.max()) < SMOL_ROWS
    assert bool((cross.mask <= s_mask).all()) and 0 < cross.mean_dropped < 1

    opt = torch.optim.Adam(student.parameters(), lr=0.05)
    losses = []
    for _ in range(2):
        logits = student(s_ids)
        kl = sparse_forward_kl(logits[cross.mask], cross.signal.select(cross.mask)).mean()
        loss = kl + uld_rest_rows(logits, t_logits, cross).mean()
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)
        opt.step()
        losses.append(loss.item())
    assert losses[1] < losses[0], losses  # the gradient of both terms moves the student


def test_ids_that_do_not_survive_a_round_trip_are_aligned_from_prefix_decodes(smol: Any) -> None:
    from kdforge.lm.cross_tokenizer import align_ids, decoded_offsets

    newline = smol("\n", add_special_tokens=False).input_ids
    ids = smol(" all.", add_special_tokens=False).input_ids + newline + newline  # a block cut inside "\n\n"
    assert smol(smol.decode(ids), add_special_tokens=False).input_ids != ids  # the re-encode merges the newlines
    text, offsets = decoded_offsets(smol, ids)
    assert text == " all.\n\n" and [text[a:b] for a, b in offsets] == [smol.decode([i]) for i in ids]
    pair = align_ids(ids, smol, smol)  # the same tokenizer as teacher: "\n\n" is one teacher token
    assert pair is not None and pair.student_ids == ids
    assert pair.alignment.aligned.tolist() == [True, True, False, True]  # the first "\n" ends inside "\n\n"
    # A partial UTF-8 character is zero width until the token that completes it.
    accented = smol("café", add_special_tokens=False).input_ids
    text, offsets = decoded_offsets(smol, accented)
    assert text == "café" and offsets[-1][1] == 4
