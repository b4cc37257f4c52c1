"""Sequence stores: one packed record per real token, masks stored and served, a causal LM teacher (tiny_gpt)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import kdforge
from kdforge.data import load_dataset, make_loader
from kdforge.data.base import subset
from kdforge.data.text import next_token_labels
from kdforge.errors import ShapeMismatchError
from kdforge.models import build_model
from kdforge.signals import DenseSignal, Needs, SparseSignal
from kdforge.store import StoreReader, build_store, finalize_store, plan_store
from kdforge.strategies.cache import inspect
from kdforge.teachers import Cached, Live

NEEDS = Needs(teacher_logits=True)


def dense_store(root: Path, live: Live, data: object, bundle: object, shard_size: int) -> Path:
    """An fp32 store of ``live`` over ``data``: exact storage, so cached and live signals agree to float rounding."""
    plan = plan_store(live.fingerprint, data, bundle.fingerprint, "fp32", {}, shard_size, bundle.num_classes)
    build_store(root, live, data, plan, batch_size=4)
    finalize_store(root, plan)
    return root


@pytest.fixture(scope="module")
def lm() -> tuple[object, Live]:
    bundle = load_dataset("reuters_r8_lm", max_len=96, train_limit=40)
    torch.manual_seed(0)
    return bundle, Live(build_model("tiny_gpt", bundle.num_classes, bundle.input_shape, width=32, layers=1))


def test_lm_dataset_has_masks_and_next_token_labels(lm):
    bundle, _ = lm
    batch = bundle.train.__getitems__(list(range(40)))
    ids, mask, labels = batch["input"], batch["attention_mask"], batch["label"]
    assert ids.shape == mask.shape == labels.shape == (40, 96) and bundle.num_classes == 30522
    assert torch.equal(mask, ids != 0) and bool((~mask).any()), "some documents are shorter than max_len"
    assert torch.equal(labels[:, :-1][mask[:, 1:]], ids[:, 1:][mask[:, 1:]])
    assert bool((labels[:, -1] == -100).all()) and bool((labels[~mask] == -100).all())
    ids = torch.tensor([[5, 0, 7, 0]])  # id 0 is a real token here; only the mask says where padding starts
    assert next_token_labels(ids, torch.tensor([[1, 1, 1, 0]])).tolist() == [[0, 7, -100, -100]]


def test_tiny_gpt_is_causal(lm):
    bundle, live = lm
    ids = bundle.train.__getitems__([0])["input"]
    changed = ids.clone()
    changed[0, 10:] = 1000
    with torch.no_grad():
        a, b = live.model(ids), live.model(changed)
    assert a.shape == (1, 96, 30522)
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-5) and not torch.allclose(a[:, 10:], b[:, 10:])


@pytest.mark.parametrize("resident_bytes", [1 << 30, 0], ids=["joined", "lru"])
def test_topk_sequence_store_packs_real_tokens_and_serves_masks(lm, tmp_path: Path, resident_bytes: int):
    bundle, live = lm
    plan = plan_store(live.fingerprint, bundle.train, bundle.fingerprint, "topk", {"k": 8}, 16, bundle.num_classes)
    build_store(tmp_path / "s", live, bundle.train, plan, batch_size=8)
    manifest = finalize_store(tmp_path / "s", plan)
    real = int(bundle.train.fields["attention_mask"].sum())
    assert manifest.fidelity["positions"] == real
    shard = StoreReader(tmp_path / "s").shard(0)
    assert shard["mask"].shape == (16, 96) and shard["ids"].shape == (int(shard["mask"].sum()), 8)
    info = inspect(tmp_path / "s")
    assert info["bytes_per_position"] == pytest.approx(info["size_bytes"] / real)

    reader = StoreReader(tmp_path / "s", resident_bytes=resident_bytes)
    for batch in make_loader(bundle.train, 12, shuffle=True, seed=0):
        looked_up = reader.lookup(batch["index"])
        signal, mask = looked_up.logits, looked_up.mask
        assert torch.equal(mask, batch["attention_mask"])
        live_out = live.signals(batch, NEEDS)
        assert torch.equal(live_out.mask, mask)
        ref = SparseSignal.from_logits(live_out.logits.logits, 8)
        assert isinstance(signal, SparseSignal) and signal.ids.shape == (len(batch["index"]), 96, 8)
        # Stored from batches of 8, live at 12: logits differ in the last bits, so near-tied ranks may swap. The
        # stored ids must still pick the live top-8 values (fp16 log-probs: 2e-3), not match position by position.
        full = torch.log_softmax(live_out.logits.logits.float(), dim=-1)
        picked = full.gather(-1, signal.ids.long())
        assert torch.allclose(picked[mask], ref.logprobs[mask], atol=1e-4, rtol=1e-5)
        assert torch.allclose(signal.logprobs[mask], ref.logprobs[mask], atol=2e-3, rtol=1e-3)
        assert bool(torch.isfinite(signal.to_dense_logprobs()).all()), "padding decodes to a valid distribution"


def test_dense_sequence_store_round_trips_through_the_cached_teacher(lm, tmp_path: Path):
    bundle, live = lm
    small = subset(bundle.train, list(range(6)))
    cached = Cached(dense_store(tmp_path / "d", live, small, bundle, shard_size=4))
    batch = small.__getitems__([5, 0, 3])
    out, ref = cached.signals(batch, NEEDS), live.signals(batch, NEEDS)
    assert isinstance(out.logits, DenseSignal) and torch.equal(out.mask, ref.mask)
    # fp32 storage is exact, but the build ran batches of 4 and this is a batch of 3: kernels round differently.
    torch.testing.assert_close(out.logits.logits[out.mask], ref.logits.logits[ref.mask], rtol=1e-5, atol=1e-5)


def test_mask_of_the_wrong_shape_is_refused(lm, tmp_path: Path):
    bundle, live = lm
    broken = bundle.train.__class__(
        bundle.train.inputs, bundle.train.labels, indices=bundle.train.indices,
        fields={"attention_mask": bundle.train.fields["attention_mask"][:, :5]},
    )  # fmt: skip
    plan = plan_store(live.fingerprint, broken, bundle.fingerprint, "topk", {"k": 4}, 16, bundle.num_classes)
    with pytest.raises(ShapeMismatchError, match=r"attention_mask has shape \(8, 5\)"):
        build_store(tmp_path / "x", live, broken, plan, batch_size=8)
    assert not list((tmp_path / "x" / "shards").glob("*.safetensors")), "nothing half-written is left"


def test_objectives_see_real_tokens_only_so_live_and_cached_agree(lm, tmp_path: Path):
    from kdforge.engine.distiller import Distiller

    bundle, live = lm
    small = subset(bundle.train, list(range(6)))
    store = dense_store(tmp_path / "d", live, small, bundle, shard_size=6)
    torch.manual_seed(1)
    student = build_model("tiny_gpt", bundle.num_classes, bundle.input_shape, width=16, layers=1)
    batch = small.__getitems__([0, 1, 2, 3, 4, 5])
    assert bool((~batch["attention_mask"]).any())
    objectives = {"kd": {"T": 2.0, "alpha": 0.5}}
    via_live = Distiller(student, live, objectives)(batch).loss
    via_store = Distiller(student, Cached(store), objectives)(batch).loss
    # The live teacher sends hidden states + head (logits made per chunk), the store its full logits: the same
    # values up to the rounding of two matrix-product orders.
    assert via_store.item() == pytest.approx(via_live.item(), rel=1e-5)
    # The same value computed by hand over the tokens that have a next-token target (real, not the last one).
    mask = batch["attention_mask"] & (batch["label"] != -100)
    with torch.no_grad():
        t = live.model(batch["input"])[mask]
    s = student(batch["input"])[mask]
    ref = kdforge.objective("kd", T=2.0, alpha=0.5)(s, t, batch["label"][mask])
    assert via_live.item() == pytest.approx(ref.item(), rel=1e-5)


def test_run_refuses_sequence_data_with_a_clear_error(tmp_path: Path):
    from conftest import run_cli

    res = run_cli(
        "run", "digits-cache", "data.name=reuters_r8_lm", "data.params={max_len: 16, train_limit: 32}",
        "teacher.kind=live", "student.name=tiny_gpt", "student.params={}", f"output_dir={tmp_path}",
    )  # fmt: skip
    assert res.returncode == 2 and "holds sequences" in res.stderr, res.stderr[-2000:]
