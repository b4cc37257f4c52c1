"""Check a model's output count against the data's label set (for models whose outputs are fixed by a file)."""

from __future__ import annotations

from collections.abc import Sequence

from kdforge.errors import ConfigError


def preview(names: Sequence[str], limit: int = 10) -> str:
    """The first ``limit`` labels, comma-separated, with how many more there are."""
    shown = ", ".join(map(str, names[:limit]))
    return shown + (f", … (+{len(names) - limit} more)" if len(names) > limit else "")


def check_label_count(model_outputs: int, class_names: Sequence[str], where: str) -> None:
    """Refuse a model (a checkpoint, a Hugging Face folder) whose output count differs from the number of labels."""
    if model_outputs != len(class_names):
        raise ConfigError(
            f"{where}: the model has {model_outputs} outputs but the data has {len(class_names)} labels "
            f"({preview(class_names)}); use a model with {len(class_names)} outputs or set data.params.labels"
        )
