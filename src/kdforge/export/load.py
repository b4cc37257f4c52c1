"""Read back a folder written by `kdforge export` (its export.json and artifact) as a runner over named inputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdforge.errors import ConfigError, IntegrityError
from kdforge.export.formats import load_safetensors
from kdforge.export.inputs import INPUT, MASK, student_inputs, torch_runner
from kdforge.export.parity import as_tensor
from kdforge.files import read_json_record, sha256_file
from kdforge.models.hf import HF_MODELS, load_hf_folder

RECORD = "export.json"


@dataclass
class LoadedExport:
    """An exported student read back from disk: its record, a runner, and the PyTorch model where there is one."""

    folder: Path
    record: dict[str, Any]
    run: Callable[[dict[str, Tensor]], Tensor]
    model: nn.Module | None  # safetensors and hf: the model read back; onnx: None (an onnxruntime session runs it)
    input_names: list[str]

    @property
    def size_bytes(self) -> int:
        """Bytes of the artifact's files (export.json excluded), as the export recorded them."""
        return int(self.record.get("size_bytes") or sum(p.stat().st_size for p in self._files()))

    def _files(self) -> list[Path]:
        return [p for p in self.folder.rglob("*") if p.is_file() and p.name != RECORD]

    def inputs(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The artifact's named inputs for a data batch: the mask its student was evaluated with, where it takes one."""
        if self.model is not None:
            return student_inputs(self.model, batch)
        x = torch.as_tensor(batch["input"])
        named = {INPUT: x.float() if x.is_floating_point() else x}
        if MASK in self.input_names:
            mask = batch.get(MASK)
            if mask is None:  # as export.inputs.student_inputs: HF students attended everywhere, kdforge's to non-pad
                hf = self.record.get("student", {}).get("model") in HF_MODELS
                mask = torch.ones_like(x) if hf else x != 0
            named[MASK] = torch.as_tensor(mask).long()
        return named


# The artefact files an export folder holds besides export.json, by format: a folder with one of them and no
# export.json is an export whose record was lost, not some other kind of folder.
_ARTEFACTS = ("model.onnx", "model.json", "config.json")
FIX = "it is not used: export the run again (`kdforge export RUN --format ...`)"


def is_export_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by `kdforge export` (export.json, or an artefact that lost it)."""
    path = Path(path)
    if (path / RECORD).is_file():
        return True
    return not (path / "recipe.yaml").exists() and any((path / name).is_file() for name in _ARTEFACTS)


def read_record(folder: str | Path) -> dict[str, Any]:
    """The export.json of ``folder``, seal checked; a malformed one is an error naming the file and the missing key."""
    path = Path(folder) / RECORD
    if not path.is_file():
        raise IntegrityError(f"export record {str(path)!r} is missing; {FIX}")
    record = read_json_record(path, FIX, "export record")
    for key in ("format", "run", "checkpoint"):
        if key not in record:
            raise ConfigError(f"{str(path)!r} has no {key!r}; expected a record written by `kdforge export`")
    return record


def verify_files(folder: Path, record: dict[str, Any]) -> None:
    """Check every artefact file against the sha256 export.json records (exports older than that: nothing to check)."""
    for name, digest in (record.get("sha256") or {}).items():
        path = folder / name
        # A recorded name stays inside the folder: never a path leading out of it.
        inside = not Path(name).is_absolute() and ".." not in Path(name).parts
        if not inside or not path.is_file() or sha256_file(path) != digest:
            raise IntegrityError(
                f"export file {str(path)!r} is missing or does not match its sha256 in {RECORD}; {FIX}"
            )


def _onnx_runner(path: Path) -> tuple[Callable[[dict[str, Tensor]], Tensor], list[str]]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("evaluating an ONNX export needs `pip install onnxruntime` (kdforge[export])") from None
    if not path.is_file():
        raise ConfigError(f"{str(path)!r} does not exist; the export folder is incomplete (export it again)")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(inputs: dict[str, Tensor]) -> Tensor:
        feed = {name: inputs[name].numpy() for name in names if name in inputs}
        return as_tensor(session.run(["logits"], feed)[0])

    return run, names


def load_export(folder: str | Path) -> LoadedExport:
    """Read the artifact of an export folder back: onnx through onnxruntime, safetensors and hf as PyTorch models."""
    folder = Path(folder)
    record = read_record(folder)
    verify_files(folder, record)
    fmt = record["format"]
    if fmt == "onnx":
        run, names = _onnx_runner(folder / "model.onnx")
        return LoadedExport(folder, record, run, None, names)
    if fmt == "safetensors":
        model = load_safetensors(folder)
    elif fmt == "hf":
        model = load_hf_folder(folder).eval()
    else:
        raise ConfigError(f"{str(folder / RECORD)!r}: unknown format {fmt!r}; expected hf, onnx or safetensors")
    model = model.float().eval()
    return LoadedExport(folder, record, torch_runner(model), model, [INPUT])
