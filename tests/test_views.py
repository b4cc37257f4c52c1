"""Augmented views: draws keyed by (seed, view, sample id), epochs tagged by the sampler, stores holding N views."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from kdforge.data import load_dataset, make_loader
from kdforge.data.base import ArrayDataset, EpochSampler, subset, with_augment, with_views
from kdforge.engine.trainer import get_accelerator
from kdforge.errors import ConfigError
from kdforge.models import build_model
from kdforge.signals import Needs
from kdforge.store import Manifest, StoreReader, build_store, finalize_store, plan_store
from kdforge.teachers import Cached, Live


def images(n: int = 40) -> ArrayDataset:
    torch.manual_seed(0)
    return ArrayDataset(torch.rand(n, 1, 8, 8) + 1, torch.arange(n) % 4, augment="flip_crop")


def test_a_view_depends_only_on_seed_view_and_sample_id():
    ds = images()
    forward = ds.__getitems__(list(range(40)))
    backward = ds.__getitems__(list(range(39, -1, -1)))
    assert torch.equal(forward["input"], backward["input"].flip(0)), "batch composition must not matter"
    assert torch.equal(forward["view"], torch.zeros(40, dtype=torch.int64))
    single = ds[7]
    assert torch.equal(single["input"], forward["input"][7]) and int(single["view"]) == 0
    second = ds.__getitems__([40 + p for p in range(40)])  # the sampler's tag for epoch 1
    assert torch.equal(second["view"], torch.ones(40, dtype=torch.int64))
    assert torch.equal(second["index"], forward["index"])
    changed = sum(not torch.equal(a, b) for a, b in zip(forward["input"], second["input"], strict=True))
    assert changed > 20, "another view draws other flips and crops"
    reseeded = with_augment(ds, "flip_crop", augment_seed=1).__getitems__(list(range(40)))
    assert not torch.equal(reseeded["input"], forward["input"])
    # The draw follows the sample id, not its position: a subset keeps each sample's view.
    sub = ArrayDataset(ds.inputs[10:20], None, augment="flip_crop", indices=ds.indices[10:20])
    assert torch.equal(sub.__getitems__(list(range(10)))["input"], forward["input"][10:20])
    # About half the samples are mirrored, and crops of every offset occur.
    draws = [decision(out, x) for out, x in zip(forward["input"], ds.inputs, strict=True)]
    assert 10 <= sum(flip for flip, _, _ in draws) <= 30
    assert {dy for _, dy, _ in draws} == set(range(5)) and {dx for _, _, dx in draws} == set(range(5))


def decision(out: torch.Tensor, x: torch.Tensor) -> tuple[int, int, int]:
    """The (flip, dy, dx) that turns ``x`` into ``out`` under a 2-pixel padded crop."""
    for flip in (0, 1):
        padded = torch.nn.functional.pad(x.flip(-1) if flip else x, (2, 2, 2, 2))
        for dy in range(5):
            for dx in range(5):
                if torch.equal(padded[:, dy : dy + 8, dx : dx + 8], out):
                    return flip, dy, dx
    raise AssertionError("not a flip-and-crop of the input")


def test_views_cycle_when_a_store_holds_a_fixed_number():
    ds = with_augment(images(), "flip_crop", views=2)
    epoch2 = ds.__getitems__([2 * 40 + p for p in range(40)])
    assert torch.equal(epoch2["view"], torch.zeros(40, dtype=torch.int64))
    assert torch.equal(epoch2["input"], ds.__getitems__(list(range(40)))["input"])
    with pytest.raises(ConfigError, match="views must be >= 1"):
        with_augment(ds, "flip_crop", views=0)


def test_loader_tags_each_epoch_through_accelerate():
    ds = images()
    loader = get_accelerator().prepare(make_loader(ds, 8, shuffle=True, seed=3))
    epochs = [list(loader) for _ in range(3)]
    for e, batches in enumerate(epochs):
        assert all(torch.equal(b["view"], torch.full_like(b["view"], e)) for b in batches)
        assert sorted(torch.cat([b["index"] for b in batches]).tolist()) == list(range(40))
    assert not torch.equal(epochs[0][0]["index"], epochs[1][0]["index"]), "each epoch reshuffles"
    plain = make_loader(ArrayDataset(ds.inputs, ds.labels), 8, shuffle=True, seed=3)
    assert "view" not in next(iter(plain))


def test_extra_views_are_drawn_apart_from_the_main_view_and_travel_with_the_data():
    plain = images()
    ds = with_views(plain, {"weak": "flip_crop", "strong": "strong"})
    batch = ds.__getitems__(list(range(40)))
    assert torch.equal(batch["input"], plain.__getitems__(list(range(40)))["input"]), "the main view is unchanged"
    assert batch["input@weak"].shape == batch["input@strong"].shape == batch["input"].shape
    # Same augmentation, other draws: the weak extra view is a flip-crop of the sample, not the main view's one.
    assert all(decision(w, x) for w, x in zip(batch["input@weak"], ds.inputs, strict=True))
    differ = sum(not torch.equal(a, b) for a, b in zip(batch["input@weak"], batch["input"], strict=True))
    assert differ > 20
    backward = ds.__getitems__(list(range(39, -1, -1)))
    assert torch.equal(backward["input@strong"].flip(0), batch["input@strong"]), "keyed on the sample, not the batch"
    epoch1 = ds.__getitems__([40 + p for p in range(40)])
    assert not torch.equal(epoch1["input@strong"], batch["input@strong"]), "each epoch draws another view"
    part = subset(ds, torch.arange(10, 20))
    assert part.extra_views == ds.extra_views
    assert torch.equal(part.__getitems__(list(range(10)))["input@strong"], batch["input@strong"][10:20])
    reseeded = with_augment(ds, "flip_crop", augment_seed=1)
    assert reseeded.extra_views == ds.extra_views
    assert not torch.equal(reseeded.__getitems__(list(range(40)))["input@strong"], batch["input@strong"])
    assert "input@strong" not in plain.__getitems__([0]) and "extra_views" in repr(ds)


def test_extra_views_tag_epochs_even_when_the_main_input_is_not_augmented():
    base = images()
    ds = ArrayDataset(base.inputs, base.labels, extra_views={"strong": "strong"})
    assert ds.augmented, "an extra view needs the epoch tag"
    loader = make_loader(ds, 8, shuffle=True, seed=3)
    assert isinstance(loader.sampler, EpochSampler) and loader.sampler.tag
    epochs = [list(loader) for _ in range(2)]
    first = {int(i): x for b in epochs[0] for i, x in zip(b["index"], b["input@strong"], strict=True)}
    second = {int(i): x for b in epochs[1] for i, x in zip(b["index"], b["input@strong"], strict=True)}
    assert sum(not torch.equal(first[i], second[i]) for i in first) > 30
    for b in epochs[0]:
        assert torch.equal(b["input"], base.inputs[b["index"]]), "the main input stays plain"


def _digits_teacher() -> tuple[object, Live]:
    bundle = load_dataset("digits", seed=0, augment="flip_crop")
    torch.manual_seed(0)
    return bundle, Live(build_model("mlp", 10, bundle.input_shape, hidden=(32,)))


def test_store_holds_each_view_and_serves_the_one_the_student_sees(tmp_path: Path):
    bundle, live = _digits_teacher()
    plan = plan_store(live.fingerprint, bundle.train, bundle.fingerprint, "fp32", {}, 200, 10, views=3, view_seed=7)
    assert plan.view == {
        "augment": "flip_crop",
        "views": 3,
        "seed": 7,
        "epoch_reads": "view = epoch % views; draws keyed by (seed, view, id)",
    }
    assert plan.num_rows == 3 * len(bundle.train) and plan.num_shards == math.ceil(3 * len(bundle.train) / 200)
    # The caller hands the build the views the store holds (as `kdforge cache` does), the student reads the same.
    student_data = with_augment(bundle.train, "flip_crop", augment_seed=7, views=3)
    with pytest.raises(ConfigError, match=r"augment_seed=0, views=None; the store expects augment_seed=7, views=3"):
        build_store(tmp_path / "s", live, bundle.train, plan, batch_size=64)
    build_store(tmp_path / "s", live, student_data, plan, batch_size=64)
    manifest = finalize_store(tmp_path / "s", plan)
    cached = Cached(tmp_path / "s")
    loader = make_loader(student_data, 128, shuffle=True, seed=0)
    needs = Needs(teacher_logits=True)
    for epoch in range(4):
        for batch in loader:
            assert torch.equal(batch["view"], torch.full_like(batch["view"], epoch % 3))
            stored = cached.signals(batch, needs).logits.logits
            assert torch.allclose(stored, live.signals(batch, needs).logits.logits, atol=1e-6)
    # The same views, written by two "ranks", give the same content: views are reproducible anywhere.
    for rank in (0, 1):
        build_store(tmp_path / "two", live, student_data, plan, batch_size=64, rank=rank, world_size=2)
    assert finalize_store(tmp_path / "two", plan).content_sha256 == manifest.content_sha256


def test_view_errors_name_what_is_wrong(tmp_path: Path):
    bundle, live = _digits_teacher()
    plain = load_dataset("digits", seed=0)
    with pytest.raises(ConfigError, match=r"store.views=2 needs an augmented data set"):
        plan_store(live.fingerprint, plain.train, plain.fingerprint, "fp16", {}, 200, 10, views=2)
    plan = plan_store(live.fingerprint, bundle.train, bundle.fingerprint, "fp16", {}, 400, 10, views=2)
    build_store(tmp_path / "s", live, bundle.train, plan)
    finalize_store(tmp_path / "s", plan)
    reader = StoreReader(tmp_path / "s")
    ids = bundle.train.indices[:4]
    with pytest.raises(ConfigError, match="no 'view'"):
        reader.rows(ids)
    with pytest.raises(ConfigError, match=r"holds views 0\.\.1, the batch asks for view 2"):
        reader.rows(ids, torch.full((4,), 2))
    assert reader.rows(ids, torch.ones(4, dtype=torch.int64))["logits"].shape == (4, 10)
    # An id past the store's span must not alias another sample's other view (keys are view * span + id).
    beyond = torch.tensor([int(bundle.train.indices.max()) + 1])
    with pytest.raises(ConfigError, match="no signal for some sample ids"):
        reader.rows(beyond, torch.zeros(1, dtype=torch.int64))
    assert Manifest.load(tmp_path / "s").num_views == 2


def test_cli_caches_views_and_trains_from_them(tmp_path: Path, teacher_cache: str):
    from conftest import run_cli

    store = tmp_path / "views"
    common = [f"store.path={store}", f"teacher.cache_dir={teacher_cache}", "data.params.augment=flip_crop"]
    built = run_cli("cache", "digits-cache", *common, "store.views=2", "store.view_seed=5", "--json")
    assert built.returncode == 0, built.stderr
    inspected = json.loads(run_cli("cache", "--inspect", str(store), "--json").stdout)
    assert inspected["views"] == 2 and inspected["view"]["seed"] == 5
    assert inspected["bytes_per_record"] == pytest.approx(inspected["bytes_per_sample"] / 2)
    run = run_cli("run", "digits-cache", *common, f"output_dir={tmp_path / 'runs'}", "train.epochs=3")
    assert run.returncode == 0, run.stderr
    # A store of views cannot teach un-augmented training, and the error says which key to change.
    wrong = run_cli("run", "digits-cache", f"store.path={store}", f"teacher.cache_dir={teacher_cache}")
    assert wrong.returncode == 2 and "data.params.augment" in wrong.stderr
