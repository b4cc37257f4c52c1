"""Resumable training state: every trainable module, optimizer, scheduler, RNGs, data position and teacher state.

Written as one checkpoint folder (safetensors for tensors, JSON for the rest, a sha256 per file) and swapped in
atomically, so a kill at any moment leaves the previous complete state. Restoring it at the same optimizer step makes
the rest of a CPU run bit-identical to a run that was never stopped.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from kdforge.engine.checkpoint import MODEL_FILE, STATE_FILE, read_state
from kdforge.errors import IntegrityError
from kdforge.files import atomic_replace_dir, readable_dir, sealed_json, sha256_file

MODULES_FILE = "modules.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
TEACHERS_FILE = "teachers.safetensors"
RNG_FILE = "rng.safetensors"


def _cpu(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    # safetensors refuses shared or strided storage.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def _prefixed(groups: Mapping[str, Mapping[str, Tensor]]) -> dict[str, Tensor]:
    return {f"{group}/{key}": value for group, tensors in groups.items() for key, value in tensors.items()}


def _grouped(flat: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    out: dict[str, dict[str, Tensor]] = {}
    for key, value in flat.items():
        group, _, name = key.partition("/")
        out.setdefault(group, {})[name] = value
    return out


def optimizer_parts(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """An optimizer's state split into tensors (for safetensors) and plain values (for JSON)."""
    state = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    plain: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for pid, slots in state["state"].items():
        plain["state"][str(pid)] = {}
        for key, value in slots.items():
            if isinstance(value, Tensor):
                tensors[f"{pid}.{key}"] = value
            else:
                plain["state"][str(pid)][key] = value
    return tensors, plain


def optimizer_state(tensors: Mapping[str, Tensor], plain: Mapping[str, Any]) -> dict[str, Any]:
    """Rebuild an optimizer state_dict from ``optimizer_parts``."""
    state: dict[int, dict[str, Any]] = {int(pid): dict(slots) for pid, slots in plain["state"].items()}
    for key, value in tensors.items():
        pid, _, slot = key.partition(".")
        state.setdefault(int(pid), {})[slot] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def rng_state() -> tuple[dict[str, Tensor], dict[str, Any]]:
    """torch (CPU and CUDA), numpy and Python RNG states: tensors and JSON parts."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.uint32).astype(np.int64))
    py = random.getstate()
    plain = {"numpy": [kind, int(pos), int(has_gauss), float(gauss)], "python": [py[0], list(py[1]), py[2]]}
    return tensors, plain


def set_rng_state(tensors: Mapping[str, Tensor], plain: Mapping[str, Any]) -> None:
    """Restore what ``rng_state`` captured."""
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, pos, has_gauss, gauss = plain["numpy"]
    np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = plain["python"]
    random.setstate((version, tuple(internal), gauss_next))


def save_training_state(
    target: str | Path,
    modules: Mapping[str, nn.Module],
    state: Mapping[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    teachers: Mapping[str, Mapping[str, Tensor]] | None = None,
    rng: tuple[dict[str, Tensor], dict[str, Any]] | None = None,
) -> None:
    """Write a resumable checkpoint to ``target`` atomically; ``model.safetensors`` is the first module alone."""

    def build(tmp: Path) -> None:
        first = next(iter(modules.values()))
        groups = {name: m.state_dict() for name, m in modules.items()}
        files = {MODEL_FILE: _cpu(first.state_dict()), MODULES_FILE: _cpu(_prefixed(groups))}
        record = dict(state)
        if optimizer is not None:
            tensors, plain = optimizer_parts(optimizer)
            files[OPTIMIZER_FILE] = _cpu(tensors)
            record["optimizer"] = plain
        if teachers:
            files[TEACHERS_FILE] = _cpu(_prefixed(teachers))
        if rng is not None:
            files[RNG_FILE] = _cpu(rng[0])
            record["rng"] = rng[1]
        for name, tensors in files.items():
            save_file(tensors, str(tmp / name))
        record["modules"] = list(modules)
        record["files"] = {name: sha256_file(tmp / name) for name in files}
        (tmp / STATE_FILE).write_text(sealed_json(record, default=str))

    atomic_replace_dir(build, target)


def load_training_state(directory: str | Path) -> tuple[dict[str, Any], dict[str, dict[str, Tensor]]]:
    """The verified JSON state and every tensor file of a checkpoint, grouped (modules, optimizer, teachers, rng)."""
    state = read_state(directory)
    folder = readable_dir(directory)
    if MODULES_FILE not in state.get("files", {}):
        raise IntegrityError(
            f"checkpoint {str(folder)!r} holds weights only (no training state); it cannot be resumed from"
        )
    tensors = {name: load_file(str(folder / name)) for name in state["files"] if name != MODEL_FILE}
    return state, tensors


def restore_modules(modules: Mapping[str, nn.Module], tensors: Mapping[str, Tensor]) -> None:
    """Load ``modules.safetensors`` into the named modules; every module must be present."""
    groups = _grouped(tensors)
    for name, module in modules.items():
        if name not in groups:
            raise IntegrityError(f"checkpoint has no weights for module {name!r} (it holds {sorted(groups)})")
        module.load_state_dict(groups[name])


def teacher_groups(tensors: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """Per-teacher tensors of ``teachers.safetensors``."""
    return _grouped(tensors)
