"""Causal-LM set-up before training: which vocabulary case a teacher/student pair is, and the teacher that fits it.

identical → the teacher as it is; padded_head → only the rows the tokenizer uses are compared; shared → the teacher
reads the student's text in its own tokens (CrossTokenizerTeacher); disjoint → refused, naming the sizes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from kdforge.adapters import adapter_for
from kdforge.data.austen_lm import load_tokenizer
from kdforge.data.base import DataBundle
from kdforge.errors import ConfigError
from kdforge.lm.vocab import VocabReport, check_alignable, compare_vocabularies, token_map
from kdforge.recipe import Recipe
from kdforge.teachers.base import Teacher, evaluation_model
from kdforge.teachers.live import Live

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def _tokenizer(folder: Path, key: str) -> Any:
    try:
        return load_tokenizer(folder)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"{key}: cannot load the tokenizer in {str(folder)!r}: {' '.join(str(err).split())}"
        ) from None


def teacher_tokenizer_folder(recipe: Recipe) -> Path | None:
    """The folder of the teacher model (its tokenizer), when the recipe names one."""
    model = getattr(recipe.teacher, "model", None)
    path = None if model is None else model.params.get("path")
    if not path:
        return None
    folder = Path(path).expanduser()
    return folder if folder.is_dir() else folder.parent


def align_vocabularies(
    recipe: Recipe, bundle: DataBundle, student: nn.Module, teacher: Teacher | None
) -> tuple[Teacher | None, int | None, VocabReport | None]:
    """(the teacher to train with, the rows a padded head compares, the vocabulary report) for a causal-LM run."""
    network = evaluation_model(teacher)
    folder = teacher_tokenizer_folder(recipe)
    if network is None or folder is None or bundle.tokenizer is None or not adapter_for(student).causal_lm:
        return teacher, None, None
    t_rows = int(network.get_output_embeddings().weight.shape[0])
    head = student.get_output_embeddings() if hasattr(student, "get_output_embeddings") else student.head
    s_rows = int(head.weight.shape[0])
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        if t_rows == s_rows:
            return teacher, None, None  # no tokenizer beside the teacher: the same head size is taken as the same one
        raise ConfigError(
            f"teacher.model.params.path {str(folder)!r} has no tokenizer ({', '.join(TOKENIZER_FILES)}) and its head "
            f"has {t_rows} rows but the student's {s_rows}: expected the teacher's tokenizer files beside its "
            "weights, so that the vocabularies can be aligned"
        )
    s_tok, t_tok = _tokenizer(Path(bundle.tokenizer), "data.params.tokenizer"), _tokenizer(folder, "teacher.model")
    report = compare_vocabularies(t_tok, s_tok, t_rows, s_rows)
    check_alignable(report)
    if report.case == "identical":
        return teacher, None, report
    if report.case == "padded_head":
        return teacher, report.student_tokens, report
    if not isinstance(teacher, Live):
        raise ConfigError(
            f"teacher.kind={getattr(recipe.teacher, 'kind', None)!r}: the teacher's tokenizer ({report.teacher_tokens}"
            f" tokens) differs from the student's ({report.student_tokens}); its signals must be computed on its own "
            "tokens as training runs: use teacher.kind: live"
        )
    from kdforge.lm.cross_teacher import CrossTokenizerTeacher

    mapping = token_map(t_tok, s_tok, t_rows)
    return CrossTokenizerTeacher(teacher, t_tok, s_tok, mapping, s_rows), None, report


def describe(report: VocabReport | None) -> dict[str, Any] | None:
    """The report for summary.json."""
    return None if report is None else report.to_json()
