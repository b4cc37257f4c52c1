"""Export formats, one registered function each: write the student into a folder, then read it back from disk.

A format function returns an ``Artifact``: the file it wrote and a runner over the copy read back from disk
(a fresh model, a ``from_pretrained`` model or an onnxruntime session), which the parity check compares with
the PyTorch student.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from kdforge.engine.checkpoint import save_model
from kdforge.errors import ConfigError
from kdforge.export.inputs import ExportModule, torch_runner
from kdforge.export.parity import as_tensor
from kdforge.models import build_model
from kdforge.models.hf import is_hf_student, load_hf_folder, save_hf_folder
from kdforge.registry import Registry
from kdforge.weights import read_safetensors

SPEC_FILE = "model.json"
ONNX_OPSET = 18  # run by onnxruntime >= 1.14; the dynamo exporter's own default
_NOT_STUDENT = ("connector", "teacher")  # prefixes of modules a distillation adds around the student


@dataclass(frozen=True)
class StudentSpec:
    """What rebuilds the student: registered model name, params, class count, input shape; and its tokenizer."""

    name: str
    params: dict[str, Any]
    num_classes: int
    input_shape: tuple[int, ...]
    tokenizer: Path | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON record written next to safetensors weights."""
        return {
            "model": self.name,
            "params": self.params,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
        }


@dataclass
class Artifact:
    """A written artifact and a runner over the copy read back from disk."""

    path: Path
    run: Callable[[dict[str, Tensor]], Tensor]
    info: dict[str, Any] = field(default_factory=dict)
    session: Any = None  # the onnxruntime session, for the latency comparison


Writer = Callable[[nn.Module, StudentSpec, Path, dict[str, Tensor]], Artifact]
FORMATS: Registry[Writer] = Registry("export format")


def student_state(student: nn.Module) -> dict[str, Tensor]:
    """The student's own state_dict; a key of a connector or teacher would mean more than the student is written."""
    state = student.state_dict()
    stray = [k for k in state if k.startswith(_NOT_STUDENT)]
    if stray:
        raise RuntimeError(f"the exported state holds {stray[0]!r}: only the student's own weights may be exported")
    return state


def load_safetensors(folder: str | Path) -> nn.Module:
    """Rebuild a student exported with ``--format safetensors`` from its model.json and model.safetensors."""
    folder = Path(folder)
    try:
        spec = json.loads((folder / SPEC_FILE).read_text())
        model = build_model(spec["model"], spec["num_classes"], tuple(spec["input_shape"]), **spec["params"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ConfigError(f"{str(folder / SPEC_FILE)!r} is not a kdforge model record ({err})") from None
    model.load_state_dict(read_safetensors(folder / "model.safetensors", f"export {str(folder)!r}"))
    return model.eval()


@FORMATS.register("safetensors")
def write_safetensors(student: nn.Module, spec: StudentSpec, folder: Path, example: dict[str, Tensor]) -> Artifact:
    """``model.safetensors`` (the student's state_dict) + ``model.json`` (how to rebuild it)."""
    student_state(student)
    save_model(student, folder / "model.safetensors")
    (folder / SPEC_FILE).write_text(json.dumps(spec.to_json(), indent=2) + "\n")
    fresh = load_safetensors(folder)
    return Artifact(folder / "model.safetensors", torch_runner(fresh))


@FORMATS.register("hf")
def write_hf(student: nn.Module, spec: StudentSpec, folder: Path, example: dict[str, Tensor]) -> Artifact:
    """A Hugging Face folder (config.json, model.safetensors, kdforge's head, tokenizer) read back by transformers."""
    if not is_hf_student(student):
        raise ConfigError(
            f"--format hf: student {spec.name!r} is not a Hugging Face model; expected a student built with "
            "model 'hf' or 'sentence_transformers' (use --format safetensors or onnx)"
        )
    student_state(student)
    save_hf_folder(student, folder, spec.tokenizer)
    fresh = load_hf_folder(folder).eval()
    return Artifact(folder, torch_runner(fresh))


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    # The exporter logs missing optional vision ops and warns about tracing details; none concern the user.
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _onnx_export(module: nn.Module, example: dict[str, Tensor], path: Path, dynamo: bool) -> None:
    import torch
    from torch.export import Dim

    names = list(example)
    tokens = not example["input"].is_floating_point()
    axes = {name: ({0: "batch", 1: "sequence"} if tokens else {0: "batch"}) for name in names}
    common: dict[str, Any] = {
        "input_names": names,
        "output_names": ["logits"],
        "opset_version": ONNX_OPSET,
        "verbose": False,
    }
    if dynamo:
        shapes = {name: {i: Dim.DYNAMIC for i in axis} for name, axis in axes.items()}
        big = sum(p.numel() * p.element_size() for p in module.parameters()) > 1_500_000_000
        torch.onnx.export(
            module, tuple(example.values()), str(path), dynamo=True, dynamic_shapes=shapes, external_data=big, **common
        )
    else:
        axes["logits"] = {0: "batch"}
        torch.onnx.export(module, tuple(example.values()), str(path), dynamo=False, dynamic_axes=axes, **common)


@FORMATS.register("onnx")
def write_onnx(student: nn.Module, spec: StudentSpec, folder: Path, example: dict[str, Tensor]) -> Artifact:
    """``model.onnx`` with a dynamic batch axis (and sequence axis for token ids), read back by onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("--format onnx needs `pip install onnx onnxruntime onnxscript` (kdforge[export])") from None
    student_state(student)
    module = ExportModule(student).eval()
    path = folder / "model.onnx"
    exporter = "dynamo"
    with _quiet_exporter():
        try:
            _onnx_export(module, example, path, dynamo=True)
        except Exception as err:  # the dynamo exporter rejects some graphs the TorchScript one still takes
            exporter = f"torchscript (dynamo failed: {' '.join(str(err).split())[:200]})"
            for stale in folder.glob("model.onnx*"):
                stale.unlink()
            _onnx_export(module, example, path, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(inputs: dict[str, Tensor]) -> Tensor:
        feed = {name: inputs[name].numpy() for name in names if name in inputs}
        return as_tensor(session.run(["logits"], feed)[0])

    info = {"opset": ONNX_OPSET, "exporter": exporter, "inputs": names}
    return Artifact(path, run, info, session)
