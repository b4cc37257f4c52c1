"""A chain of distillation stages, each student becoming the next one's teacher (born-again, teacher assistants).

Every link is a full run in its own folder (checkpoints, metrics, ``student.safetensors``, ``summary.json``). A link
whose summary exists is finished: a resumed chain loads its student from disk and goes on; the link that was
interrupted continues from its own last checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate.utils import set_seed
from torch import nn

from kdforge.data import DataBundle
from kdforge.data.recipe_data import load_data
from kdforge.engine.checkpoint import save_model
from kdforge.engine.rundir import RunDir
from kdforge.engine.trainer import get_accelerator
from kdforge.files import atomic_write
from kdforge.recipe import ModelConfig, Recipe
from kdforge.strategies.common import SUMMARY, RunOutcome, finished, start, train_summary
from kdforge.strategies.provision import build, load_weights, loaders, provide_teacher, require_classification
from kdforge.strategies.stage import Stage, run_stage
from kdforge.teachers import Live, Teacher

WEIGHTS = "student.safetensors"


@dataclass
class Link:
    """One stage of a chain: the student it trains, with which terms, from which seed."""

    name: str
    model: ModelConfig
    objectives: Mapping[str, Any]
    seed: int


@dataclass
class LinkResult:
    """A finished link: its student (plain module) and its summary."""

    link: Link
    student: nn.Module
    summary: dict[str, Any]


# How the teacher of link k is made from the links before it (the previous student, or an ensemble of them).
TeacherOf = Callable[[int, list[LinkResult]], tuple[Teacher | None, dict[str, Any]]]


def previous_student(first: tuple[Teacher | None, dict[str, Any]]) -> TeacherOf:
    """Link 0 learns from ``first`` (the recipe's teacher, or none); link k from link k−1's student, run live."""

    def teacher_of(k: int, done: list[LinkResult]) -> tuple[Teacher | None, dict[str, Any]]:
        if k == 0:
            return first
        prev = done[-1]
        return Live(prev.student), {"kind": "live", "link": prev.link.name}

    return teacher_of


def run_chain(
    recipe: Recipe, run_dir: RunDir, bundle: DataBundle, links: list[Link], teacher_of: TeacherOf, resume: bool
) -> list[LinkResult]:
    """Train (or, when finished on disk, load) every link in order; each link's teacher comes from ``teacher_of``."""
    done: list[LinkResult] = []
    for k, link in enumerate(links):
        folder = run_dir.child(link.name)
        summary = finished(folder) if resume else None
        if summary is not None:
            done.append(LinkResult(link, _load_student(link, bundle, folder.path), summary))
            continue
        teacher, teacher_info = teacher_of(k, done)
        set_seed(link.seed)  # the link's initial weights depend on its seed alone
        student = build(link.model, bundle, f"{link.name}.model")
        train_loader, evals = loaders(recipe.model_copy(update={"seed": link.seed}), bundle, teacher)
        stage = Stage(
            students={"student": student},
            teachers={"teacher": teacher} if teacher is not None else {},
            objectives=link.objectives,
            train=recipe.train,
            train_loader=train_loader,
            eval_loaders=evals,
            run_dir=folder,
            seed=link.seed,
        )
        result = run_stage(stage, resume=resume)
        summary = {
            **train_summary(recipe, result.train, teacher_info),
            "link": link.name,
            "student": link.model.model_dump(),
            "objectives": dict(link.objectives),
            "seed": link.seed,
        }
        if get_accelerator().is_main_process:
            # The weights first, the summary last: a summary on disk means the link's student is there too.
            atomic_write(folder.path / WEIGHTS, lambda tmp, s=result.student: save_model(s, tmp))
        folder.write_json(SUMMARY, summary)
        done.append(LinkResult(link, result.student.eval(), summary))
    return done


def _load_student(link: Link, bundle: DataBundle, folder: Path) -> nn.Module:
    """A finished link's student, rebuilt from its model section and its saved weights."""
    model = build(link.model, bundle, f"{link.name}.model")
    load_weights(model, folder / WEIGHTS, f"{link.name} (finished link)")
    return model.eval()


def stage_rows(results: list[LinkResult]) -> list[dict[str, Any]]:
    """One row per link for the summary and the report: name, model, test metrics, training steps and time."""
    return [
        {
            "name": r.link.name,
            "model": r.link.model.model_dump(),
            "test": r.summary.get("test"),
            "steps": r.summary.get("steps"),
            "train_wall_s": r.summary.get("train_wall_s"),
        }
        for r in results
    ]


# A chain strategy's plan from the recipe's teacher: its links and how each link's teacher is made.
Plan = Callable[[Teacher | None, dict[str, Any]], tuple[list[Link], TeacherOf]]
Extra = Callable[[list[LinkResult], DataBundle], dict[str, Any]]


def chain_strategy(
    recipe: Recipe, run_dir: RunDir, resume: bool, what: str, plan: Plan, extra: Extra | None = None
) -> RunOutcome:
    """What born-again and assistant share: data, the recipe's teacher, the chain, a summary with a row per link."""
    acc, done = start(recipe, run_dir, resume)
    if done is not None:
        return RunOutcome(done)
    set_seed(recipe.seed)
    bundle = load_data(recipe)
    require_classification(bundle, f"strategy {what}")
    run_dir.write_json("labels.json", {"labels": bundle.class_names})
    teacher, teacher_info = provide_teacher(recipe, bundle)
    links, teacher_of = plan(teacher, teacher_info)
    results = run_chain(recipe, run_dir, bundle, links, teacher_of, resume)
    final = results[-1]
    summary = {
        **final.summary,
        "name": recipe.name,
        "strategy": recipe.strategy.model_dump(mode="json"),
        "stages": stage_rows(results),
        "teacher": teacher_info,
        **(extra(results, bundle) if extra is not None else {}),
    }
    run_dir.write_json(SUMMARY, summary)
    acc.wait_for_everyone()
    return RunOutcome(summary, student=final.student, teacher=teacher, bundle=bundle)
