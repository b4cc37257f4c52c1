"""The teaching strategies end to end through the installed `kdforge` console script, as a user runs them.

One seconds-long run of each strategy on scikit-learn's digits (folders, summaries, report rows, accuracy above
chance), every strategy-specific refusal (exit 2, one line naming the key, nothing written), the built-in recipes.

The CLI processes are started together when the module's first test asks for them (a thread pool of subprocesses,
one intra-op thread each: most of each call is interpreter start-up), about 50 s of wall time on two idle cores.
Every run has its own output folder and its own private teacher cache, so concurrent runs share nothing.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from safetensors.torch import load_file

from conftest import run_cli

DIGITS = {"name": "digits", "params": {"val_fraction": 0.1}, "batch_size": 64}
STUDENT = {"name": "mlp", "params": {"hidden": [16]}}
TRAIN = {"epochs": 2, "optimizer": {"name": "adamw", "lr": 0.01}, "log_every": 10}
KD = {"ce": 0.5, "kd": {"weight": 0.5, "T": 4}}
CHANCE = 0.1  # ten balanced classes
ABOVE_CHANCE = 0.2  # every run below lands at 0.4-0.9 on seed 0; twice chance leaves a wide margin
DIGITS_TRAIN = 1211  # 1797 images - 450 test - 136 validation

NEW_RECIPES = {
    "fmnist-mutual": "mutual",
    "fmnist-born-again": "born_again",
    "fmnist-assistant": "assistant",
    "fmnist-ensemble": "multi_teacher",
    "fmnist-mean-teacher": "mean_teacher",
    "fmnist-function-matching": "function_matching",
}


def _teacher(cache: Path, hidden: list[int] | None = None, epochs: int = 3, lr: float = 0.003) -> dict[str, Any]:
    """A live MLP teacher trained once into a cache folder private to its run."""
    return {
        "kind": "live",
        "model": {"name": "mlp", "params": {"hidden": hidden or [64]}},
        "train": {"epochs": epochs, "optimizer": {"name": "adamw", "lr": lr}},
        "cache_dir": str(cache),
    }


def _runs(tmp: Path) -> dict[str, dict[str, Any]]:
    """The successful runs: the sections of each recipe that differ from the shared digits base."""
    return {
        "mutual": {"strategy": {"name": "mutual", "count": 2}, "objectives": {"ce": 1.0}},
        "born_again": {
            "strategy": {"name": "born_again", "generations": 1, "ensemble": True},
            "teacher": _teacher(tmp / "teachers-born_again"),
        },
        "assistant": {
            "strategy": {"name": "assistant", "chain": [{"name": "mlp", "params": {"hidden": [32]}}]},
            "teacher": _teacher(tmp / "teachers-assistant"),
        },
        # digits are (N, 1, 8, 8) images, so the training view is flipped and cropped; such views of 8x8 digits
        # are hard for an MLP, hence a longer teacher and student budget than the other runs.
        "function_matching": {
            "strategy": {"name": "function_matching", "mixup": 1.0, "augment": "flip_crop"},
            "teacher": _teacher(tmp / "teachers-function_matching", epochs=8, lr=0.01),
            "objectives": {"kd": {"T": 1.0, "alpha": 1.0}},
            "train": {**TRAIN, "epochs": 4},
        },
        # weak/strong auto: the plain image for the teacher, flip_crop for the student.
        "mean_teacher": {
            "strategy": {
                "name": "mean_teacher",
                "labelled_fraction": 0.3,
                "labelled_batch": 32,
                "unlabelled_batch": 32,
                "weak": "auto",
                "strong": "auto",
                "threshold": 0.7,
            },
            "objectives": {"ce": 1.0},
            "train": {**TRAIN, "epochs": 5},
        },
        "multi_teacher": {
            "strategy": "multi_teacher",
            "teacher": {
                "kind": "ensemble",
                "aggregate": "mean",
                "members": [{**_teacher(tmp / "teachers-multi_teacher", hidden=[32]), "seed": seed} for seed in (1, 2)],
            },
        },
    }


def _refusals(tmp: Path) -> dict[str, tuple[dict[str, Any], str]]:
    """Recipes each strategy's own checks refuse: (sections, the start of the one-line message after 'error: ')."""
    teacher = _teacher(tmp / "teachers-refused")
    chain = [{"name": "mlp", "params": {"hidden": [32]}}]
    mean_teacher = {"name": "mean_teacher", "labelled_fraction": 0.2}
    return {
        "assistant_empty_chain": (
            {"strategy": {"name": "assistant", "chain": []}, "teacher": teacher},
            "invalid recipe: strategy.chain: empty: name at least one assistant model",
        ),
        "assistant_without_teacher": (
            {"strategy": {"name": "assistant", "chain": chain}},
            "teacher: strategy assistant needs a teacher",
        ),
        "born_again_without_teacher_term": (
            {"strategy": {"name": "born_again", "generations": 1}, "objectives": {"ce": 1.0}},
            "objectives: strategy born_again teaches every generation after the first",
        ),
        "born_again_unknown_key": (
            {"strategy": {"name": "born_again", "generations": 1, "chain": chain}},
            "invalid recipe: strategy.chain: unknown key; allowed keys: ",
        ),
        "mean_teacher_all_labelled": (
            {"strategy": {**mean_teacher, "labelled_fraction": 1.0}, "objectives": {"ce": 1.0}},
            "invalid recipe: strategy.labelled_fraction: 1.0 leaves no unlabeled data",
        ),
        "mean_teacher_label_fraction": (
            {
                "strategy": mean_teacher,
                "objectives": {"ce": 1.0},
                "data": {**DIGITS, "params": {"val_fraction": 0.1, "label_fraction": 0.5}},
            },
            "data.params.label_fraction: mean_teacher needs the whole training set",
        ),
        "mean_teacher_with_teacher": (
            {"strategy": mean_teacher, "teacher": teacher},
            "teacher.kind='live': in strategy mean_teacher the teacher is the EMA of the student",
        ),
        "mean_teacher_ignores_unlabelled": (
            {"strategy": {**mean_teacher, "pseudo": 0.0, "consistency": 0.0}, "objectives": {"ce": 1.0}},
            "strategy.pseudo and strategy.consistency are both 0",
        ),
        "function_matching_with_labels": (
            {"strategy": {"name": "function_matching", "augment": "none"}, "teacher": teacher},
            "objectives.ce: strategy function_matching is label-free",
        ),
        "multi_teacher_single_teacher": (
            {"strategy": "multi_teacher", "teacher": teacher},
            "teacher.kind='live': strategy multi_teacher needs teacher.kind=ensemble",
        ),
    }


def _refused_in_process(tmp: Path) -> dict[str, tuple[dict[str, Any], str]]:
    """More refusals, checked by calling the validation the CLI calls (each CLI start costs seconds of CPU)."""
    teacher = _teacher(tmp / "teachers-refused")
    mean_teacher = {"name": "mean_teacher", "labelled_fraction": 0.2}
    return {
        "mean_teacher_unknown_key": (
            {"strategy": {**mean_teacher, "threshhold": 0.9}, "objectives": {"ce": 1.0}},
            "invalid recipe: strategy.threshhold: unknown key; allowed keys: ",
        ),
        "function_matching_stored_teacher": (
            {
                "strategy": {"name": "function_matching", "augment": "none"},
                "teacher": {**teacher, "kind": "precomputed"},
                "objectives": {"kd": {"T": 1.0, "alpha": 1.0}},
            },
            "teacher.kind='precomputed': strategy function_matching needs a teacher that runs on each",
        ),
        "function_matching_without_teacher": (
            {"strategy": {"name": "function_matching", "augment": "none"}, "objectives": {"kd": {"T": 1.0}}},
            "teacher: strategy function_matching matches a teacher; the recipe has none",
        ),
    }


def _tree(tmp: Path, name: str, sections: dict[str, Any]) -> tuple[dict[str, Any], Path]:
    """The recipe of run ``name`` (the digits base with ``sections`` replaced) and the output folder it writes to."""
    out = tmp / "runs" / name
    tree = {
        "name": name,
        "seed": 0,
        "data": DIGITS,
        "student": STUDENT,
        "objectives": KD,
        "train": TRAIN,
        "profile": False,
        "output_dir": str(out),
        **sections,
    }
    return tree, out


def _write(tmp: Path, name: str, sections: dict[str, Any]) -> tuple[Path, Path]:
    """The recipe file of run ``name`` and the output folder its runs go to."""
    tree, out = _tree(tmp, name, sections)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path, out


@dataclass
class Launched:
    """A CLI call started in the background: its recipe, its output folder and its result when it ends."""

    recipe: Path
    out: Path
    future: Future[subprocess.CompletedProcess[str]]

    def result(self) -> subprocess.CompletedProcess[str]:
        return self.future.result(timeout=600)


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Launched]]:
    """Every run and refusal of this module, started together (the longest runs first)."""
    tmp = tmp_path_factory.mktemp("strategies")
    jobs = _runs(tmp)
    jobs.update({f"refused-{name}": sections for name, (sections, _) in _refusals(tmp).items()})
    order = ["mean_teacher", "multi_teacher", "born_again", "function_matching", "mutual", "assistant"]
    order += [name for name in jobs if name not in order]
    with pytest.MonkeyPatch.context() as env, ThreadPoolExecutor(max_workers=3) as pool:
        # One intra-op thread per process: several processes share two cores, and torch's spinning thread pool
        # makes a tiny model's steps many times slower when its threads wait for a busy core.
        env.setenv("OMP_NUM_THREADS", "1")
        out = {}
        for name in order:
            path, folder = _write(tmp, name, jobs[name])
            out[name] = Launched(path, folder, pool.submit(run_cli, "run", str(path)))
        yield out
        for job in out.values():
            job.future.cancel()


def _finished(job: Launched) -> tuple[Path, dict[str, Any], str]:
    """The run folder, summary and report of a run that must have succeeded."""
    res = job.result()
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    (run_dir,) = list(job.out.iterdir())
    assert "".join(f"run folder: {run_dir}".split()) in "".join(res.stdout.split())  # however rich wrapped it
    for name in ("recipe.yaml", "summary.json", "report.md", "labels.json"):
        assert (run_dir / name).is_file(), name
    return run_dir, json.loads((run_dir / "summary.json").read_text()), (run_dir / "report.md").read_text()


def _accuracy(test: dict[str, Any] | None, where: str) -> float:
    """A test accuracy that is a float in [0, 1] and clearly above chance."""
    assert test is not None, f"{where}: no test metrics"
    acc = test["accuracy"]
    assert isinstance(acc, float) and 0.0 <= acc <= 1.0, (where, acc)
    assert acc > ABOVE_CHANCE > CHANCE, f"{where}: test accuracy {acc:.3f} is not above chance"
    return acc


def _records(folder: Path) -> list[dict[str, Any]]:
    """Every record of a run folder's metrics.jsonl."""
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _report_rows(report: str) -> list[str]:
    """The first cell of every table row of a report (the run names), header and rule excluded."""
    rows = [line.split("|")[1].strip() for line in report.splitlines() if line.startswith("| ")]
    return [row for row in rows if row not in ("run", "---")]


def _stage_folder(folder: Path) -> None:
    """A chain link's folder: its checkpoints, metrics, final student and its summary (written last)."""
    assert (folder / "checkpoints" / "last" / "modules.safetensors").is_file(), folder
    assert (folder / "metrics.jsonl").read_text().strip(), folder
    assert load_file(str(folder / "student.safetensors")), folder
    assert json.loads((folder / "summary.json").read_text())["link"] == folder.name


# -- one run of each strategy -----------------------------------------------------------------------------------------


def test_mutual_trains_two_different_students_that_mimic_each_other(launched: dict[str, Launched]) -> None:
    run_dir, summary, report = _finished(launched["mutual"])
    assert set(summary["students"]) == {"s0", "s1"}
    assert [summary["students"][s]["seed"] for s in ("s0", "s1")] == [0, 1]
    for name, student in summary["students"].items():
        _accuracy(student["test"], f"mutual/{name}")
    assert [row["name"] for row in summary["stages"]] == ["s0", "s1"]
    assert [row["test"] for row in summary["stages"]] == [summary["students"][s]["test"] for s in ("s0", "s1")]
    ensemble = summary["ensemble_test_accuracy"]
    assert isinstance(ensemble, float) and ABOVE_CHANCE < ensemble <= 1.0
    # Every student gets the recipe's terms and a mimicry term from its peer.
    train = [r for r in _records(run_dir) if r.get("split") == "train"]
    assert train, "no training record was logged"
    for term in ("ce@s0", "ce@s1", "mimic@s0<-s1", "mimic@s1<-s0"):
        assert f"term/{term}" in train[-1], sorted(train[-1])
    # Copies of one architecture from different seeds: the two students are two different networks.
    weights = load_file(str(run_dir / "checkpoints" / "last" / "modules.safetensors"))
    s0 = {k.removeprefix("s0/"): v for k, v in weights.items() if k.startswith("s0/")}
    s1 = {k.removeprefix("s1/"): v for k, v in weights.items() if k.startswith("s1/")}
    assert s0 and s0.keys() == s1.keys()
    assert any(not s0[k].equal(s1[k]) for k in s0)
    assert _report_rows(report) == ["mutual/s0", "mutual/s1", "mutual"]


def test_born_again_generations_each_in_their_own_folder(launched: dict[str, Launched]) -> None:
    run_dir, summary, report = _finished(launched["born_again"])
    links = ["gen-0", "gen-1", "gen-ensemble"]
    for link in links:
        _stage_folder(run_dir / link)
    assert [row["name"] for row in summary["stages"]] == links
    for row in summary["stages"]:
        _accuracy(row["test"], f"born_again/{row['name']}")
        assert row["model"] == STUDENT and row["steps"] > 0
    ensemble = summary["generations_ensemble_test_accuracy"]
    assert isinstance(ensemble, float) and ABOVE_CHANCE < ensemble <= 1.0
    teachers = [json.loads((run_dir / link / "summary.json").read_text())["teacher"] for link in links]
    assert teachers[0]["kind"] == "live" and "link" not in teachers[0]  # the recipe's teacher
    assert teachers[1] == {"kind": "live", "link": "gen-0"}
    assert teachers[2] == {"kind": "ensemble", "members": ["gen-0", "gen-1"]}
    seeds = [json.loads((run_dir / link / "summary.json").read_text())["seed"] for link in links]
    assert seeds == [0, 1, 2]
    # The run's own result is its last generation's.
    assert summary["test"] == summary["stages"][-1]["test"]
    assert _report_rows(report) == ["teacher", *(f"born_again/{link}" for link in links), "born_again"]


def test_assistant_chain_teacher_to_assistant_to_student(launched: dict[str, Launched]) -> None:
    run_dir, summary, report = _finished(launched["assistant"])
    for link in ("assistant-1", "student"):
        _stage_folder(run_dir / link)
    assert [(row["name"], row["model"]) for row in summary["stages"]] == [
        ("assistant-1", {"name": "mlp", "params": {"hidden": [32]}}),
        ("student", STUDENT),
    ]
    for row in summary["stages"]:
        _accuracy(row["test"], f"assistant/{row['name']}")
    assistant = json.loads((run_dir / "assistant-1" / "summary.json").read_text())
    student = json.loads((run_dir / "student" / "summary.json").read_text())
    assert assistant["teacher"]["kind"] == "live" and "link" not in assistant["teacher"]
    assert student["teacher"] == {"kind": "live", "link": "assistant-1"}
    # Each link's weights are its own model's: the 32-unit assistant is larger than the 16-unit student.
    sizes = {
        link: sum(t.numel() for t in load_file(str(run_dir / link / "student.safetensors")).values())
        for link in ("assistant-1", "student")
    }
    assert sizes["assistant-1"] > sizes["student"] > 0
    assert summary["test"] == summary["stages"][-1]["test"]
    assert _report_rows(report) == ["teacher", "assistant/assistant-1", "assistant/student", "assistant"]


def test_function_matching_on_flipped_cropped_mixed_views(launched: dict[str, Launched]) -> None:
    run_dir, summary, report = _finished(launched["function_matching"])
    assert summary["strategy"]["name"] == "function_matching"
    assert summary["strategy"]["augment"] == "flip_crop" and summary["strategy"]["mixup"] == 1.0
    assert summary["teacher"]["kind"] == "live"
    assert set(summary["objectives"]) == {"kd"}  # label-free
    train = [r for r in _records(run_dir) if r.get("split") == "train"]
    assert train and all("term/kd" in r and "term/ce" not in r for r in train)
    acc = _accuracy(summary["test"], "function_matching")
    assert 0.0 <= summary["test"]["agreement"] <= 1.0
    assert summary["steps"] > 0 and summary["epochs"] == 4
    assert _report_rows(report) == ["teacher", "function_matching"]
    assert f"{100 * acc:.2f}%" in report


def test_mean_teacher_learns_from_a_labelled_share_and_the_rest(launched: dict[str, Launched]) -> None:
    run_dir, summary, report = _finished(launched["mean_teacher"])
    semi = summary["semi"]
    assert set(semi) >= {"labelled", "unlabelled", "weak", "strong", "ema_updates"}
    assert semi["labelled"] + semi["unlabelled"] == DIGITS_TRAIN
    assert abs(semi["labelled"] / DIGITS_TRAIN - 0.3) < 0.02  # 30% of each class
    assert (semi["weak"], semi["strong"]) == ("none", "flip_crop")  # auto, for image inputs
    assert semi["ema_updates"] == summary["steps"] > 0  # one EMA update per optimizer step
    assert summary["teacher"]["kind"] == "ema"
    _accuracy(summary["test"], "mean_teacher")
    teacher_acc = summary["teacher_test"]["accuracy"]
    assert isinstance(teacher_acc, float) and CHANCE < teacher_acc <= 1.0
    # The EMA teacher is saved with the student in every resumable checkpoint.
    last = run_dir / "checkpoints" / "last"
    ema = load_file(str(last / "teachers.safetensors"))
    assert int(ema["teacher/updates"]) == semi["ema_updates"]
    assert any(k.startswith("teacher/model.") for k in ema)
    assert _report_rows(report) == ["teacher", "mean_teacher"]


def test_multi_teacher_distils_an_ensemble_of_teachers(launched: dict[str, Launched]) -> None:
    _, summary, report = _finished(launched["multi_teacher"])
    teacher = summary["teacher"]
    assert teacher["kind"] == "ensemble" and teacher["aggregate"] == "mean"
    assert [m["model"] for m in teacher["members"]] == [{"name": "mlp", "params": {"hidden": [32]}}] * 2
    # Differently seeded members are different teachers.
    assert teacher["members"][0]["sha256"] != teacher["members"][1]["sha256"]
    for i, member in enumerate(teacher["members"]):
        _accuracy(member["metrics"]["test"], f"multi_teacher member {i}")
    _accuracy(summary["test"], "multi_teacher")
    assert "multi_teacher" in _report_rows(report)


# -- refusals -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(_refusals(Path("/unused"))))
def test_strategy_refusals_are_one_line_exit_2_and_write_nothing(case: str, launched: dict[str, Launched]) -> None:
    expected = _refusals(Path("/unused"))[case][1]
    job = launched[f"refused-{case}"]
    res = job.result()
    assert res.returncode == 2, (res.stdout[-2000:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"error: {expected}"), lines[0]
    if "unknown key" in expected:  # the strategy's own keys, not the generic section's
        assert lines[0].endswith("allowed keys: name, generations, first, ensemble"), lines[0]
    # Refused while validating, before any data was read: no run folder.
    assert not job.out.exists()


@pytest.mark.parametrize("case", sorted(_refused_in_process(Path("/unused"))))
def test_more_strategy_refusals_at_validation(case: str, tmp_path: Path) -> None:
    from kdforge.errors import ConfigError
    from kdforge.runner import resolve

    sections, expected = _refused_in_process(tmp_path)[case]
    tree, out = _tree(tmp_path, case, sections)
    with pytest.raises(ConfigError) as err:
        resolve(tree)
    message = str(err.value)
    assert message.startswith(expected) and "\n" not in message, message
    if "unknown key" in expected:
        allowed = message.split("allowed keys: ", 1)[1].split(", ")
        assert {"labelled_fraction", "threshold", "pseudo", "consistency"} <= set(allowed), message
    assert not out.exists()


# -- built-in recipes ---------------------------------------------------------------------------------------------


def test_recipes_json_lists_the_strategy_recipes() -> None:
    res = run_cli("recipes", "--json")
    assert res.returncode == 0, res.stderr
    items = {item["name"]: item for item in json.loads(res.stdout)}
    for name, strategy in NEW_RECIPES.items():
        assert name in items, sorted(items)
        item = items[name]
        assert item["strategy"] == strategy, item
        assert item["description"].strip() and "\n" not in item["description"], item
        assert Path(item["path"]).is_file() and Path(item["path"]).stem == name
    assert items["digits-kd"]["strategy"] == "offline"  # no strategy section: the default


def test_every_builtin_recipe_passes_validation() -> None:
    from kdforge import recipes as builtin
    from kdforge.recipe import load_yaml
    from kdforge.registry import STRATEGIES
    from kdforge.runner import resolve

    found = builtin.builtin()
    assert set(NEW_RECIPES) <= set(found)
    for name, path in found.items():
        recipe = resolve(load_yaml(path))  # schema, preflight and the strategy's own check; nothing runs
        assert recipe.name == name
        assert recipe.strategy.name in STRATEGIES
        if name in NEW_RECIPES:
            assert recipe.strategy.name == NEW_RECIPES[name]
            # Validated by the strategy's own section (its Config), not left as the generic one.
            assert type(recipe.strategy) is STRATEGIES.get(recipe.strategy.name).Config, name
