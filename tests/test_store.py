"""Teacher-signal store: checksums, mismatch errors, codecs, cached = live teacher (kills: test_kill_anywhere)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import kdforge
from kdforge.data import load_dataset, make_loader
from kdforge.engine.distiller import Distiller
from kdforge.errors import ConfigError, IntegrityError, ShapeMismatchError
from kdforge.models import build_model
from kdforge.signals import DenseSignal, Needs, SparseSignal
from kdforge.store import Manifest, StoreReader, build_codec, build_store, finalize_store, plan_store
from kdforge.teachers import Cached, Live, Teacher

from store_worker import make


def test_shard_checksum_is_verified_on_read(tmp_path: Path):
    make(str(tmp_path / "s"))
    shard = sorted((tmp_path / "s" / "shards").glob("*.safetensors"))[1]
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x55
    shard.write_bytes(bytes(data))
    reader = StoreReader(tmp_path / "s")
    with pytest.raises(IntegrityError, match=r"shard-00001\.safetensors.*sha256"):
        reader.shard(1)


def test_rebuild_with_other_settings_refuses_and_keeps_the_store(tmp_path: Path):
    root = tmp_path / "s"
    make(str(root))
    before = (root / "manifest.json").read_text()
    bundle = load_dataset("digits", seed=0)
    teacher = Live(build_model("mlp", 10, bundle.input_shape, hidden=(8,)))
    plan = plan_store(teacher.fingerprint, bundle.train, bundle.fingerprint, "fp16", {}, 64, 10)
    with pytest.raises(ConfigError, match=r"teacher_fingerprint: store has '.*', the recipe gives"):
        build_store(root, teacher, bundle.train, plan)
    assert (root / "manifest.json").read_text() == before


def test_cached_teacher_gives_the_live_teachers_loss(tmp_path: Path):
    bundle = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    live = Live(build_model("mlp", 10, bundle.input_shape, hidden=(32,)))
    plan = plan_store(live.fingerprint, bundle.train, bundle.fingerprint, "fp32", {}, 100, 10)
    build_store(tmp_path / "s", live, bundle.train, plan)
    finalize_store(tmp_path / "s", plan)
    expect = {"teacher_fingerprint": live.fingerprint, "data_fingerprint": bundle.fingerprint}
    cached = Cached(tmp_path / "s", expect)
    student = build_model("mlp", 10, bundle.input_shape, hidden=(8,))
    objectives = {"ce": 0.5, "kd": {"weight": 0.5, "T": 4}}
    batch = next(iter(make_loader(bundle.train, 64, shuffle=True, seed=0)))
    a = Distiller(student, live, objectives)(batch)
    b = Distiller(student, cached, objectives)(batch)
    assert torch.allclose(a.loss, b.loss, atol=1e-6)
    with pytest.raises(ConfigError, match=r"teacher_fingerprint is '.*' in the store"):
        Cached(tmp_path / "s", {"teacher_fingerprint": "0" * 16})
    with pytest.raises(ConfigError, match="data_fingerprint"):
        Cached(tmp_path / "s", {"data_fingerprint": "f" * 16})


@pytest.mark.parametrize("name", ["topk", "topk_q8", "topk_poly"])
def test_topk_codecs_round_trip_large_vocab(name: str):
    torch.manual_seed(0)
    logits = torch.randn(16, 40000) * 4
    codec = build_codec(name, k=32, temperature=1.0)
    encoded = codec.encode(logits)
    assert encoded["ids"].dtype == torch.int16  # 16-bit packed ids for a vocabulary below 65,536
    sig = codec.decode(encoded, 40000)
    assert isinstance(sig, SparseSignal)
    ref = SparseSignal.from_logits(logits, 32)
    assert torch.equal(sig.ids, ref.ids)  # exact: the codec calls this same function on these same logits
    tol = {"topk": 2e-3, "topk_q8": 2e-2, "topk_poly": 0.2}[name]  # poly: a curve fit, lossy by design
    assert torch.allclose(sig.logprobs, ref.logprobs, atol=tol, rtol=1e-3)
    assert torch.allclose(sig.tail, ref.tail, atol=1e-2)


def test_cli_cache_inspect_and_train_from_store(tmp_path: Path, teacher_cache: str):
    from conftest import run_cli

    store = tmp_path / "store"
    common = [f"store.path={store}", f"teacher.cache_dir={teacher_cache}"]
    res = run_cli("cache", "digits-cache", *common, "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["num_shards"] >= 1
    info = run_cli("cache", "--inspect", str(store), "--json")
    assert info.returncode == 0, info.stderr
    inspected = json.loads(info.stdout)
    assert inspected["complete"] and inspected["fidelity"]["top1_agreement"] > 0.99
    assert inspected["bytes_per_sample"] > 0
    run = run_cli("run", "digits-cache", *common, f"output_dir={tmp_path / 'runs'}")
    assert run.returncode == 0, run.stderr
    missing = run_cli("run", "digits-cache", f"store.path={tmp_path / 'nope'}", f"output_dir={tmp_path / 'runs'}")
    assert missing.returncode == 2 and "not a kdforge store" in missing.stderr


def test_two_process_build_equals_one_process_build(tmp_path: Path, teacher_cache: str):
    from conftest import run_cli

    common = [f"teacher.cache_dir={teacher_cache}"]
    one = run_cli("cache", "digits-cache", f"store.path={tmp_path / 'one'}", *common, "--json")
    assert one.returncode == 0, one.stderr
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", "29533", "-m", "kdforge.cli", "cache"]
    cmd += ["digits-cache", f"store.path={tmp_path / 'two'}", *common, "--json"]
    two = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-3000:]
    report = json.loads(two.stdout)  # only the main process prints
    assert report["world_size"] == 2 and len(report["shards_written_per_process"]) == 2
    assert all(n > 0 for n in report["shards_written_per_process"])
    assert report["shards_written"] == json.loads(one.stdout)["num_shards"]
    assert Manifest.load(tmp_path / "two").content_sha256 == Manifest.load(tmp_path / "one").content_sha256


def test_topk_poly_fits_in_under_300_bytes_per_position_at_k128():
    torch.manual_seed(0)
    encoded = build_codec("topk_poly", k=128).encode(torch.randn(4, 6, 49152) * 3)
    per_position = sum(v.numel() * v.element_size() for v in encoded.values()) / 24
    assert per_position == 256 + 2 * 4 + 2 * 9 + 2  # ids, exact head, 9 coefficients, tail


def test_named_features_are_stored_and_served_like_a_live_teacher(tmp_path: Path):
    bundle = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    live = Live(build_model("mlp", 10, bundle.input_shape, hidden=(32,)))
    with pytest.raises(ConfigError, match="has no module '9'"):
        bad = plan_store(live.fingerprint, bundle.train, bundle.fingerprint, "fp16", {}, 128, 10, features=["9"])
        build_store(tmp_path / "bad", live, bundle.train, bad)
    assert not (tmp_path / "bad" / "manifest.json").exists(), "a wrong path is refused before anything is written"
    plan = plan_store(
        live.fingerprint,
        bundle.train,
        bundle.fingerprint,
        "fp16",
        {},
        128,
        10,
        features=["2", "1"],
        feature_dtype="fp32",
    )
    assert plan.features == {"names": ["2", "1"], "dtype": "fp32"}
    build_store(tmp_path / "s", live, bundle.train, plan)
    finalize_store(tmp_path / "s", plan)
    cached = Cached(tmp_path / "s")
    batch = bundle.train.__getitems__([9, 3, 100])
    wanted = Needs(teacher_logits=True, teacher_features=("1", "2"))
    out, ref = cached.signals(batch, wanted), live.signals(batch, wanted)
    # The build ran the teacher on shard 0 in one batch of 128 rows: the same call gives the very bits it stored.
    built_as = live.signals(bundle.train.__getitems__(list(range(128))), wanted)
    for name in ("1", "2"):
        assert out.features[name].shape == ref.features[name].shape == (3, 32)
        assert torch.equal(out.features[name], built_as.features[name][[9, 3, 100]])  # fp32 storage is exact
        # Live at batch 3 vs stored from batch 128: matrix kernels round differently by batch size and CPU.
        torch.testing.assert_close(out.features[name], ref.features[name], rtol=1e-5, atol=1e-6)
    assert torch.allclose(out.logits.logits, ref.logits.logits, atol=1e-2)
    only_features = cached.signals(batch, Needs(teacher_features=("2",)))
    assert only_features.logits is None and set(only_features.features.tensors) == {"2"}
    with pytest.raises(ConfigError, match=r"no teacher feature '3' \(it holds \['2', '1'\]\)"):
        cached.signals(batch, Needs(teacher_features=("3",)))
    changed = plan_store(live.fingerprint, bundle.train, bundle.fingerprint, "fp16", {}, 128, 10, features=["1"])
    with pytest.raises(ConfigError, match="features: store has"):
        build_store(tmp_path / "s", live, bundle.train, changed)


@pytest.mark.parametrize("stored_temperature", [1.0, 2.5])
def test_logit_objectives_read_a_topk_signal_through_its_dense_reconstruction(stored_temperature: float):
    from kdforge.objectives.base import PairContext
    from kdforge.signals import StudentOutput, TeacherOutput

    torch.manual_seed(0)
    s, t, y = torch.randn(6, 10), torch.randn(6, 10) * 3, torch.randint(0, 10, (6,))
    # With k equal to the number of classes the reconstruction is exact, so every objective must agree.
    full = SparseSignal.from_logits(t / stored_temperature, 10)
    full = SparseSignal(full.ids, full.logprobs, full.tail, 10, temperature=stored_temperature)
    for name in ("kd", "dkd", "dist", "wttm", "jsd"):
        obj = kdforge.objective(name)
        dense = obj.compute(PairContext(StudentOutput(s), TeacherOutput(logits=DenseSignal(t)), y))
        sparse = obj.compute(PairContext(StudentOutput(s), TeacherOutput(logits=full), y))
        assert sparse.item() == pytest.approx(dense.item(), rel=1e-4, abs=1e-6), name
    # With k < classes the tail is spread uniformly: close to, not equal to, the dense value.
    top4 = build_codec("topk", k=4, temperature=stored_temperature).decode(
        build_codec("topk", k=4, temperature=stored_temperature).encode(t), 10
    )
    assert top4.temperature == stored_temperature
    approx = kdforge.objective("kd").compute(PairContext(StudentOutput(s), TeacherOutput(logits=top4), y))
    assert torch.isfinite(approx)


def test_sparse_signal_of_the_wrong_size_is_refused_before_the_first_step():
    torch.manual_seed(0)
    student = build_model("mlp", 10, (1, 8, 8), hidden=(8,))

    class Wrong(Teacher):
        fingerprint = "wrong"

        def signals(self, batch, needs):
            from kdforge.signals import TeacherOutput

            return TeacherOutput(logits=SparseSignal.from_logits(torch.randn(len(batch["input"]), 12), 4))

    with pytest.raises(ShapeMismatchError, match=r"teacher logits shape \(3, 12\) .*student logits shape \(3, 10\)"):
        Distiller(student, Wrong(), {"kd": 1.0})({"input": torch.randn(3, 1, 8, 8)})


def test_cli_refuses_top_k_above_the_number_of_classes_without_writing(tmp_path: Path, teacher_cache: str):
    from conftest import run_cli

    store = tmp_path / "topk"
    res = run_cli(
        "cache", "digits-cache", f"store.path={store}", f"teacher.cache_dir={teacher_cache}", "store.codec=topk"
    )
    assert res.returncode == 2 and "store.top_k=32 must be between 1 and the teacher's 10 outputs" in res.stderr
    assert not store.exists()


def test_streamed_store_reads_rows_from_the_id_table_and_prefetches(tmp_path: Path):
    make(str(tmp_path / "s"))  # digits, 64 rows per shard
    manifest = Manifest.load(tmp_path / "s")
    assert manifest.ids_file["name"] == "ids.safetensors" and (tmp_path / "s" / "ids.safetensors").is_file()
    reader = StoreReader(tmp_path / "s", resident_bytes=0, cached_shards=4)
    assert not reader.in_memory
    reader._positions()
    assert reader.loads_on_demand == 0 and not reader._shards, "finding rows must not read the shards"
    stored = load_file(str(tmp_path / "s" / "ids.safetensors"))["index"]
    ids = stored[[5, 70, 200]]  # rows of three shards
    reader.prefetch(ids)
    rows = reader.rows(ids)
    assert reader.loads_on_demand == 0, "every shard the batch needed was already on its way"
    whole = StoreReader(tmp_path / "s")
    assert torch.equal(rows["logits"], whole.rows(ids)["logits"].to(rows["logits"].dtype))
    reader.rows(stored[[300]])
    assert reader.loads_on_demand == 1
    # A store written before the id table existed is still read (one pass over its shards).
    raw = json.loads((tmp_path / "s" / "manifest.json").read_text())
    raw["ids_file"] = {}
    raw.pop("sha256_self")  # stores of that age had no sealed manifest either
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(raw))
    assert torch.equal(StoreReader(tmp_path / "s", resident_bytes=0).rows(ids)["logits"], rows["logits"])
    # A damaged id table is caught.
    raw["ids_file"] = manifest.ids_file
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(raw))
    (tmp_path / "s" / "ids.safetensors").write_bytes(b"garbage")
    with pytest.raises(IntegrityError, match="id table"):
        StoreReader(tmp_path / "s", resident_bytes=0).rows(ids)


def test_block_shuffle_keeps_each_batch_within_a_few_shards():
    from kdforge.data.base import EpochSampler

    sampler = EpochSampler(1000, torch.Generator().manual_seed(0), block=64, window=2)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == list(range(1000)) and first != second
    for order in (first, second):
        shards = [p // 64 for p in order]
        # Once a shard's window is over it never comes back, and no run touches more than 2 shards at a time.
        runs = [shards[i : i + 128] for i in range(0, 1000, 128)]
        assert all(len(set(run)) <= 4 for run in runs)  # a batch may straddle two windows
        last_seen = {s: i for i, s in enumerate(shards)}
        first_seen = {s: shards.index(s) for s in set(shards)}
        overlapping = max(sum(first_seen[s] <= i <= last_seen[s] for s in first_seen) for i in range(1000))
        assert overlapping <= 2
    # Augmented: indices carry the epoch, and epoch 1 is laid out by the shards of view 1 (store rows 100 + p).
    tagged = EpochSampler(100, torch.Generator().manual_seed(0), tag=True, block=30, window=1, views=2)
    epoch0, epoch1 = list(tagged), list(tagged)
    assert sorted(epoch0) == list(range(100)) and sorted(epoch1) == list(range(100, 200))
    shards = [row // 30 for row in epoch1]  # index 100 + p is exactly store row 100 + p here
    changes = sum(a != b for a, b in itertools.pairwise(shards))
    assert changes == len(set(shards)) - 1, "one shard at a time: each is read in a single run"


def test_cli_trains_from_a_streamed_store(tmp_path: Path, teacher_cache: str):
    from conftest import run_cli

    common = [f"store.path={tmp_path / 'store'}", f"teacher.cache_dir={teacher_cache}"]
    assert run_cli("cache", "digits-cache", *common).returncode == 0
    res = run_cli("run", "digits-cache", *common, "store.memory_mb=0", f"output_dir={tmp_path / 'runs'}")
    assert res.returncode == 0, res.stderr
    summary = json.loads(next((tmp_path / "runs").glob("*/summary.json")).read_text())
    assert summary["teacher"]["streamed"] is True and summary["test"]["accuracy"] > 0.8


def test_streamed_store_with_gradient_accumulation_keeps_the_step_count(tmp_path: Path):
    from kdforge.engine.trainer import Trainer
    from kdforge.recipe import TrainConfig

    make(str(tmp_path / "s"))
    bundle = load_dataset("digits", seed=0)
    steps = {}
    for memory_mb in (1024, 0):
        cached = Cached(tmp_path / "s", memory_mb=memory_mb)
        torch.manual_seed(0)
        student = build_model("mlp", 10, bundle.input_shape, hidden=(8,))
        loader = make_loader(bundle.train, 48, shuffle=True, seed=0, read_block=None if memory_mb else 64)
        trainer = Trainer(Distiller(student, cached, {"kd": 1.0}), TrainConfig(epochs=2, grad_accum=2), run_dir=None)
        steps[memory_mb] = trainer.fit(loader).steps
    assert steps[0] == steps[1024]


def test_content_hash_of_a_store_without_features_is_unchanged_by_the_features_field(tmp_path: Path):
    import hashlib

    make(str(tmp_path / "s"))
    m = Manifest.load(tmp_path / "s")
    identity = {k: v for k, v in m.identity().items() if k != "features"}
    h = hashlib.sha256(json.dumps(identity, sort_keys=True).encode())
    for i in range(m.num_shards):
        h.update(m.shards[f"shard-{i:05d}.safetensors"]["sha256"].encode())
    assert m.content_sha256 == h.hexdigest()
