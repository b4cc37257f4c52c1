"""GGUF files: where the file is, and which architecture it holds (read from its metadata)."""

from __future__ import annotations

from pathlib import Path

from kdforge.errors import ConfigError

WHERE = "model 'hf': params.gguf_file"
# Sections of transformers' GGUF mapping that are not architectures.
_NOT_MODELS = {"general", "tokenizer"}


def gguf_location(path: Path, gguf_file: str | None) -> tuple[Path, str]:
    """(folder, file name) of a GGUF model: ``path`` is the .gguf file itself, or the folder holding ``gguf_file``."""
    if gguf_file is None:
        return path.parent, path.name
    if Path(gguf_file).name != gguf_file:
        raise ConfigError(f"{WHERE}={gguf_file!r} must be a file name inside params.path, not a path")
    file = path / gguf_file
    if not file.is_file():
        raise ConfigError(f"{WHERE}: {str(file)!r} does not exist; expected a .gguf file inside params.path")
    return path, gguf_file


def gguf_architecture(file: Path) -> str:
    """The ``general.architecture`` a GGUF file declares (read with the ``gguf`` package)."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ConfigError(f"{WHERE}: reading GGUF files needs `pip install gguf` (kdforge[text])") from None
    try:
        field = GGUFReader(str(file)).get_field("general.architecture")
    except (ValueError, OSError) as err:
        raise ConfigError(f"{WHERE}: {str(file)!r} is not a readable GGUF file ({err})") from None
    if field is None:
        raise ConfigError(f"{WHERE}: {str(file)!r} has no general.architecture; expected a GGUF model file")
    return str(field.contents())


def unsupported(file: Path, err: Exception) -> ConfigError:
    """The one-line error for a GGUF architecture transformers cannot load, naming it as the file declares it."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    supported = ", ".join(sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - _NOT_MODELS))
    return ConfigError(
        f"{WHERE}: {str(file)!r} holds a {gguf_architecture(file)!r} model, which transformers cannot load from GGUF "
        f"({' '.join(str(err).split())}); supported: {supported}"
    )
