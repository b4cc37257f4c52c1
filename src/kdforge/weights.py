"""Weight files read without running code from them: safetensors, or PyTorch pickles restricted to tensors.

Every place kdforge reads a state dict a user handed it (teacher checkpoints, checkpoints of run folders, exports,
saved heads) goes through here, so a malicious pickle is refused in one place and the error names the file.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kdforge.errors import ConfigError

# PyTorch's own formats (a zip of pickles, or a legacy pickle); HF folders call theirs pytorch_model.bin.
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def _one_line(err: BaseException) -> str:
    # torch's weights_only refusal spans a dozen lines; the CLI's contract is one line per error.
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else f"{text[:297]}..."


def read_safetensors(path: Path, where: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; anything else is a one-line ConfigError naming ``where`` and the file."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises several error types for a damaged or foreign file
        raise ConfigError(
            f"{where}: {str(path)!r} is not a readable safetensors file ({_one_line(err)}); "
            "expected weights written by safetensors"
        ) from None


def read_weights(path: Path, where: str) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from a PyTorch .pt/.pth/.bin/.ckpt file read with weights_only (no code)."""
    if path.suffix.lower() not in PICKLE_SUFFIXES:
        return read_safetensors(path, where)
    try:
        # weights_only: the unpickler builds tensors and plain containers only; a __reduce__ naming any other
        # callable (os.system, eval, ...) is refused before it is called.
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # weights_only refuses pickled code; a damaged file fails to unzip
        raise ConfigError(
            f"{where}: {str(path)!r} is not a plain PyTorch state dict ({_one_line(err)}); expected tensors only "
            "(pickled code is never run; convert the file to safetensors)"
        ) from None
    # RepDistiller's and mdistiller's teacher checkpoints wrap the state dict: {"model": ..., "epoch": ...}.
    for key in ("model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(torch.is_tensor(v) for v in data.values()):
        raise ConfigError(f"{where}: {str(path)!r} holds no state dict of tensors")
    return data
