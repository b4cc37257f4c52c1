"""Causal-LM distillation end to end through `kdforge run`: Austen blocks of SmolLM2's tokenizer, a small teacher
saved as a transformers folder, token losses, generated responses, vocabulary cases, and the refusals (exit 2)."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml

from lm_models import LM_STUDENT

from conftest import run_cli

transformers = pytest.importorskip("transformers")
pytest.importorskip("rdata", reason="rdata reads the Austen corpus; installed by `make setup`")

STUDENT = LM_STUDENT


def smollm2_tokenizer() -> Path:
    from kdforge.llm.assets import smollm2_folder

    return smollm2_folder()


def austen_available() -> bool:
    from kdforge.data.austen import _candidates

    return any((p / "Rdata.rdb").is_file() for p in _candidates(None))


def tiny_teacher(folder: Path, rows: int, tokenizer: Path | None = None) -> Path:
    """A 1-layer Llama with ``rows`` head rows and a real tokenizer's files (SmolLM2's by default), saved."""
    import torch

    torch.manual_seed(1)
    config = transformers.LlamaConfig(
        vocab_size=rows,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(str(folder))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy((tokenizer or smollm2_tokenizer()) / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not austen_available():
        pytest.fail("the Austen corpus is missing: `make setup` unpacks it (scripts/get-austen.sh)")
    root = tmp_path_factory.mktemp("lm_teachers")
    return {"same": tiny_teacher(root / "same", 49152), "padded": tiny_teacher(root / "padded", 49216)}


def recipe(tmp_path: Path, teacher: Path | None, **extra: object) -> Path:
    tree = {
        "name": "lm",
        "data": {
            "name": "austen_lm",
            "batch_size": 4,
            "eval_batch_size": 8,
            "params": {"max_len": 48, "train_limit": 16, "test_limit": 8, "val_fraction": 0.0003},
        },
        "student": STUDENT,
        "objectives": {"kl": {"objective": "forward_kl", "weight": 0.5}, "ce": 0.5},
        "train": {"max_steps": 2, "chunk_size": 64, "optimizer": {"name": "adamw", "lr": 0.001}},
        "output_dir": str(tmp_path / "runs"),
        **extra,
    }
    if teacher is not None:
        tree["teacher"] = {
            "kind": "live",
            "model": {"name": "hf", "params": {"path": str(teacher), "task": "causal_lm"}},
        }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def run_folder(tmp_path: Path) -> Path:
    (folder,) = (tmp_path / "runs").iterdir()
    return folder


def test_run_distills_a_causal_lm_and_reports_perplexity_and_samples(tmp_path: Path, teachers) -> None:
    done = run_cli("run", str(recipe(tmp_path, teachers["same"])))
    assert done.returncode == 0, done.stderr[-2000:]
    folder = run_folder(tmp_path)
    summary = json.loads((folder / "summary.json").read_text())
    test = summary["test"]
    assert test["tokens"] == 8 * 47 and test["perplexity"] > 1 and 0 <= test["agreement"] <= 1 and test["kl"] > 0
    assert summary["vocabulary"]["case"] == "identical"
    assert len(summary["samples"]) == 3 and "teacher" in summary["samples"][0]
    report = (folder / "report.md").read_text()
    assert "perplexity" in report and "## Greedy samples" in report
    train = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert train[0]["split"] == "train" and "term/kl" in train[0]
    assert (folder / "student_hf" / "config.json").is_file()


def test_a_padded_head_is_detected_and_only_shared_rows_are_compared(tmp_path: Path, teachers) -> None:
    done = run_cli("run", str(recipe(tmp_path, teachers["padded"])))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "padded" in done.stderr  # reported before training
    vocab = json.loads((run_folder(tmp_path) / "vocabulary.json").read_text())
    assert vocab["case"] == "padded_head" and vocab["teacher_rows"] == 49216 and vocab["student_rows"] == 49152


def test_a_teacher_with_gemmas_tokenizer_teaches_a_smollm2_student_through_shared_tokens(tmp_path: Path) -> None:
    from kdforge.llm.assets import GEMMA_FOLDER, llm_cache

    gemma = llm_cache() / GEMMA_FOLDER
    if not (gemma / "tokenizer.json").is_file():
        pytest.skip(f"Gemma-3-270M's tokenizer is not converted at {gemma}")
    teacher = tiny_teacher(tmp_path / "gemma_tok", 262_144, tokenizer=gemma)  # Gemma-3's real 262,144 tokens
    done = run_cli("run", str(recipe(tmp_path, teacher)))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "shared" in done.stderr  # the vocabulary case, reported before training
    vocab = json.loads((run_folder(tmp_path) / "summary.json").read_text())["vocabulary"]
    assert vocab["case"] == "shared" and vocab["shared"] == 46_146 and vocab["teacher_rows"] == 262_144
    # Most student positions end where a Gemma token ends; the mass on Gemma-only tokens is dropped and reported.
    assert 0.85 < vocab["aligned_fraction"] <= 1.0 and 0.0 < vocab["mean_dropped_mass"] < 1.0


def test_mixed_on_policy_responses_report_generation_apart(tmp_path: Path, teachers) -> None:
    responses = {"source": "mixed", "student_fraction": 1.0, "prompt_tokens": 8, "max_new_tokens": 6}
    done = run_cli("run", str(recipe(tmp_path, teachers["same"], responses=responses)))
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((run_folder(tmp_path) / "summary.json").read_text())
    gen = summary["generation"]
    assert gen["source"] == "mixed" and gen["gen_batches"] == 2 and gen["gen_tokens"] == 2 * 4 * 6
    assert gen["gen_s"] > 0


def test_seqkd_responses_are_cached_and_a_damaged_cache_is_refused_in_one_line(tmp_path: Path, teachers) -> None:
    store = tmp_path / "responses"
    responses = {"source": "seqkd", "prompt_tokens": 8, "max_new_tokens": 6, "cache_dir": str(store)}
    path = recipe(tmp_path, teachers["same"], responses=responses)
    done = run_cli("run", str(path))
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((run_folder(tmp_path) / "summary.json").read_text())["generation"]["gen_tokens"] == 2 * 4 * 6
    (cache,) = store.glob("seqkd-*.sqlite")
    with contextlib.closing(sqlite3.connect(cache)) as con:
        blob = con.execute("SELECT tokens FROM responses LIMIT 1").fetchone()[0]
    data = bytearray(cache.read_bytes())
    data[bytes(data).index(blob) + 2] ^= 0x01  # one generated token id changed; SQLite itself sees nothing wrong
    cache.write_bytes(bytes(data))
    tree = yaml.safe_load(path.read_text())
    tree["output_dir"] = str(tmp_path / "again")
    path.write_text(yaml.safe_dump(tree))
    bad = run_cli("run", str(path))
    assert bad.returncode == 2, bad.stderr[-2000:]
    error = [line for line in bad.stderr.splitlines() if line.startswith("error:")]  # after the progress lines
    assert len(error) == 1 and "Traceback" not in bad.stderr, bad.stderr
    assert str(cache) in error[0] and "delete it" in error[0], error[0]
    assert cache.read_bytes() == bytes(data), "the damaged cache was written to"
    cache.unlink()  # what the message says to do: the responses are generated again
    again = run_cli("run", str(path))
    assert again.returncode == 0, again.stderr[-2000:]


def test_an_int8_teacher_on_its_own_device_distills_and_a_missing_device_is_refused(tmp_path: Path, teachers) -> None:
    path = recipe(tmp_path, teachers["same"])
    tree = yaml.safe_load(path.read_text())
    tree["teacher"].update(dtype="int8", device="cpu")
    path.write_text(yaml.safe_dump(tree))
    done = run_cli("run", str(path))
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((run_folder(tmp_path) / "summary.json").read_text())["test"]["kl"] >= 0
    tree["teacher"]["device"] = "cuda:5"
    tree["output_dir"] = str(tmp_path / "refused")
    path.write_text(yaml.safe_dump(tree))
    bad = run_cli("run", str(path))
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "teacher.device 'cuda:5'" in lines[0], bad.stderr


def test_sequence_data_with_a_classifier_student_is_refused_before_training(tmp_path: Path) -> None:
    path = recipe(tmp_path, None, objectives={"ce": 1.0})
    tree = yaml.safe_load(path.read_text())
    tree["student"] = {"name": "text_bag"}
    path.write_text(yaml.safe_dump(tree))
    done = run_cli("run", str(path))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs a causal-LM student" in lines[0] and "TextBag" in lines[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_on_policy_from_a_model_that_cannot_generate_is_refused(tmp_path: Path, teachers) -> None:
    path = recipe(tmp_path, teachers["same"], responses={"source": "on_policy"})
    tree = yaml.safe_load(path.read_text())
    tree["student"] = {"name": "tiny_gpt", "params": {"width": 16, "layers": 1, "heads": 1}}
    path.write_text(yaml.safe_dump(tree))
    done = run_cli("run", str(path))
    assert done.returncode == 2
    assert "student to generate text, but it is a TinyGPT" in done.stderr.strip().splitlines()[-1]


def test_refine_keeps_the_documents_the_teacher_prefers_and_refuses_a_bad_fraction(tmp_path: Path, teachers) -> None:
    corpus = tmp_path / "corpus.jsonl"
    texts = [f"It is a truth universally acknowledged, number {i}." for i in range(6)]
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp_path / "refined.jsonl"
    args = ["refine", str(corpus), "--teacher", str(teachers["same"]), "--reference", str(teachers["padded"])]
    done = run_cli(*args, "--fraction", "0.5", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(kept) == 3 and all(k["text"] in texts for k in kept)
    summary = json.loads(done.stdout)
    assert summary["kept"] == 3 and summary["dropped"] == 3
    # Difference sampling keeps the top half: every kept score is at least every dropped one.
    assert summary["mean_score_kept"] >= summary["mean_score_dropped"]
    bad = run_cli(*args, "--fraction", "1.5", "--out", str(tmp_path / "x.jsonl"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "1.5" in bad.stderr
