"""Causal-LM token losses: the chunked engine against plain autograd, sparse = dense at k = V, token normalization
under gradient accumulation, and the errors a causal-LM run must give before training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdforge.engine.distiller import Distiller
from kdforge.errors import ShapeMismatchError
from kdforge.objectives import objective
from kdforge.objectives.chunked import ChunkPlan, ChunkTarget, chunked_row_sums
from kdforge.signals import DenseSignal, HeadSignal, SparseSignal
from lm_models import tiny_llama as small_llama

transformers = pytest.importorskip("transformers")

V, H = 60, 12
TOKEN_OBJECTIVES = {
    "forward_kl": {"T": 2.0},
    "reverse_kl": {"T": 1.5},
    "jsd": {"beta": 0.3},
    "tv": {},
    "skew_kl": {"alpha": 0.2},
    "skew_reverse_kl": {"alpha": 0.2},
    "taid": {},
    "kd": {"T": 2.0, "alpha": 0.5},
    "ce": {},
}


def tiny_llama(seed: int, vocab: int = V, hidden: int = 16) -> torch.nn.Module:
    """A 1-layer Llama built from a config (no download)."""
    return small_llama(seed, vocab, hidden)


def lm_batch(
    seed: int, b: int = 3, s: int = 9, vocab: int = V, masked: tuple[int, ...] = ()
) -> dict[str, torch.Tensor]:
    """Token ids, an attention mask with right padding, next-token labels (-100 at padding, last token, prompts)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (b, s), generator=g)
    lengths = torch.tensor([s - (i % 3) for i in range(b)])
    mask = torch.arange(s)[None, :] < lengths[:, None]
    labels = torch.full((b, s), -100)
    labels[:, :-1] = torch.where(mask[:, 1:], ids[:, 1:], -100)
    for row, upto in enumerate(masked):
        labels[row, :upto] = -100  # a prompt the loss must not see
    return {"input": ids, "attention_mask": mask, "label": labels, "index": torch.arange(b)}


def _progress():
    from kdforge.signals import Progress

    return Progress(step=0, epoch=0.0, progress=0.3)


# -- the chunked engine ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
@pytest.mark.parametrize("kind", ["dense", "head"])
def test_chunked_sums_and_gradients_equal_plain_autograd(chunk: int, kind: str) -> None:
    torch.manual_seed(0)
    n = 50
    hidden = torch.randn(n, H, dtype=torch.float64, requires_grad=True)
    head = torch.nn.Linear(H, V, bias=True).double()
    t_hidden, t_weight = torch.randn(n, H, dtype=torch.float64), torch.randn(V, H, dtype=torch.float64)
    labels = torch.randint(0, V, (n,))
    signal = HeadSignal(t_hidden, t_weight) if kind == "head" else DenseSignal(t_hidden @ t_weight.t())
    fns = [objective("jsd", beta=0.4).row_fn(_progress()), objective("ce").row_fn(_progress())]
    sums = chunked_row_sums(hidden, head, ChunkPlan(fns, signal, labels, chunk, V))
    loss = 0.3 * sums[0] + 0.7 * sums[1]
    got = torch.autograd.grad(loss, [hidden, head.weight, head.bias])

    # Independent: full logits, the JSD written out from its definition, autograd.
    z = head(hidden).float()
    log_q = torch.log_softmax(z, -1)
    log_p = torch.log_softmax((t_hidden @ t_weight.t()).float(), -1)
    m = 0.4 * log_p.exp() + 0.6 * log_q.exp()
    jsd = 0.4 * (log_p.exp() * (log_p - m.log())).sum(-1) + 0.6 * (log_q.exp() * (log_q - m.log())).sum(-1)
    ref = 0.3 * jsd.sum() + 0.7 * F.cross_entropy(z, labels, reduction="sum")
    want = torch.autograd.grad(ref, [hidden, head.weight, head.bias])
    torch.testing.assert_close(loss.float(), ref.float(), rtol=1e-5, atol=1e-5)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-4, atol=1e-5)


def test_chunked_compares_only_the_shared_rows_of_a_padded_head() -> None:
    torch.manual_seed(1)
    n, shared = 20, V - 8
    hidden = torch.randn(n, H, requires_grad=True)
    head = torch.nn.Linear(H, V, bias=False)  # the student's head has 8 padding rows
    teacher = torch.randn(n, shared)
    fn = objective("forward_kl").row_fn(_progress())
    total = chunked_row_sums(hidden, head, ChunkPlan([fn], DenseSignal(teacher), None, 6, shared))[0]
    total.backward()
    log_q = torch.log_softmax(head(hidden)[:, :shared], -1)
    log_p = torch.log_softmax(teacher, -1)
    ref = (log_p.exp() * (log_p - log_q)).sum()
    torch.testing.assert_close(total, ref, rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(head.weight.grad[shared:]) == 0  # padding rows get no gradient


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "jsd", "tv", "skew_kl", "skew_reverse_kl", "taid", "kd"])
def test_sparse_rows_equal_dense_rows_at_k_equal_vocabulary(name: str) -> None:
    torch.manual_seed(2)
    s, t = torch.randn(11, V), torch.randn(11, V) * 2
    labels = torch.randint(0, V, (11,))
    fn = objective(name, **TOKEN_OBJECTIVES[name]).row_fn(_progress())
    dense = fn(s, ChunkTarget(DenseSignal(t), 0, 11, V), labels)
    sparse = fn(s, ChunkTarget(SparseSignal.from_logits(t, V), 0, 11, V), labels)
    torch.testing.assert_close(sparse, dense, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(TOKEN_OBJECTIVES))
def test_distiller_token_terms_equal_the_objective_on_full_logits(name: str) -> None:
    student, teacher = tiny_llama(0), tiny_llama(1)
    batch = lm_batch(0, masked=(4,))
    d = Distiller(student, teacher, {name: {"weight": 1.0, **TOKEN_OBJECTIVES[name]}}, chunk_size=5)
    assert d.by_rows[name] and d.student_needs["student"].student_hidden
    out = d(batch, progress=0.3)
    target = (batch["label"] != -100) & batch["attention_mask"]
    assert out.tokens == int(target.sum())
    s_logits = student(input_ids=batch["input"], attention_mask=batch["attention_mask"]).logits
    with torch.no_grad():
        t_logits = teacher(input_ids=batch["input"], attention_mask=batch["attention_mask"]).logits
    ref = objective(name, **TOKEN_OBJECTIVES[name])(
        s_logits[target], t_logits[target], batch["label"][target], progress=0.3
    )
    if name == "taid":  # the Distiller's TAID starts at t_start (its state), the plain call at the linear floor
        ref = objective(name)(s_logits[target], t_logits[target], None, progress=0.0)
    torch.testing.assert_close(out.loss, ref, rtol=1e-4, atol=1e-5)


def test_taid_state_moves_with_steps_and_round_trips() -> None:
    d = Distiller(tiny_llama(0), tiny_llama(1), {"taid": 1.0})
    state = d.term_states["taid"]
    first = state.value()
    for step in range(4):
        d(lm_batch(step), step=step)
        d.on_optimizer_step(progress=0.5)
    assert state.value() >= first + 0.05  # the linear floor at progress 0.5 alone lifts t from 0.4 to 0.7
    saved = d.term_state_dict()
    other = Distiller(tiny_llama(0), tiny_llama(1), {"taid": 1.0})
    other.load_term_state_dict(saved)
    assert other.term_states["taid"].value() == state.value()


# -- normalization ---------------------------------------------------------------------------------------------


def test_gradient_accumulation_divides_by_the_tokens_of_the_whole_global_batch(tmp_path) -> None:
    """Two micro-batches with 5 and 40 target tokens must give the gradient of the mean over all 45 tokens."""
    from kdforge.data.base import ArrayDataset, make_loader
    from kdforge.engine.trainer import Trainer
    from kdforge.recipe import TrainConfig

    a, b = lm_batch(3, b=2, s=12, masked=(10, 9)), lm_batch(4, b=2, s=12)
    fields = {k: torch.cat([a[k], b[k]]) for k in ("input", "attention_mask", "label")}
    ds = ArrayDataset(fields["input"], fields["label"], fields={"attention_mask": fields["attention_mask"]})
    loader = make_loader(ds, 2, shuffle=False, seed=0)
    student, teacher = tiny_llama(5), tiny_llama(6)
    before = {k: v.detach().clone() for k, v in student.named_parameters()}

    # Reference: one batch of all rows, the loss a mean over every target token.
    ref_student = tiny_llama(5)
    d = Distiller(ref_student, teacher, {"forward_kl": 0.5, "ce": 0.5})
    d(fields).loss.backward()
    want = {k: p.grad.clone() for k, p in ref_student.named_parameters() if p.grad is not None}

    config = TrainConfig(max_steps=1, grad_accum=2, optimizer={"name": "sgd", "lr": 1.0, "momentum": 0.0})
    Trainer(Distiller(student, teacher, {"forward_kl": 0.5, "ce": 0.5}), config).fit(loader)
    for name, grad in want.items():
        step = before[name] - student.state_dict()[name]
        torch.testing.assert_close(step, grad, rtol=2e-4, atol=1e-6)


def test_a_batch_with_every_token_masked_is_refused() -> None:
    batch = lm_batch(0)
    batch["label"][:] = -100
    d = Distiller(tiny_llama(0), tiny_llama(1), {"forward_kl": 1.0})
    with pytest.raises(ShapeMismatchError, match="every token of this batch is masked"):
        d(batch)


def test_a_teacher_with_another_vocabulary_is_refused_with_both_sizes() -> None:
    d = Distiller(tiny_llama(0), tiny_llama(1, vocab=V + 4), {"forward_kl": 1.0})
    with pytest.raises(ShapeMismatchError, match=f"{V + 4} rows but the student's head {V}"):
        d(lm_batch(0))


def test_lm_metrics_equal_an_independent_computation() -> None:
    from kdforge.data.base import ArrayDataset, make_loader
    from kdforge.evaluate.lm import lm_metrics

    batch = lm_batch(7, b=4)
    ds = ArrayDataset(batch["input"], batch["label"], fields={"attention_mask": batch["attention_mask"]})
    student, teacher = tiny_llama(0), tiny_llama(1)
    got = lm_metrics(student, make_loader(ds, 3, shuffle=False, seed=0), teacher=teacher, chunk_size=4)
    target = (batch["label"] != -100) & batch["attention_mask"]
    with torch.no_grad():
        s = student(input_ids=batch["input"], attention_mask=batch["attention_mask"]).logits[target]
        t = teacher(input_ids=batch["input"], attention_mask=batch["attention_mask"]).logits[target]
    y = batch["label"][target]
    nll = F.cross_entropy(s, y).item()
    assert got["tokens"] == int(target.sum())
    assert got["nll"] == pytest.approx(nll, rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(nll), rel=1e-5)
    assert got["accuracy"] == pytest.approx((s.argmax(-1) == y).float().mean().item())
    assert got["agreement"] == pytest.approx((s.argmax(-1) == t.argmax(-1)).float().mean().item())
    kl = F.kl_div(torch.log_softmax(s, -1), torch.log_softmax(t, -1), log_target=True, reduction="batchmean")
    assert got["kl"] == pytest.approx(kl.item(), rel=1e-4)
