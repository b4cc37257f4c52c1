"""The Teacher seam: anything that turns a batch into signals, identified by a fingerprint."""

from __future__ import annotations

import hashlib
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from kdforge.errors import ConfigError
from kdforge.signals import Needs, TeacherOutput


@runtime_checkable
class Teacher(Protocol):
    """A source of knowledge about inputs: live, cached, served, ensemble or EMA."""

    fingerprint: str

    def signals(self, batch: dict[str, Any], needs: Needs) -> TeacherOutput:
        """Return only what ``needs`` asks for, for this batch."""
        ...


def module_fingerprint(model: nn.Module, extra: str = "") -> str:
    """sha256 over the class name, parameter/buffer names, shapes, dtypes and values."""
    h = hashlib.sha256(type(model).__name__.encode())
    h.update(extra.encode())
    for name, tensor in model.state_dict().items():
        t: Tensor = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def evaluation_model(teacher: object) -> nn.Module | None:
    """The network behind a teacher, when there is one to run on evaluation data."""
    model = getattr(teacher, "model", None)
    if isinstance(model, nn.Module):
        return model
    source = getattr(teacher, "source", None)
    return evaluation_model(source) if source is not None else None


def sample_ids(batch: dict[str, Any]) -> Tensor:
    """The batch's sample ids; teachers that look signals up by id cannot work without them."""
    if "index" not in batch:
        raise ConfigError(
            "this teacher looks signals up by sample id, but the batch has no 'index'; "
            "use kdforge data sets or pass batches as dicts with an 'index' tensor"
        )
    return torch.as_tensor(batch["index"]).cpu().long()
