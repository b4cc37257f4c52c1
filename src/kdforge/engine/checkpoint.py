"""Checkpoints: weights and optimizer tensors as safetensors, everything else as JSON; atomic and verified."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from kdforge.errors import ConfigError, IntegrityError
from kdforge.files import atomic_replace_dir, read_json_record, readable_dir, sealed_json, sha256_file
from kdforge.weights import read_safetensors

MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
CHECKPOINTS = ("last", "best")  # the checkpoint folders a run keeps: RUN/checkpoints/<name>


def checkpoint_name(value: str) -> str:
    """``value`` if it names a run's checkpoint (last or best); it becomes a path part, so nothing else is taken."""
    if value not in CHECKPOINTS:
        raise ConfigError(f"--checkpoint {value!r}: expected one of {', '.join(CHECKPOINTS)}")
    return value


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or strided storage; clones are cheap next to an epoch of training.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for pid, slots in state["state"].items():
        plain["state"][str(pid)] = {}
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value
            else:
                plain["state"][str(pid)][key] = value
    return tensors, plain


def save_model(model: nn.Module, path: str | Path) -> None:
    """Write a model's state_dict to one safetensors file (not atomic on its own: use inside a staged dir)."""
    save_file(_contiguous(model.state_dict()), str(path))


def save_checkpoint(
    target: str | Path,
    model: nn.Module,
    state: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Write model (+ optimizer) tensors and a JSON state with their sha256, replacing ``target`` atomically."""

    def build(tmp: Path) -> None:
        save_model(model, tmp / MODEL_FILE)
        files = {MODEL_FILE: sha256_file(tmp / MODEL_FILE)}
        record = dict(state)
        if optimizer is not None:
            tensors, plain = _flatten_optimizer(optimizer)
            save_file(_contiguous(tensors), str(tmp / OPTIM_FILE))
            files[OPTIM_FILE] = sha256_file(tmp / OPTIM_FILE)
            record["optimizer"] = plain
        record["files"] = files
        (tmp / STATE_FILE).write_text(sealed_json(record, default=str))

    atomic_replace_dir(build, target)


def read_state(directory: str | Path) -> dict[str, Any]:
    """The JSON state of a checkpoint, after checking every file against its recorded sha256."""
    d = readable_dir(directory)
    # What to do about a damaged checkpoint: never load it; another checkpoint or a fresh start are the ways on.
    fix = (
        f"it is not loaded: evaluate the other checkpoint (--checkpoint best), or delete {str(d)!r} and "
        "resume (`kdforge run --resume`) to redo the run from its start"
    )
    state_path = d / STATE_FILE
    if not state_path.is_file():
        raise IntegrityError(f"checkpoint {str(d)!r} has no {STATE_FILE}; {fix}")
    state = read_json_record(state_path, fix, "checkpoint state")
    files = state.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise IntegrityError(
            f"checkpoint {str(d)!r}: {STATE_FILE} has no 'files' mapping of sha256s; it is not verifiable; {fix}"
        )
    # Every file is verified: one the state does not record (the weights included) could be anything.
    unrecorded = sorted(({MODEL_FILE} | {p.name for p in d.iterdir() if p.name != STATE_FILE}) - set(files))
    if unrecorded:
        raise IntegrityError(f"checkpoint {str(d)!r}: {unrecorded[0]!r} is not recorded in {STATE_FILE} 'files'; {fix}")
    for name, digest in files.items():
        path = d / name
        # A recorded name must be a plain file of this folder, never a path leading out of it.
        if Path(name).name != name or not path.is_file() or sha256_file(path) != digest:
            raise IntegrityError(f"checkpoint file {str(path)!r} is missing or does not match its sha256; {fix}")
    return state


def load_checkpoint(directory: str | Path, model: nn.Module) -> dict[str, Any]:
    """Verify and load weights into ``model``; returns the JSON state."""
    state = read_state(directory)
    path = readable_dir(directory) / MODEL_FILE
    weights = read_safetensors(path, f"checkpoint {str(readable_dir(directory))!r}")
    model.load_state_dict(weights)
    return state
