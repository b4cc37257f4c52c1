"""`kdforge diagnose`: a teacher × student linear-CKA matrix over training batches — which layers represent alike.

The teacher and the student are built as `kdforge run` builds them (the recipe's data, its teacher kind — trained
once and cached when it has no checkpoint — and its student; with ``--run`` the student's weights come from that
run's checkpoint). Both run in eval mode on the first N training batches; the layers (default: each network's
feature stages and its embedding, the input of its classifier head) are recorded and compared with the minibatch
linear CKA of Nguyen et al. 2021 (unbiased HSIC summed over batches: kdforge.evaluate.cka). Writes cka.json and a
heat map cka.png.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from rich.table import Table
from torch import nn

from kdforge.adapters import adapter_for
from kdforge.capture import Recorder
from kdforge.data.recipe_data import load_data
from kdforge.engine.checkpoint import load_checkpoint
from kdforge.engine.rundir import RunDir
from kdforge.engine.trainer import get_accelerator
from kdforge.errors import ConfigError
from kdforge.evaluate.cka import MinibatchCKA
from kdforge.files import atomic_write, readable_dir
from kdforge.models.stages import embedding_path, feature_stages
from kdforge.recipe import Recipe
from kdforge.rerun import run_folders
from kdforge.signals import Needs
from kdforge.strategies.provision import build, loaders, provide_teacher
from kdforge.teachers.base import evaluation_model

METHOD = "minibatch linear CKA, unbiased HSIC (Nguyen et al. 2021)"
TABLE_WIDTH = 80  # the printed matrix fits a terminal of this many columns
ROW_LABEL = 16  # at most this many characters of a teacher layer's path
COL_LABEL = 9  # ... and of a student layer's


def default_layers(model: nn.Module) -> list[str]:
    """A network's feature stages (shallow to deep) and its embedding (the input of its classifier head)."""
    found: list[str] = []
    for finder in (feature_stages, lambda m: [embedding_path(m)]):
        try:
            found += finder(model)
        except ConfigError:
            continue
    return list(dict.fromkeys(found))


def _layers(model: nn.Module, given: list[str] | None, side: str) -> list[str]:
    """The layers to record on one side, each checked to exist (the error names the option)."""
    option = f"--{side}-layers"
    paths = list(dict.fromkeys(given)) if given else default_layers(model)
    if not paths:
        raise ConfigError(f"{option}: the {side} names no feature stages or head; name its layers ({option} a,b)")
    try:
        Recorder(model, paths).remove()
    except ConfigError as err:
        raise ConfigError(f"{option}: {str(err).removeprefix('Recorder: ')}") from None
    return paths


def run_student(run_dir: str | Path) -> Path:
    """The checkpoint folder of a run's student: RUN_DIR/checkpoints/last (a run of variants: name one of them)."""
    folders = run_folders(run_dir)
    if len(folders) != 1:
        names = ", ".join(str(f) for f in folders)
        raise ConfigError(f"--run {str(run_dir)!r} holds {len(folders)} variants; name one of them: {names}")
    checkpoint = readable_dir(folders[0] / "checkpoints" / "last")
    if not checkpoint.is_dir():
        raise ConfigError(f"--run {str(run_dir)!r}: no checkpoints/last in it (did the run train?)")
    return checkpoint


def _student(recipe: Recipe, bundle: Any, run_dir: str | Path | None) -> nn.Module:
    set_seed(recipe.seed)  # as `run`: the student's initial weights depend on the seed alone
    student = build(recipe.student, bundle, "student")
    if run_dir is not None:
        checkpoint = run_student(run_dir)
        try:
            load_checkpoint(checkpoint, student)
        except RuntimeError as err:  # load_state_dict: another architecture than the recipe's student
            first = str(err).split("\n\t")[1] if "\n\t" in str(err) else str(err)
            raise ConfigError(
                f"--run {str(run_dir)!r}: its weights do not fit the recipe's student ({first})"
            ) from None
    return student


def _out_dir(recipe: Recipe, out: str | Path | None, run_dir: str | Path | None) -> RunDir:
    """``--out``, or a new folder under OUTPUT_DIR/diagnose named after the run (or the recipe) and the time."""
    if out is not None:
        return RunDir(Path(out).expanduser())
    name = Path(run_dir).resolve().name if run_dir is not None else recipe.name
    return RunDir.new(Path(recipe.output_dir) / "diagnose", name)


def diagnose(
    recipe: Recipe,
    *,
    student_layers: list[str] | None = None,
    teacher_layers: list[str] | None = None,
    batches: int = 8,
    out: str | Path | None = None,
    run_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Record both networks on ``batches`` training batches; write cka.json and cka.png; return the record."""
    if batches <= 0:
        raise ConfigError(f"--batches {batches}: expected a positive number of training batches")
    if run_dir is not None:
        run_student(run_dir)  # a wrong folder fails before any teacher is trained
    bundle = load_data(recipe)
    teacher, _ = provide_teacher(recipe, bundle)
    network = evaluation_model(teacher)
    if recipe.teacher is None:
        raise ConfigError("teacher: the recipe has none; diagnose compares a teacher network with the student")
    if network is None:
        raise ConfigError(f"teacher.kind={recipe.teacher.kind!r} gives no network to look into; diagnose needs one")
    student = _student(recipe, bundle, run_dir)
    t_paths = _layers(network, teacher_layers, "teacher")
    s_paths = _layers(student, student_layers, "student")
    device = get_accelerator().device
    teacher.to(device)
    student.to(device).eval()
    adapter = adapter_for(student)
    adapter.record(tuple(s_paths))
    cka = MinibatchCKA(t_paths, s_paths)
    train, _ = loaders(recipe, bundle, teacher)
    try:
        with torch.no_grad():
            for i, batch in enumerate(train):
                if i >= batches:
                    break
                moved = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                taught = teacher.signals(moved, Needs(teacher_features=tuple(t_paths)))
                if taught.features is None:
                    raise ConfigError(f"teacher.kind={recipe.teacher.kind!r} returns no intermediate features")
                recorded = adapter(moved).features
                # A teacher with a device of its own (teacher.device) returns its features there.
                cka.update([taught.features[p].to(device) for p in t_paths], [recorded[p] for p in s_paths])
    finally:
        adapter.release()
        teacher.close()
    matrix = cka.value()
    record = {
        "recipe": recipe.name,
        "run": None if run_dir is None else str(run_dir),
        "method": METHOD,
        "batches": cka.batches,
        "samples": cka.samples,
        "teacher_layers": t_paths,
        "student_layers": s_paths,
        # rows: teacher layers, columns: student layers; null where a layer is constant (CKA undefined)
        "cka": [[None if math.isnan(v) else round(float(v), 6) for v in row] for row in matrix.tolist()],
    }
    folder = _out_dir(recipe, out, run_dir)
    folder.write_text("cka.json", json.dumps(record, indent=2) + "\n")
    heat_map(record, folder.path / "cka.png")
    return {**record, "out": str(folder.path)}


# -- output ----------------------------------------------------------------------------------------------------------


def abbreviate(paths: list[str], limit: int) -> list[str]:
    """Paths cut to ``limit`` characters from the left ('…' + their tail); numbered when two tails would clash."""
    cut = [p if len(p) <= limit else "…" + p[-(limit - 1) :] for p in paths]
    if len(set(cut)) == len(cut):
        return cut
    # Two paths share a tail: every label gets its number, so each stays unique.
    out = []
    for i, p in enumerate(paths, 1):
        room = limit - len(f"{i}:")
        out.append(f"{i}:" + (p if len(p) <= room else "…" + p[-(room - 1) :]))
    return out


def _cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def cka_tables(record: dict[str, Any], width: int = TABLE_WIDTH) -> list[Table]:
    """The matrix as rich tables (teacher layers down, student layers across), split to fit ``width`` columns."""
    rows = abbreviate(record["teacher_layers"], ROW_LABEL)
    cols = abbreviate(record["student_layers"], COL_LABEL)
    row_width = max(len("teacher \\ student"), *(len(r) for r in rows))
    # Each column costs its text plus two spaces of padding and one border character.
    per_table, used = [], row_width + 4
    start = 0
    for j, label in enumerate(cols):
        need = max(len(label), 4) + 3
        if used + need > width and j > start:
            per_table.append((start, j))
            start, used = j, row_width + 4
        used += need
    per_table.append((start, len(cols)))
    tables = []
    for k, (lo, hi) in enumerate(per_table):
        part = f" ({k + 1}/{len(per_table)})" if len(per_table) > 1 else ""
        table = Table(title=f"linear CKA{part}", caption=f"{record['samples']} samples, {record['batches']} batches")
        table.add_column("teacher \\ student", no_wrap=True)
        for label in cols[lo:hi]:
            table.add_column(label, justify="right", no_wrap=True)
        for label, values in zip(rows, record["cka"], strict=True):
            table.add_row(label, *(_cell(v) for v in values[lo:hi]))
        tables.append(table)
    return tables


def heat_map(record: dict[str, Any], path: Path) -> Path:
    """Draw the CKA matrix as a PNG heat map (Agg, written atomically)."""
    try:
        # The object interface with the Agg canvas: no window, no change to pyplot's global backend or registry.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ConfigError(f"the CKA heat map needs matplotlib ({err}): pip install matplotlib") from None
    values = [[math.nan if v is None else v for v in row] for row in record["cka"]]
    n_t, n_s = len(values), len(values[0])
    fig = Figure(figsize=(2.5 + 0.7 * n_s, 1.5 + 0.5 * n_t), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="magma", aspect="auto")
    ax.set_xticks(range(n_s), abbreviate(record["student_layers"], 20), rotation=45, ha="right")
    ax.set_yticks(range(n_t), abbreviate(record["teacher_layers"], 24))
    ax.set(xlabel="student layer", ylabel="teacher layer")
    ax.set_title(f"linear CKA — {record['recipe']} ({record['samples']} samples)")
    if n_t * n_s <= 256:
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                if not math.isnan(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    # The temporary name ends in .tmp, so the format cannot come from the suffix.
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path
