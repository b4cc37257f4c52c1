"""`kdforge export`: write a run's student as safetensors, an HF folder or ONNX, checked against PyTorch."""

from __future__ import annotations

from kdforge.export.formats import FORMATS, load_safetensors
from kdforge.export.parity import ParityError
from kdforge.export.run import export_run, summary_lines

__all__ = ["FORMATS", "ParityError", "export_run", "load_safetensors", "summary_lines"]
