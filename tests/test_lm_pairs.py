"""Prompt/response pairs from the user's files (``data.name: files`` with prompt/response columns) as causal-LM rows:
layout and labels against an independent tokenization, truncation, carving, the refusals, and one `kdforge run`."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from kdforge.data.base import load_dataset
from kdforge.errors import ConfigError

from conftest import run_cli

transformers = pytest.importorskip("transformers")
pytest.importorskip("datasets", reason="the files data set needs `pip install 'kdforge[files]'`")

# Row LONG's response is cut to max_len on purpose; the warning about it is checked once, below.
pytestmark = pytest.mark.filterwarnings("ignore:data.params.max_len=\\d+ cuts responses short")

MAX_LEN = 32
LONG = 5  # the row whose response is cut to MAX_LEN
STUDENT = {
    "name": "hf",
    "params": {
        "task": "causal_lm",
        "config": {
            "model_type": "llama",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 128,
        },
    },
}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> str:
    """SmolLM2's tokenizer files alone, in a folder of their own (nothing of the 517 MB model is needed)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("KDFORGE_CACHE", raising=False)  # the shared cache, not a test's private one
        from kdforge.llm.assets import smollm2_folder

        source = smollm2_folder()
    folder = tmp_path_factory.mktemp("smollm2_tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, folder / name)
    return str(folder)


def pairs(n: int = 20) -> list[dict[str, str]]:
    out = [
        {"prompt": f"What is {i} plus {i}?", "response": f"{i} plus {i} is {2 * i}.", "label": "x"} for i in range(n)
    ]
    out[LONG]["response"] = "It is a long story. " * 20
    return out


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def build(train: str, tokenizer: str, **params: object):
    base = {
        "train": train,
        "tokenizer": tokenizer,
        "test_fraction": 0.2,
        "prompt_column": "prompt",
        "response_column": "response",
        "max_len": MAX_LEN,
    }
    return load_dataset("files", **{**base, **params})


def row(bundle, sample_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, labels, mask) of one sample id, whichever split it landed in."""
    for ds in (bundle.train, bundle.val, bundle.test):
        if ds is not None and sample_id in ds.indices.tolist():
            i = ds.indices.tolist().index(sample_id)
            return ds.inputs[i], ds.labels[i], ds.fields["attention_mask"][i]
    raise AssertionError(f"sample id {sample_id} is in no split")


def test_rows_are_prompt_response_eos_with_labels_on_the_response_only(tmp_path: Path, tokenizer: str) -> None:
    data = pairs()
    with pytest.warns(UserWarning, match=r"max_len=32 cuts responses short"):
        bundle = build(write_jsonl(tmp_path / "pairs.jsonl", data), tokenizer)
    tok = transformers.AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
    eos = tok.eos_token_id
    assert eos is not None

    prompt = tok(data[7]["prompt"])["input_ids"]
    response = tok(data[7]["response"], add_special_tokens=False)["input_ids"]
    real = prompt + response + [eos]  # the eos is appended
    ids, labels, mask = row(bundle, 7)
    assert ids.dtype == labels.dtype == torch.long and mask.dtype == torch.bool
    assert ids.tolist() == real + [tok.pad_token_id if tok.pad_token_id is not None else eos] * (MAX_LEN - len(real))
    assert mask.tolist() == [True] * len(real) + [False] * (MAX_LEN - len(real))
    expected = [-100] * (len(prompt) - 1) + response + [eos] + [-100] * (MAX_LEN - len(real) + 1)
    assert labels.tolist() == expected  # position j predicts token j + 1, only inside the response
    assert (labels[: len(prompt) - 1] == -100).all() and (labels[len(real) - 1 :] == -100).all()

    ids, labels, mask = row(bundle, LONG)  # cut to max_len: no eos, the last position has no target
    assert mask.all() and labels[-1] == -100 and eos not in labels.tolist()
    assert sum(bundle.truncated.values()) == 1

    assert bundle.num_classes == len(tok) and bundle.input_shape == (MAX_LEN,) and bundle.class_names == []
    assert bundle.name == "files" and bundle.tokenizer == tokenizer
    assert bundle.train.inputs.shape[1:] == (MAX_LEN,) and bundle.train.labels.shape == bundle.train.inputs.shape
    again = build(write_jsonl(tmp_path / "again.jsonl", data), tokenizer, seed=3)
    assert again.fingerprint == bundle.fingerprint  # the data, not the seed
    data[0]["response"] = "Zero."
    other = build(write_jsonl(tmp_path / "other.jsonl", data), tokenizer)
    assert other.fingerprint != bundle.fingerprint


def test_val_and_test_are_carved_or_read_with_row_numbers_as_ids(tmp_path: Path, tokenizer: str) -> None:
    train = write_jsonl(tmp_path / "pairs.jsonl", pairs())
    bundle = build(train, tokenizer, val_fraction=0.1)
    sizes = (len(bundle.train), len(bundle.val), len(bundle.test))
    assert sizes == (14, 2, 4)
    ids = torch.cat([bundle.train.indices, bundle.val.indices, bundle.test.indices])
    assert sorted(ids.tolist()) == list(range(20))
    assert build(train, tokenizer, val_fraction=0.0).val is None

    test = write_jsonl(tmp_path / "test.jsonl", pairs(6)[:3])
    apart = build(train, tokenizer, test=test, test_fraction=0.0, val_fraction=0.25)
    assert (len(apart.train), len(apart.val), len(apart.test)) == (15, 5, 3)
    assert apart.test.indices.tolist() == [0, 1, 2] and apart.truncated["test"] == 0


def test_bad_pairs_fail_in_one_line_naming_file_row_and_value(tmp_path: Path, tokenizer: str) -> None:
    train = write_jsonl(tmp_path / "pairs.jsonl", pairs())
    long_prompt = pairs()
    long_prompt[3]["prompt"] = "Tell me everything about " + "the sea " * 40
    empty = pairs()
    empty[4]["response"] = ""
    cases = {
        "prompt too long": (
            {"train": write_jsonl(tmp_path / "long.jsonl", long_prompt)},
            r"long.jsonl' row 4 \(sample id 3\): the prompt in 'prompt' is \d+ tokens and max_len=32 .*"
            r"a prompt longer than the context",
        ),
        "missing column": (
            {"train": train, "response_column": "answer"},
            r"pairs.jsonl' has no column 'answer'; columns found: prompt, response, label",
        ),
        "prompt only": ({"train": train, "response_column": None}, r"^data.params.response_column: required with"),
        "response only": ({"train": train, "prompt_column": None}, r"^data.params.prompt_column: required with"),
        "empty response": (
            {"train": write_jsonl(tmp_path / "empty.jsonl", empty)},
            r"empty.jsonl' row 5 \(sample id 4\): empty text in 'response'",
        ),
        "no test": ({"train": train, "test_fraction": 0.0}, r"^data.params.test: a run evaluates on a"),
    }
    for name, (params, pattern) in cases.items():
        with pytest.raises(ConfigError) as info:
            build(tokenizer=tokenizer, **params)
        message = str(info.value)
        assert "\n" not in message and re.search(pattern, message), f"{name}: {message}"
    count = len(transformers.AutoTokenizer.from_pretrained(tokenizer)(long_prompt[3]["prompt"])["input_ids"])
    with pytest.raises(ConfigError, match=rf"'prompt' is {count} tokens and max_len=32 leaves no room"):
        build(write_jsonl(tmp_path / "long2.jsonl", long_prompt), tokenizer)


def recipe(tmp_path: Path, train: str, tokenizer: str) -> Path:
    tree = {
        "name": "pairs",
        "data": {
            "name": "files",
            "batch_size": 4,
            "eval_batch_size": 8,
            "params": {
                "train": train,
                "test_fraction": 0.2,
                "val_fraction": 0.0,  # one evaluation only: the test split
                "prompt_column": "prompt",
                "response_column": "response",
                "tokenizer": tokenizer,
                "max_len": 64,
            },
        },
        "student": STUDENT,
        "objectives": {"ce": 1.0},
        "train": {"max_steps": 2, "optimizer": {"name": "adamw", "lr": 0.001}},
        "output_dir": str(tmp_path / "runs"),
    }
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_kdforge_run_trains_on_pairs_and_refuses_a_prompt_longer_than_the_context(
    tmp_path: Path, tokenizer: str
) -> None:
    train = write_jsonl(tmp_path / "pairs.jsonl", pairs())
    done = run_cli("run", str(recipe(tmp_path, train, tokenizer)))
    assert done.returncode == 0, done.stderr[-2000:]
    (folder,) = (tmp_path / "runs").iterdir()
    test = json.loads((folder / "summary.json").read_text())["test"]
    # Scored on the response tokens (and their eos) alone: never the prompt or the padding.
    expected = build(train, tokenizer, max_len=64, val_fraction=0.0).test.labels.ne(-100).sum()
    assert test["perplexity"] > 1 and test["tokens"] == int(expected) < 4 * 64

    bad = pairs()
    bad[2]["prompt"] = "word " * 100
    done = run_cli("run", str(recipe(tmp_path / "bad", write_jsonl(tmp_path / "bad.jsonl", bad), tokenizer)))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert "row 3 (sample id 2)" in lines[0] and "max_len=64" in lines[0] and "longer than the context" in lines[0]
