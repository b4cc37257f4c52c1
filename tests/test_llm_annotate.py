"""The LLM teacher against real OpenAI-compatible servers on 127.0.0.1: llama.cpp's server on the SmolLM2 GGUF
(returns logprobs) and `transformers serve` on the converted folder (returns none). Both are started by the fixtures.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from kdforge.llm.annotate import annotate, load_recipe
from kdforge.llm.served import ServerError

pytestmark = pytest.mark.slow

LABELS = {"earn": "earnings", "acq": "acquisition", "crude": "oil", "grain": "grain"}
TEXTS = [
    "Net profit rose to 12.5 mln dlrs, or 1.10 dlrs per share, from 9.8 mln dlrs a year earlier, the company said.",
    "The company agreed to acquire all outstanding shares of its rival for 45 dlrs a share in cash.",
    "Crude oil prices climbed as OPEC ministers agreed to cut output by one mln barrels per day.",
    "The U.S. Agriculture Department said wheat and corn exports rose to 1.2 mln tonnes last week.",
]
BOS = "<|im_start|>"  # SmolLM2's BOS text: llama.cpp's echo needs it in front (see test below)
GOLD = ["earn", "acq", "crude", "grain"]
PROMPT = {
    "instruction": "Classify the news article into one of these topics: {labels}.",
    "template": "Article: {text}\nTopic:",
}


def _input(tmp_path: Path, n: int = 4) -> Path:
    path = tmp_path / "texts.jsonl"
    rows = [{"text": TEXTS[i % 4] + ("" if i < 4 else f" (item {i})"), "label": GOLD[i % 4]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _job(tmp_path: Path, server, data: Path, name: str = "job", **annotate: object) -> dict:
    return {
        "name": name,
        "teacher": {
            "kind": "served",
            "base_urls": [server.url],
            "model": server.model,
            "concurrency": 2,
            "extra_body": {"repeat_penalty": 1.0} if server.kind == "llama.cpp" else {},
        },
        "annotate": {
            "input": {"path": str(data), "gold_column": "label"},
            "labels": LABELS,
            "prompt": PROMPT,
            **annotate,
        },
        "output_dir": str(tmp_path / "out"),
        "cache": str(tmp_path / "cache.sqlite"),
    }


def test_label_scoring_through_llama_server_agrees_with_in_process(llama_server) -> None:
    from kdforge.llm.assets import smollm2_folder
    from kdforge.llm.labels import LabelSet, PromptConfig, render_prompt
    from kdforge.llm.local import LocalBackend
    from kdforge.llm.served import ServedBackend, ServedConfig

    labels = LabelSet.parse(LABELS)
    # Two texts: llama-cpp-python's echo costs a sort of the vocabulary per prompt token (~80 ms each here).
    bare = PromptConfig(instruction="", template=PROMPT["template"])  # fewer prompt tokens to echo
    prompts = [str(render_prompt(bare, labels, t, chat=False)) for t in TEXTS[::2]]
    continuations = [" " + v for v in labels.verbalizers]
    cfg = {"kind": "served", "base_urls": [llama_server.url], "model": llama_server.model}
    # SmolLM2 adds no BOS token, and llama-cpp-python then shifts echoed log-probabilities by one: refused, not used.
    unprefixed = ServedBackend(ServedConfig(**cfg))
    with pytest.raises(ServerError, match=r"echoed log-probabilities look shifted .*score_prefix"):
        unprefixed.score(prompts[:1], continuations)
    unprefixed.close()
    served = ServedBackend(ServedConfig(**cfg, score_prefix=BOS))
    local = LocalBackend(str(smollm2_folder()))
    over_http, in_process = served.score(prompts, continuations), local.score([BOS + p for p in prompts], continuations)
    served.close()
    local.close()
    # The same Q4_1 weights: llama.cpp computes with them quantised, transformers with their fp32 dequantisation.
    assert np.isfinite(over_http).all() and np.isfinite(in_process).all()
    assert np.abs(over_http - in_process).max() < 0.5, (over_http, in_process)
    assert (over_http.argmax(1) == in_process.argmax(1)).all()
    # Without echo: the server's own tokens of each label, scored from each step's top log-probabilities; where a
    # token is in the top, the value is the echo's (a token below the top is bounded by the lowest listed).
    walker = ServedBackend(ServedConfig(**cfg, score_prefix=BOS, score_mode="next_token", score_top=20000))
    walked = walker.score(prompts, continuations)
    walker.close()
    # A token below the top 20000 gets the lowest listed value: an upper bound, counted in usage.bounded.
    off = np.abs(walked - over_http) > 0.05
    assert off.sum() <= walker.usage.bounded, (walked, over_http)
    assert (walked[off] > over_http[off]).all()
    assert (~off).sum() >= off.size - 2


def test_annotate_with_logprobs_and_rerun_sends_nothing(llama_server, tmp_path: Path) -> None:
    data = _input(tmp_path, 8)
    before = llama_server.requests("/v1/chat/completions")
    summary = annotate(load_recipe(_job(tmp_path, llama_server, data, method="logprobs")), show=False)
    sent = llama_server.requests("/v1/chat/completions") - before
    assert summary["method"] == "logprobs" and summary["usage"]["requests"] == sent == 8
    rows = [json.loads(x) for x in (tmp_path / "out/job/annotations.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(8))
    for r in rows:
        assert r["status"] in ("ok", "unknown")
        if r["status"] == "ok":
            assert abs(sum(r["probs"]) - 1) < 1e-6 and r["label"] == list(LABELS)[int(np.argmax(r["probs"]))]
    assert summary["usage"]["prompt_tokens"] > 0
    again = annotate(load_recipe(_job(tmp_path, llama_server, data, method="logprobs")), show=False)
    assert llama_server.requests("/v1/chat/completions") - before == 8  # counted at the server: nothing new
    assert again["usage"]["cached"] == 8 and again["usage"]["requests"] == 0
    assert (tmp_path / "out/job/annotations.jsonl").read_text() == "".join(
        json.dumps(r, ensure_ascii=False) + "\n" for r in rows
    )


def test_server_without_logprobs_falls_back_to_self_consistency(transformers_server, tmp_path: Path) -> None:
    data = _input(tmp_path, 2)
    # Four answer tokens: `transformers serve` generates in Python, several seconds per request on 2 cores.
    summary = annotate(load_recipe(_job(tmp_path, transformers_server, data, samples=3, max_tokens=4)), show=False)
    # auto → logprobs asked; the server drops them, so each text gets 3 sampled answers: 1 + 3 requests.
    assert summary["method"] == "logprobs" and summary["usage"]["requests"] == 2 * 4
    assert transformers_server.requests("/v1/chat/completions") >= 8
    for r in (json.loads(x) for x in (tmp_path / "out/job/annotations.jsonl").read_text().splitlines()):
        assert r["answer"].count(" | ") == 2  # the three sampled answers shown
        if r["status"] == "ok":
            assert all(abs(p * 3 - round(p * 3)) < 1e-6 for p in r["probs"])  # shares of 3 votes


def test_two_processes_annotate_one_data_set_through_one_cache(llama_server, tmp_path: Path, reliability) -> None:
    n = 16
    data = _input(tmp_path, n)
    procs = []
    for name in ("one", "two"):
        recipe = tmp_path / f"{name}.yaml"
        recipe.write_text(yaml.safe_dump(_job(tmp_path, llama_server, data, name, method="answer", batch=2)))
        cmd = [sys.executable, "-m", "kdforge.cli", "annotate", str(recipe)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    one, two = (
        [json.loads(x) for x in (tmp_path / f"out/{k}/annotations.jsonl").read_text().splitlines()]
        for k in ("one", "two")
    )
    assert [r["label"] for r in one] == [r["label"] for r in two]  # the first answer stored wins for both
    with sqlite3.connect(tmp_path / "cache.sqlite") as con:
        assert con.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == n
    reliability.record(
        "concurrency",
        f"two `kdforge annotate` processes started together on one data set ({n} rows) and one new request cache",
        "both exit 0 with the same labels; each request's answer stored once",
        trials=1,
    )


def test_generate_dedups_and_filters_by_reannotation(llama_server, tmp_path: Path) -> None:
    from kdforge.llm.generate import generate
    from kdforge.llm.generate import load_recipe as load_generate

    job = {
        "name": "gen",
        "teacher": {"kind": "served", "base_urls": [llama_server.url], "model": llama_server.model},
        "generate": {
            "labels": {
                "crude": {"verbalizer": "oil", "description": "oil prices"},
                "grain": {"verbalizer": "grain", "description": "wheat harvests"},
            },
            "per_label": 3,
            "max_tokens": 60,
            "min_chars": 10,
            "filter": {"labeling": {"method": "logprobs", "prompt": PROMPT}},
        },
        "output_dir": str(tmp_path / "out"),
        "cache": str(tmp_path / "cache.sqlite"),
    }
    try:
        summary = generate(load_generate(job), show=False)
    except Exception as err:  # a 135M model may get every candidate rejected: that must be said, not hidden
        assert "none of 6 candidates survived" in str(err)
        summary = None
    rows = [json.loads(x) for x in (tmp_path / "out/gen/generated.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {r["label"] for r in rows} == {"crude", "grain"}
    for r in rows:
        assert r["kept"] == (r["reason"] is None)
        if r["kept"]:
            assert r["reannotated"] == r["label"]
    if summary is not None:
        assert summary["kept"] == sum(r["kept"] for r in rows)


def test_rationales_keep_only_those_ending_in_the_gold_label(llama_server, tmp_path: Path) -> None:
    from kdforge.llm.rationales import load_recipe as load_rationales
    from kdforge.llm.rationales import rationales

    data = _input(tmp_path, 4)
    job = {
        "name": "cot",
        "teacher": {"kind": "served", "base_urls": [llama_server.url], "model": llama_server.model, "concurrency": 2},
        "rationales": {"input": {"path": str(data)}, "labels": LABELS, "per_example": 3, "max_tokens": 96},
        "output_dir": str(tmp_path / "out"),
        "cache": str(tmp_path / "cache.sqlite"),
    }
    try:
        summary = rationales(load_rationales(job), show=False)
    except Exception as err:  # a 135M model may never end in the gold label: said in one line, candidates kept
        assert "no rationale of 12 ended in the gold label" in str(err)
        summary = None
    candidates = [json.loads(x) for x in (tmp_path / "out/cot/candidates.jsonl").read_text().splitlines()]
    assert len(candidates) == 12 and len({(c["id"], c["sample"]) for c in candidates}) == 12
    assert len({c["rationale"] for c in candidates}) > 4  # sampled with a seed per draw: diverse reasoning
    for c in candidates:
        assert c["kept"] == (c["answer"] == c["label"])
    if summary is not None:
        kept = [json.loads(x) for x in (tmp_path / "out/cot/rationales.jsonl").read_text().splitlines()]
        assert len(kept) == summary["kept"] == sum(c["kept"] for c in candidates)
        assert all(k["response"].endswith("Answer: " + LABELS[k["label"]]) for k in kept)


def test_teaching_loop_writes_new_examples_near_errors(llama_server, tmp_path: Path) -> None:
    from kdforge.data.text import export_tab_files

    files = export_tab_files(
        "reuters-r8", tmp_path, {"seed": ("train", 40), "dev": ("test", 60), "test": ("test", 60)}, seed=1
    )
    labels = ["earn", "acq", "crude", "trade", "money-fx", "interest", "ship", "grain"]
    recipe = {
        "name": "teach-gen",
        "data": {
            "name": "files",
            "params": {
                "train": str(files["seed"]),
                "val": str(files["dev"]),
                "test": str(files["test"]),
                "labels": labels,
                "tokenizer": "minilm",
                "max_len": 32,
            },
        },
        "student": {"name": "text_bag"},
        "train": {"epochs": 1},
        "output_dir": str(tmp_path / "runs"),
        "profile": False,
        "teach": {
            "rounds": 1,
            "per_round": 3,
            "source": "generate",
            "teacher": {"kind": "served", "base_urls": [llama_server.url], "model": llama_server.model},
            "labeling": {"labels": labels},
            "write": {"max_tokens": 40},
            "cache": str(tmp_path / "cache.sqlite"),
        },
    }
    (tmp_path / "teach.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    exe = Path(sys.executable).with_name("kdforge")
    done = subprocess.run(
        [str(exe), "teach", str(tmp_path / "teach.yaml")], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    run = next((tmp_path / "runs").glob("teach-gen-*"))
    added = [json.loads(x) for x in (run / "round-0/added.jsonl").read_text().splitlines()]
    seed = {r["text"][:200]: r["label"] for r in (json.loads(x) for x in files["seed"].read_text().splitlines())}
    assert 1 <= len(added) <= 3 and all(a["origin"] == "generated" and a["text"] for a in added)
    for a in added:  # written after a training example (never a dev one), and given that example's label
        assert a["label"] == seed[a["after"]]
    summary = json.loads((run / "summary.json").read_text())
    assert [r["train_size"] for r in summary["rounds"]] == [40, 40 + len(added)]
