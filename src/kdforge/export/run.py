"""`kdforge export RUN_DIR`: rebuild a run's student(s) as `kdforge eval` does, write each, check parity, time it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from kdforge.engine.checkpoint import checkpoint_name
from kdforge.errors import ConfigError
from kdforge.evaluate.model_stats import size_on_disk
from kdforge.export.formats import FORMATS, StudentSpec, Writer
from kdforge.export.inputs import torch_outputs, torch_runner
from kdforge.export.latency import compare_latency
from kdforge.export.parity import PARITY_ROWS, TOLERANCE, check_parity, max_abs_diff, parity_inputs
from kdforge.files import atomic_replace_dir, sealed_json, sha256_file
from kdforge.models.hf import HF_MODELS, check_tokenizer_fits, tokenizer_folder, tokenizer_name
from kdforge.recipe import load_run_recipe, validate
from kdforge.rerun import RunStudent, load_run_student, run_folders

RECORD = "export.json"
LATENCY_ROWS = 256  # real test rows the latency inputs cycle through


def format_writer(fmt: str) -> Writer:
    """The registered writer of ``fmt``; an unknown format names the valid ones."""
    try:
        return FORMATS.get(fmt)
    except ConfigError as err:
        raise ConfigError(f"--format: {err}") from None


def _target(root: Path, folder: Path, fmt: str, out: str | Path | None) -> Path:
    base = Path(out).expanduser() if out is not None else root / "export" / fmt
    target = base if folder == root else base / folder.name
    # The target folder is replaced whole: never a folder that holds anything but an earlier export.
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / RECORD).is_file())):
        raise ConfigError(f"--out: {str(target)!r} exists and is not an earlier export; expected a new or empty folder")
    return target


def _require_hf(folder: Path) -> None:
    # Checked on the recipe, before minutes of data loading: only HF students have an HF folder to write.
    name = validate(load_run_recipe(folder / "recipe.yaml"), source=str(folder / "recipe.yaml")).student.name
    if name not in HF_MODELS:
        raise ConfigError(
            f"--format hf: student {name!r} is not a Hugging Face model; expected a student built with model "
            f"{' or '.join(map(repr, HF_MODELS))} (use --format safetensors or onnx)"
        )


def _spec(loaded: RunStudent) -> StudentSpec:
    recipe, bundle = loaded.recipe, loaded.bundle
    name = tokenizer_name(recipe.data.name, dict(recipe.data.params))
    if name in ("teacher", "student"):  # data.params.tokenizer names the model whose folder holds it
        from kdforge.data.recipe_data import model_folder

        name = model_folder(recipe, name)
    tokenizer = tokenizer_folder(name)
    params = dict(recipe.student.params)
    return StudentSpec(recipe.student.name, params, bundle.num_classes, bundle.input_shape, tokenizer)


def _check_tokens(student: nn.Module, inputs: dict[str, Any]) -> None:
    ids = inputs["input"]
    if not ids.is_floating_point() and ids.numel():
        check_tokenizer_fits(student, int(ids.max()) + 1)


def export_one(folder: Path, fmt: str, checkpoint: str, target: Path) -> dict[str, Any]:
    """Export the student of one run folder into ``target``; returns the record written as export.json."""
    writer = format_writer(fmt)
    loaded = load_run_student(folder, checkpoint)
    student = loaded.student.float().eval()
    inputs = parity_inputs(student, loaded.bundle, PARITY_ROWS)
    _check_tokens(student, inputs)
    spec = _spec(loaded)
    reference = torch_outputs(student, inputs)
    rows = len(reference)
    record: dict[str, Any] = {
        "format": fmt,
        "run": str(folder.resolve()),
        "checkpoint": checkpoint,
        "step": loaded.state.get("step"),
        "student": spec.to_json(),
    }

    def build(tmp: Path) -> None:
        artifact = writer(student, spec, tmp, inputs)
        diff = max_abs_diff(reference, artifact.run(inputs))
        relative = artifact.path.relative_to(tmp)
        check_parity(diff, str(relative) if relative.parts else "the HF folder", rows)
        record["artifact"] = str(target / relative)
        record["parity"] = {"max_abs_diff": diff, "rows": rows, "split": "test", "tolerance": TOLERANCE}
        record.update(artifact.info)
        if artifact.session is not None:
            timed = parity_inputs(student, loaded.bundle, LATENCY_ROWS)
            runners = {"onnxruntime": artifact.run, "pytorch": torch_runner(student)}
            record["latency_ms"] = compare_latency(runners, timed)
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        record["files"] = files
        # Checked by load_export (kdforge eval): a damaged artefact is refused, never evaluated.
        record["sha256"] = {name: sha256_file(tmp / name) for name in files}
        record["size_bytes"] = sum(files.values())
        record["pytorch_state_bytes"] = size_on_disk(student)
        (tmp / RECORD).write_text(sealed_json(record))

    atomic_replace_dir(build, target)
    record["record"] = str(target / RECORD)
    return record


def export_run(
    run_dir: str | Path, fmt: str, checkpoint: str = "last", out: str | Path | None = None
) -> list[dict[str, Any]]:
    """Export every student of ``run_dir`` (the run, or each variant) in ``fmt``; one record per student."""
    format_writer(fmt)  # an unknown format fails before any data is loaded
    checkpoint_name(checkpoint)
    root = Path(run_dir)
    if not root.is_dir():
        raise ConfigError(f"{str(root)!r} does not exist; expected a run folder written by `kdforge run`")
    folders = run_folders(root)
    targets = [_target(root, folder, fmt, out) for folder in folders]
    if fmt == "hf":
        for folder in folders:
            _require_hf(folder)
    return [export_one(folder, fmt, checkpoint, target) for folder, target in zip(folders, targets, strict=True)]


def summary_lines(record: dict[str, Any]) -> list[str]:
    """What the CLI prints for one exported student: artifact, parity, latency side by side, record file."""
    parity = record["parity"]
    lines = [
        f"exported {record['format']}: {record['artifact']} ({record['size_bytes'] / 1024:.1f} KiB)",
        f"parity: max |Δ| = {parity['max_abs_diff']:.3g} on {parity['rows']} test rows (tolerance {TOLERANCE:g})",
    ]
    for batch, times in record.get("latency_ms", {}).items():
        ort_ms, torch_ms = times["onnxruntime"], times["pytorch"]
        lines.append(
            f"latency {batch.replace('_', ' ')}: onnxruntime {ort_ms:.3f} ms, pytorch {torch_ms:.3f} ms "
            f"({torch_ms / ort_ms:.2f}x) per forward, median"
        )
    lines.append(f"written: {record['record']}")
    return lines
