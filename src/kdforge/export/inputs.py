"""What an exported student takes and the PyTorch call it must match: ``kdforge.evaluate.inputs``, used by export."""

from __future__ import annotations

from kdforge.evaluate.inputs import INPUT, MASK, ExportModule, student_inputs, takes_mask, torch_outputs, torch_runner

__all__ = ["INPUT", "MASK", "ExportModule", "student_inputs", "takes_mask", "torch_outputs", "torch_runner"]
