"""Turn the collected runs into the report's sections: results, trade-offs, curves, calibration, errors, recipes."""

from __future__ import annotations

import math
from typing import Any

from kdforge.reporting import plots
from kdforge.reporting.collect import RunData
from kdforge.reporting.columns import CLASSIFICATION_COLUMNS, LM_COLUMNS, headings
from kdforge.reporting.document import Code, Document, Figure, Paragraph, Section, Table, cell
from kdforge.reporting.rows import model_rows

TRAIN_FIRST = ("loss",)
TRAIN_LAST = ("lr",)
SKIP = {"split", "step", "epoch", "n", "tokens"}


def build_document(runs: list[RunData], checkpoint: str) -> Document:
    """Every section of the report for ``runs`` (each evaluated at ``checkpoint``)."""
    title = "kdforge report — " + ", ".join(r.name for r in runs)
    sections = [
        _results(runs, checkpoint),
        *_pareto(runs),
        _curves(runs),
        _reliability(runs),
        _confusion(runs),
        *_language_models(runs),
        *_teaching(runs),
        _recipes(runs),
    ]
    return Document(title, [s for s in sections if s.blocks])


def _label(run: RunData, model: str, runs: list[RunData]) -> str:
    """A model's name in plots: prefixed by its run folder when the report compares several runs."""
    return f"{run.name}/{model}" if len(runs) > 1 else model


def _results(runs: list[RunData], checkpoint: str) -> Section:
    section = Section("Results")
    for kind, columns in (("classification", CLASSIFICATION_COLUMNS), ("lm", LM_COLUMNS)):
        rows = [r for run in runs if run.kind == kind for r in model_rows(run)]
        if not rows:
            continue
        heads = ["run", "model", *headings(columns, [r["batch_size"] for r in rows if r["batch_size"] is not None])]
        cells = [[r["run"], r["model"], *(cell(k, r[k]) for k, _ in columns)] for r in rows]
        section.blocks.append(Table(heads, cells, role="results"))
    section.blocks.append(
        Paragraph(
            f"Test split, {checkpoint} checkpoint. Agreement is top-1 agreement with the run's teacher and KL is "
            "KL(teacher‖student) (per token for language models); ECE uses 15 confidence bins; Brier is the mean "
            "squared error of the probabilities against the one-hot label; latency is CPU time per sample (sequence) "
            "at batch 1 (median and 95th percentile of repeats) and at batch N (median), throughput at batch N."
        )
    )
    section.blocks += [Paragraph(f"{run.name}: {note}") for run in runs for note in run.notes]
    return section


def _pareto(runs: list[RunData]) -> list[Section]:
    sections = []
    for kind, score, higher, label in (
        ("classification", "accuracy", True, "test accuracy"),
        ("lm", "perplexity", False, "test perplexity (lower is better)"),
    ):
        rows = [(run, r) for run in runs if run.kind == kind for r in model_rows(run)]
        for cost, xlabel, slug in (
            ("latency_ms_b1", "CPU latency at batch 1 (ms)", "latency"),
            ("size_bytes", "size on disk (bytes)", "size"),
        ):
            points = [
                (_label(run, r["model"], runs), float(r[cost]), float(r[score]))
                for run, r in rows
                if finite(r[cost]) and finite(r[score])
            ]
            if not points:
                continue
            what = "latency" if slug == "latency" else "size"
            title = f"{'Accuracy' if higher else 'Perplexity'} vs {what}"
            png = plots.pareto_plot(points, xlabel, label, higher)
            caption = f"{title}: the red step line joins the models no other model beats on both axes."
            blocks: list[Any] = [Figure(f"pareto-{slug}-{kind}.png", caption, png)]
            busy = [_label(run, r["model"], runs) for run, r in rows if r["busy"]]
            if slug == "latency" and busy:
                blocks.append(Paragraph(_busy_note(busy)))
            sections.append(Section(title, blocks))
    return sections


def _busy_note(models: list[str]) -> str:
    """Which models' latencies were timed while their process got too little of a CPU."""
    return (
        f"Latencies flagged busy (the process got too little of a CPU while timed; other work was running): "
        f"{', '.join(models)}. Their points may sit further right than the models would on an idle machine."
    )


def _curve_panels(run: RunData, runs: list[RunData]) -> dict[str, plots.Series]:
    """Panel title -> line label -> (steps, values) over every student's training and evaluation records."""
    train: dict[str, plots.Series] = {}
    evals: dict[str, plots.Series] = {}
    for student in run.students:
        for source, records in student.logs.items():
            label = _label(run, student.name if not source else f"{student.name}/{source}", runs)
            if source and len(run.students) == 1:
                label = _label(run, source, runs)
            for rec in records:
                split = rec.get("split", "train")
                step = rec.get("step")
                if step is None:
                    continue
                for key, value in rec.items():
                    if key in SKIP or not isinstance(value, int | float) or isinstance(value, bool):
                        continue
                    panel = key if split == "train" else f"{split}/{key}"
                    target = train if split == "train" else evals
                    xs, ys = target.setdefault(panel, {}).setdefault(label, ([], []))
                    xs.append(float(step))
                    ys.append(float(value))
    ordered = sorted(train, key=_train_order) + sorted(evals, key=_eval_order)
    return {k: train.get(k) or evals[k] for k in ordered}


def _train_order(key: str) -> tuple[int, str]:
    if key in TRAIN_FIRST:
        return (0, key)
    if key in TRAIN_LAST:
        return (4, key)
    return (1 if key.startswith("term/") else 2 if key.startswith("weighted/") else 3, key)


def _eval_order(key: str) -> tuple[int, str]:
    split = key.split("/", 1)[0]
    return ({"val": 0, "test": 1}.get(split, 2), key)


def _curves(runs: list[RunData]) -> Section:
    section = Section("Learning curves")
    for i, run in enumerate(runs, 1):
        panels = _curve_panels(run, runs)
        if not panels:
            section.blocks.append(Paragraph(f"{run.name}: no metrics.jsonl"))
            continue
        caption = (
            f"{run.name}: every logged quantity against the optimizer step — the loss, each objective term before "
            "(term/) and after (weighted/) its weight, the learning rate, then each evaluation split's metrics."
        )
        section.blocks.append(Figure(f"curves-{i}.png", caption, plots.learning_curves(panels)))
    return section


def _models(run: RunData, key: str) -> dict[str, Any]:
    """``{model: entry[key]}`` for the record's models that have a value for ``key``."""
    if run.record is None:
        return {}
    return {name: m[key] for name, m in run.record["models"].items() if m.get(key)}


def _reliability(runs: list[RunData]) -> Section:
    section = Section("Reliability diagrams")
    for i, run in enumerate(runs, 1):
        models = _models(run, "reliability")
        if models:
            caption = f"{run.name}: accuracy per confidence bin (bars) against the diagonal of perfect calibration."
            section.blocks.append(Figure(f"reliability-{i}.png", caption, plots.reliability_diagrams(models)))
    return section


def _confusion(runs: list[RunData]) -> Section:
    section = Section("Confusion matrices")
    for i, run in enumerate(runs, 1):
        models = _models(run, "confusion")
        if not models:
            continue
        size = len(next(iter(models.values())))
        names = run.class_names if run.class_names and len(run.class_names) == size else [str(c) for c in range(size)]
        caption = f"{run.name}: each row is a true class, normalised to sum to 1 (the share predicted as each class)."
        section.blocks.append(Figure(f"confusion-{i}.png", caption, plots.confusion_matrices(models, names)))
    return section


def _language_models(runs: list[RunData]) -> list[Section]:
    kl = Section("KL per position")
    samples = Section("Greedy samples")
    for i, run in enumerate(runs, 1):
        if run.kind != "lm":
            continue
        series = {_label(run, n, runs): v for n, v in _models(run, "kl_per_position").items()}
        if series:
            caption = f"{run.name}: KL(teacher‖student) per target token, by position in the sequence."
            kl.blocks.append(Figure(f"kl-position-{i}.png", caption, plots.kl_per_position(series)))
        rows = [
            [_label(run, s.name, runs), item.get("prompt", ""), item.get("student", ""), item.get("teacher") or "–"]
            for s in run.students
            for item in s.summary.get("samples") or []
        ]
        if rows:
            samples.blocks.append(Table(["model", "prompt", "student", "teacher"], rows))
    return [kl, samples]


def _teaching(runs: list[RunData]) -> list[Section]:
    section = Section("Teaching rounds")
    for i, run in enumerate(runs, 1):
        for j, student in enumerate(run.students, 1):
            rounds = student.summary.get("rounds")
            if not rounds:
                continue
            label = _label(run, student.name, runs)
            png = plots.teaching_rounds(rounds, label)
            caption = f"{label}: dev and test accuracy after each round, and the examples the teacher added after it."
            section.blocks.append(Figure(f"rounds-{i}-{j}.png", caption, png))
            section.blocks.append(Table(["round", "train size", "dev", "test accuracy", "added", "stopped"], [
                [str(r.get("round")), str(r.get("train_size", "–")), cell("dev", r.get("dev")),
                 cell("test_accuracy", (r.get("test") or {}).get("accuracy")), str(r.get("added") or 0),
                 str(r.get("stopped") or "")]
                for r in rounds
            ]))  # fmt: skip
            best = student.summary.get("best_round")
            if best is not None:
                section.blocks.append(Paragraph(f"{label}: the student kept is round {best}'s (best on dev)."))
    return [section]


def _recipes(runs: list[RunData]) -> Section:
    section = Section("Resolved recipes")
    for run in runs:
        section.blocks.append(Code(f"{run.name}/recipe.yaml", run.recipe_text))
        if run.objectives_text:
            section.blocks.append(Code(f"{run.name}: objectives.json (what automatic maps resolved to)",
                                       run.objectives_text))  # fmt: skip
    return section


def finite(value: Any) -> bool:
    """Whether ``value`` is a real, finite number (plots skip the rest)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
