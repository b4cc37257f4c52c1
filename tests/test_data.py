"""Data layer: IDX parsing, Fashion-MNIST search order, splits, sample ids, batched loading, digits."""

from __future__ import annotations

import gzip
import io
import os
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from kdforge.data import (
    ArrayDataset,
    DataBundle,
    collate_batch,
    fetch,
    load_dataset,
    make_loader,
    stratified_fraction,
    subset,
    train_val_split,
)
from kdforge.data import fashion_mnist as fm
from kdforge.data.idx import IdxFormatError, read_idx, write_idx
from kdforge.errors import ConfigError, DataNotFoundError

REAL_DIRS = [
    Path("/tmp/fm/out/usr/share/datasets/fashion-mnist"),
    fm.DEBIAN_DIR,
    *([Path(os.environ["KDFORGE_DATA_DIR"]) / "fashion-mnist"] if os.environ.get("KDFORGE_DATA_DIR") else []),
    Path.home() / ".cache" / "kdforge" / "datasets" / "fashion-mnist",
]


def real_fashion_dir() -> Path | None:
    return next((d for d in REAL_DIRS if not fm.find_files(d)[1]), None)


def write_fashion(folder: Path, n_train: int = 60, n_test: int = 20, gz: bool = True, seed: int = 0) -> Path:
    """Write a tiny Fashion-MNIST lookalike (labels cycle through the 10 classes)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gz else ""
    for stem, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{stem}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28), np.uint8))
        write_idx(folder / f"{stem}-labels-idx1-ubyte{suffix}", (np.arange(n) % 10).astype(np.uint8))
    return folder


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No Debian folder, no data dir, an empty home and no network: nothing can be found."""
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "debian" / "fashion-mnist")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KDFORGE_DATA_DIR", raising=False)
    monkeypatch.setenv("KDFORGE_OFFLINE", "1")
    return tmp_path


def labelled(n_per_class: list[int], seed: int = 0) -> ArrayDataset:
    labels = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(n_per_class)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]
    return ArrayDataset(torch.randn(len(labels), 1, 6, 6), labels)


# IDX format


def test_idx_round_trip_handwritten_header(tmp_path: Path) -> None:
    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2, 3, 4) + data.tobytes()
    (tmp_path / "a-idx3-ubyte").write_bytes(raw)
    (tmp_path / "a-idx3-ubyte.gz").write_bytes(gzip.compress(raw))
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        out = read_idx(tmp_path / name)
        assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
        np.testing.assert_array_equal(out, data)


@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
def test_idx_write_read_round_trip(tmp_path: Path, dtype: str) -> None:
    data = (np.arange(30) - 7).reshape(5, 6).astype(dtype)
    write_idx(tmp_path / "x.gz", data)
    out = read_idx(tmp_path / "x.gz")
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, data)


def test_idx_corrupt_magic_names_file(tmp_path: Path) -> None:
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x12\x34\x08\x03" + bytes(20))
    with pytest.raises(IdxFormatError, match="train-images-idx3-ubyte"):
        read_idx(bad)


def test_idx_truncated_data_names_file(tmp_path: Path) -> None:
    bad = tmp_path / "labels.gz"
    bad.write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + bytes(7)))
    with pytest.raises(IdxFormatError, match=r"labels\.gz.*truncated"):
        read_idx(bad)


def test_idx_corrupt_gzip_names_file(tmp_path: Path) -> None:
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + struct.pack(">I", 4) + bytes(4))[:-6])
    with pytest.raises(IdxFormatError, match=r"t10k-labels-idx1-ubyte\.gz"):
        read_idx(bad)


# Fashion-MNIST search order and errors


def test_missing_data_lists_every_place_and_apt_get(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDFORGE_DATA_DIR", str(isolated / "data"))
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("fashion_mnist")
    msg = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "dpkg -x" in msg and "make data" in msg
    for folder in (
        isolated / "debian" / "fashion-mnist",
        isolated / "data" / "fashion-mnist",
        isolated / "home" / ".cache" / "kdforge" / "datasets" / "fashion-mnist",
    ):
        assert str(folder) in msg
    assert "KDFORGE_OFFLINE" in msg


def test_missing_data_mentions_unset_data_dir(isolated: Path) -> None:
    with pytest.raises(DataNotFoundError, match="KDFORGE_DATA_DIR is not set"):
        fm.locate()


def test_explicit_root_wins_and_is_the_only_place(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_fashion(isolated / "root", gz=False)
    write_fashion(isolated / "data" / "fashion-mnist")
    monkeypatch.setenv("KDFORGE_DATA_DIR", str(isolated / "data"))
    assert fm.locate(root)["train_images"] == root / "train-images-idx3-ubyte"
    with pytest.raises(DataNotFoundError) as info:
        fm.locate(isolated / "empty")
    assert str(isolated / "empty") in str(info.value)
    assert str(isolated / "data") not in str(info.value)


def test_data_dir_used_when_debian_folder_absent(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_fashion(isolated / "data" / "fashion-mnist")
    monkeypatch.setenv("KDFORGE_DATA_DIR", str(isolated / "data"))
    assert fm.locate()["test_labels"].parent == data
    debian = write_fashion(isolated / "debian" / "fashion-mnist")
    assert fm.locate()["test_labels"].parent == debian


def test_user_cache_used_last(isolated: Path) -> None:
    cache = write_fashion(isolated / "home" / ".cache" / "kdforge" / "datasets" / "fashion-mnist")
    assert fm.locate()["train_labels"].parent == cache


def test_download_lands_atomically_in_user_cache(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = write_fashion(isolated / "server")
    urls: list[str] = []

    def fake_urlopen(url: str, timeout: float) -> io.BytesIO:
        urls.append(url)
        assert timeout <= 5
        return io.BytesIO((source / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.delenv("KDFORGE_OFFLINE")
    monkeypatch.setattr(fetch.urllib.request, "urlopen", fake_urlopen)
    files = fm.locate()
    cache = isolated / "home" / ".cache" / "kdforge" / "datasets" / "fashion-mnist"
    assert {p.parent for p in files.values()} == {cache}
    assert len(urls) == 4 and all(u.startswith(fm.URL) for u in urls)
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{s}.gz" for s in fm.FILES.values())


def test_failed_download_leaves_nothing(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(url: str, timeout: float) -> io.BytesIO:
        raise urllib.error.URLError("no network")

    monkeypatch.delenv("KDFORGE_OFFLINE")
    monkeypatch.setattr(fetch.urllib.request, "urlopen", refuse)
    with pytest.raises(DataNotFoundError, match="no network"):
        fm.locate()
    cache = isolated / "home" / ".cache" / "kdforge" / "datasets" / "fashion-mnist"
    assert not cache.exists() or not any(cache.iterdir())


def test_invalid_download_is_rejected(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KDFORGE_OFFLINE")
    monkeypatch.setattr(fetch.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"<html>"))
    with pytest.raises(DataNotFoundError, match="not an IDX file"):
        fm.locate()
    cache = isolated / "home" / ".cache" / "kdforge" / "datasets" / "fashion-mnist"
    assert not any(cache.iterdir())


def test_fashion_builder_on_synthetic_files(isolated: Path) -> None:
    root = write_fashion(isolated / "root", n_train=100, n_test=30)
    b = load_dataset("fashion_mnist", root=str(root), val_fraction=0.2, seed=3)
    assert isinstance(b, DataBundle)
    assert (len(b.train), len(b.val), len(b.test)) == (80, 20, 30)
    assert b.train.inputs.dtype == torch.float32 and b.train.inputs.shape[1:] == (1, 28, 28)
    assert b.num_classes == 10 and b.class_names[0] == "T-shirt/top" and b.class_names[9] == "Ankle boot"
    assert b.input_shape == (1, 28, 28) and b.name == "fashion_mnist" and len(b.fingerprint) == 16
    assert set(b.train.indices.tolist()).isdisjoint(b.val.indices.tolist())
    assert b.val.augment == "none" and b.test.split == "test"
    raw = read_idx(root / "train-images-idx3-ubyte.gz")
    i = int(b.train.indices[5])
    expected = (torch.from_numpy(raw[i]).float() / 255 - 0.2860) / 0.3530
    torch.testing.assert_close(b.train.inputs[5, 0], expected)

    few = load_dataset("fashion_mnist", root=str(root), val_fraction=0.2, label_fraction=0.5, train_limit=7)
    assert len(few.train) == 7 and len(few.val) == 20
    other = write_fashion(isolated / "other", n_train=100, n_test=30, seed=1)
    assert load_dataset("fashion_mnist", root=str(other)).fingerprint != b.fingerprint


def test_fashion_builder_rejects_bad_params_before_loading(isolated: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.label_fraction"):
        load_dataset("fashion_mnist", label_fraction=0)
    with pytest.raises(ConfigError, match="flip_crop"):
        load_dataset("fashion_mnist", augment="mixup")


@pytest.mark.skipif(real_fashion_dir() is None, reason="real Fashion-MNIST files not found")
def test_real_fashion_mnist_sizes() -> None:
    root = real_fashion_dir()
    b = load_dataset("fashion_mnist", root=str(root), val_fraction=0.1)
    assert (len(b.train), len(b.val), len(b.test)) == (54000, 6000, 10000)
    assert b.train.inputs.shape == (54000, 1, 28, 28) and b.test.labels.shape == (10000,)
    assert torch.bincount(b.val.labels).tolist() == [600] * 10
    assert abs(float(b.test.inputs.mean())) < 0.05 and abs(float(b.test.inputs.std()) - 1) < 0.05
    again = load_dataset("fashion_mnist", root=str(root), val_fraction=0.1)
    assert again.fingerprint == b.fingerprint and torch.equal(again.val.indices, b.val.indices)


# Splits and sample ids


def test_stratified_fraction_keeps_every_class_and_proportions() -> None:
    ds = labelled([100, 50, 10, 2])
    small = stratified_fraction(ds, 0.1, seed=0)
    assert torch.bincount(small.labels).tolist() == [10, 5, 1, 1]
    assert set(small.indices.tolist()) <= set(ds.indices.tolist())
    assert torch.equal(small.indices, stratified_fraction(ds, 0.1, seed=0).indices)
    assert stratified_fraction(ds, 1.0, seed=0) is ds
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ConfigError, match=r"data\.label_fraction"):
            stratified_fraction(ds, bad, seed=0)


def test_train_val_split_disjoint_covering_deterministic() -> None:
    ds = labelled([40, 30, 20, 10])
    train, val = train_val_split(ds, 0.25, seed=1)
    assert val is not None
    t, v = set(train.indices.tolist()), set(val.indices.tolist())
    assert t.isdisjoint(v) and t | v == set(range(len(ds)))
    assert torch.bincount(val.labels).tolist() == [10, 8, 5, 2]
    again_train, again_val = train_val_split(ds, 0.25, seed=1)
    assert torch.equal(train.indices, again_train.indices) and torch.equal(val.indices, again_val.indices)
    assert not torch.equal(val.indices, train_val_split(ds, 0.25, seed=2)[1].indices)
    assert train_val_split(ds, 0.0, seed=1) == (ds, None)
    with pytest.raises(ConfigError, match=r"data\.val_fraction"):
        train_val_split(ds, 1.0, seed=1)


def test_sample_ids_survive_subset_and_loader() -> None:
    ds = ArrayDataset(torch.arange(20.0).reshape(20, 1), torch.arange(20) % 3)
    first = subset(ds, [3, 5, 7, 9, 11, 13])
    second = subset(first, [1, 4])
    assert second.indices.tolist() == [5, 11]
    assert second.inputs[:, 0].tolist() == [5.0, 11.0]
    seen = torch.cat([b["index"] for b in make_loader(first, 4, shuffle=True, seed=0)])
    assert sorted(seen.tolist()) == [3, 5, 7, 9, 11, 13]
    for batch in make_loader(first, 4, shuffle=True, seed=0):
        assert torch.equal(batch["input"][:, 0].long(), batch["index"])


def test_getitems_equals_stacked_getitem() -> None:
    ds = subset(labelled([5, 5, 5]), [0, 2, 4, 6, 8, 10, 12])
    picks = [6, 0, 3, 3]
    batch = ds.__getitems__(picks)
    stacked = collate_batch([ds[i] for i in picks])
    assert batch.keys() == stacked.keys() == {"input", "label", "index"}
    for key in batch:
        assert torch.equal(batch[key], stacked[key])
    assert batch["index"].dtype == torch.int64 and ds[0]["index"].dtype == torch.int64
    assert collate_batch(batch) is batch


def test_unlabelled_dataset_has_no_label_key() -> None:
    ds = ArrayDataset(torch.randn(6, 3), None)
    assert set(ds[0]) == {"input", "index"} and set(ds.__getitems__([0, 1])) == {"input", "index"}
    train, val = train_val_split(ds, 0.5, seed=0)
    assert val is not None and len(train) + len(val) == 6


def test_flip_crop_keeps_shapes_and_changes_pixels() -> None:
    torch.manual_seed(0)
    x = torch.rand(64, 3, 12, 12) + 1
    ds = ArrayDataset(x, torch.zeros(64, dtype=torch.int64), augment="flip_crop")
    out = ds.__getitems__(list(range(64)))["input"]
    assert out.shape == x.shape and ds[0]["input"].shape == (3, 12, 12)
    assert not torch.equal(out, x)
    # Zero padding shows up as zero rows or columns on some samples.
    assert bool((out == 0).any())
    # Every output is some shifted window of the zero-padded original or of its mirror image.
    padded = [torch.nn.functional.pad(v, (2, 2, 2, 2)) for v in (x, x.flip(-1))]
    for i in range(64):
        windows = [p[i, :, dy : dy + 12, dx : dx + 12] for p in padded for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    assert ArrayDataset(x, None).__getitems__([0])["input"].equal(x[:1])
    with pytest.raises(ConfigError, match="flip_crop"):
        ArrayDataset(x, None, augment="cutout")
    with pytest.raises(ConfigError, match=r"\(N, C, H, W\)"):
        ArrayDataset(torch.randn(4, 5), None, augment="flip_crop")


def test_make_loader_yields_dict_batches_and_is_seeded() -> None:
    ds = labelled([7, 7, 7])
    batches = list(make_loader(ds, 8, shuffle=True, seed=5, drop_last=True))
    assert len(batches) == 2
    for b in batches:
        assert set(b) == {"input", "label", "index"} and b["input"].shape == (8, 1, 6, 6)
    again = list(make_loader(ds, 8, shuffle=True, seed=5, drop_last=True))
    assert all(torch.equal(a["index"], b["index"]) for a, b in zip(batches, again, strict=True))
    other = list(make_loader(ds, 8, shuffle=True, seed=6, drop_last=True))
    assert not all(torch.equal(a["index"], b["index"]) for a, b in zip(batches, other, strict=True))


def test_make_loader_with_workers() -> None:
    ds = ArrayDataset(torch.randn(32, 1, 8, 8), torch.arange(32) % 4, augment="flip_crop")
    seen = torch.cat([b["index"] for b in make_loader(ds, 8, shuffle=False, seed=0, num_workers=2)])
    assert seen.tolist() == list(range(32))


# Digits and the registry


def test_digits_bundle_shapes() -> None:
    b = load_dataset("digits", seed=0)
    assert b.name == "digits" and b.num_classes == 10 and b.input_shape == (1, 8, 8)
    assert len(b.train) + len(b.val) + len(b.test) == 1797
    assert len(b.test) == pytest.approx(0.25 * 1797, abs=10)
    assert b.train.inputs.dtype == torch.float32 and b.train.inputs.shape[1:] == (1, 8, 8)
    ids = [set(s.indices.tolist()) for s in (b.train, b.val, b.test)]
    assert ids[0].isdisjoint(ids[1]) and ids[0].isdisjoint(ids[2]) and ids[1].isdisjoint(ids[2])
    everything = torch.cat([b.train.inputs, b.val.inputs, b.test.inputs])
    assert abs(float(everything.mean())) < 1e-4 and abs(float(everything.std()) - 1) < 1e-3
    again = load_dataset("digits", seed=0)
    assert torch.equal(again.test.indices, b.test.indices) and again.fingerprint == b.fingerprint
    assert not torch.equal(load_dataset("digits", seed=1).test.indices, b.test.indices)
    assert len(load_dataset("digits", val_fraction=0.0).train) == len(b.train) + len(b.val)


def test_unknown_dataset_and_param_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="fashion_mnist"):
        load_dataset("fashion_mnits")
    with pytest.raises(ConfigError) as info:
        load_dataset("digits", val_fracton=0.2)
    msg = str(info.value)
    assert "'digits'" in msg and "'val_fracton'" in msg
    assert "val_fraction=0.1" in msg and "test_fraction=0.25" in msg
    with pytest.raises(ConfigError, match=r"data\.test_fraction"):
        load_dataset("digits", test_fraction=0)
