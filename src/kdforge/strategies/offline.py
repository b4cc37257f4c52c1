"""The offline strategy: a frozen teacher (or none) teaches one student on the recipe's budget — one stage."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from accelerate.utils import set_seed

from kdforge import progress
from kdforge.adapters import adapter_for
from kdforge.data.base import DataBundle, example_inputs
from kdforge.data.recipe_data import load_data, model_folder
from kdforge.engine.rundir import RunDir
from kdforge.engine.terms import parse_objectives
from kdforge.evaluate import model_profile
from kdforge.files import atomic_replace_dir
from kdforge.lm.setup import align_vocabularies
from kdforge.models.hf import is_hf_student, save_hf_folder, tokenizer_folder, tokenizer_name
from kdforge.objectives.layers import check_student_paths
from kdforge.recipe import Recipe
from kdforge.strategies.base import strategy
from kdforge.strategies.common import SUMMARY, RunOutcome, start, train_summary
from kdforge.strategies.lm import lm_samples, response_source
from kdforge.strategies.provision import build, loaders, provide_teacher, require_task
from kdforge.strategies.stage import Stage, run_stage
from kdforge.teachers.base import evaluation_model


@strategy("offline")
def offline(recipe: Recipe, run_dir: RunDir, resume: bool = False) -> RunOutcome:
    """Train the student against a frozen teacher; evaluate and profile it; write the run folder."""
    return distil(recipe, run_dir, resume)


def distil(
    recipe: Recipe,
    run_dir: RunDir,
    resume: bool = False,
    *,
    transform: Any = None,
    train_data: DataBundle | None = None,
) -> RunOutcome:
    """One frozen-teacher stage; ``transform(batch, step)`` rewrites each training batch (mixup), ``train_data``
    replaces the training inputs (unlabeled or out-of-domain data; evaluation stays on the recipe's data)."""
    acc, done = start(recipe, run_dir, resume)
    if done is not None:
        return RunOutcome(done)  # a finished variant of a resumed run is kept as it is, never retrained
    set_seed(recipe.seed)
    bundle = load_data(recipe)
    run_dir.write_json("labels.json", {"labels": bundle.class_names})
    terms, _ = parse_objectives(recipe.objectives)
    if any(t.objective.needs.student_features for t in terms.values()):
        # A misspelt student layer is reported now, not after the teacher has been trained.
        check_student_paths(terms, build(recipe.student, bundle, "student"))
    # A term with a source needs the teacher's signals (an automatic layer map names no feature until resolved).
    needed = any(t.source is not None for t in terms.values())
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
    trained_on = bundle if train_data is None else dataclasses.replace(bundle, train=train_data.train)
    train_loader, evals = loaders(recipe, trained_on, teacher)
    source = transform if transform is not None else response_source(recipe, bundle, student, teacher)
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
    summary = train_summary(recipe, result, teacher_info)
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
        large = 8 if adapter_for(student).causal_lm else 256
        with progress.status(f"profiling the student {recipe.name} (size, CPU latency at batch 1 and {large})"):
            summary["profile"] = model_profile(student.to("cpu"), example_inputs(bundle.test, 256), large)
    run_dir.write_json(SUMMARY, summary)
    acc.wait_for_everyone()
    return RunOutcome(summary, student=student, teacher=teacher, bundle=bundle)
