"""The offline strategy: a frozen teacher (or none) teaches one student on the recipe's budget — one stage."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

from accelerate.utils import set_seed
from torch import nn

from kdforge.adapters import adapter_for
from kdforge.data.base import example_inputs
from kdforge.data.recipe_data import load_data, model_folder
from kdforge.engine.rundir import RunDir
from kdforge.engine.terms import parse_objectives
from kdforge.engine.trainer import get_accelerator
from kdforge.evaluate import model_profile
from kdforge.files import atomic_replace_dir
from kdforge.lm.setup import align_vocabularies
from kdforge.models.hf import is_hf_student, save_hf_folder, tokenizer_folder, tokenizer_name
from kdforge.recipe import Recipe, dump
from kdforge.registry import STRATEGIES
from kdforge.strategies.lm import lm_samples, response_source
from kdforge.strategies.provision import build, loaders, provide_teacher, require_task
from kdforge.strategies.stage import Stage, run_stage
from kdforge.teachers.base import evaluation_model

SUMMARY = "summary.json"


@dataclass
class RunOutcome:
    """A strategy's result: the public summary (written to summary.json) and the objects the report needs."""

    summary: dict[str, Any]
    student: nn.Module | None = None
    teacher: Any = None
    bundle: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def finished(run_dir: RunDir) -> dict[str, Any] | None:
    """The summary of a run folder whose strategy already finished (None when it has not)."""
    path = run_dir.path / SUMMARY
    if not path.is_file():
        return None
    return json.loads(path.read_text())


@STRATEGIES.register("offline")
def offline(recipe: Recipe, run_dir: RunDir, resume: bool = False) -> RunOutcome:
    """Train the student against a frozen teacher; evaluate and profile it; write the run folder."""
    acc = get_accelerator(recipe.train.mixed_precision, recipe.train.grad_accum)
    run_dir.main = run_dir.main and acc.is_main_process
    if resume and (done := finished(run_dir)) is not None:
        return RunOutcome(done)  # a finished variant of a resumed run is kept as it is, never retrained
    if not resume:
        run_dir.write_text("recipe.yaml", dump(recipe))
    set_seed(recipe.seed)
    bundle = load_data(recipe)
    run_dir.write_json("labels.json", {"labels": bundle.class_names})
    terms, _ = parse_objectives(recipe.objectives)
    needed = any(t.objective.needs.teacher for t in terms.values())
    teacher, teacher_info = provide_teacher(recipe, bundle, signals_needed=needed)
    set_seed(recipe.seed)  # the student's initial weights depend on the seed alone, not on what ran before
    student = build(recipe.student, bundle, "student")
    require_task(bundle, student, "`kdforge run`")
    teacher, compare_vocab, vocab = align_vocabularies(recipe, bundle, student, teacher)
    if vocab is not None:
        # Reported before training: which vocabulary case this pair is and how it is handled.
        run_dir.write_json("vocabulary.json", vocab.to_json())
        if acc.is_main_process:
            print(f"vocabulary: {vocab.describe()}", file=sys.stderr)
    train_loader, evals = loaders(recipe, bundle, teacher)
    source = response_source(recipe, bundle, student, teacher)
    stage = Stage(
        students={"student": student},
        teachers={"teacher": teacher} if teacher is not None else {},
        objectives=recipe.objectives,
        train=recipe.train,
        train_loader=train_loader,
        eval_loaders=evals,
        run_dir=run_dir,
        seed=recipe.seed,
        batch_source=source,
        compare_vocab=compare_vocab,
    )
    done = run_stage(stage, resume=resume)
    result, student = done.train, done.student
    kept = result.best if recipe.train.select.mode == "best" and result.best else result.last
    summary: dict[str, Any] = {
        "name": recipe.name,
        "objectives": recipe.objectives,
        "student": recipe.student.model_dump(),
        "world_size": result.world_size,
        "steps": result.steps,
        "epochs": result.epochs,
        "train_wall_s": round(result.wall_s, 3),
        "resumed_from_step": result.resumed_from,
        "best": result.best,
        "last": result.last,
        "history": result.history,
        "test": (kept or {}).get("test"),
        "teacher": teacher_info,
    }
    if vocab is not None:
        summary["vocabulary"] = {**vocab.to_json(), **(teacher.stats() if hasattr(teacher, "stats") else {})}
    if source is not None:
        summary["generation"] = {"source": recipe.responses.source, **source.stats()} if recipe.responses else {}
    if acc.is_main_process and bundle.tokenizer is not None and adapter_for(student).causal_lm:
        summary["samples"] = lm_samples(student, evaluation_model(teacher), bundle)
    if acc.is_main_process and is_hf_student(student):
        # A Hugging Face student leaves the run as a folder `from_pretrained` loads (config, weights, tokenizer).
        name = tokenizer_name(recipe.data.name, dict(recipe.data.params))
        tokenizer = tokenizer_folder(model_folder(recipe, name) if name in ("teacher", "student") else name)
        atomic_replace_dir(lambda tmp: save_hf_folder(student, tmp, tokenizer), run_dir.path / "student_hf")
        summary["hf_folder"] = str(run_dir.path / "student_hf")
    if acc.is_main_process and recipe.profile:
        lm = adapter_for(student).causal_lm
        summary["profile"] = model_profile(student.to("cpu"), example_inputs(bundle.test, 256), 8 if lm else 256)
    run_dir.write_json(SUMMARY, summary)
    acc.wait_for_everyone()
    return RunOutcome(summary, student=student, teacher=teacher, bundle=bundle)
