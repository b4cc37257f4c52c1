"""Built-in recipes shipped with the package (YAML files beside this module)."""

from __future__ import annotations

from pathlib import Path

from kdforge.errors import ConfigError
from kdforge.registry import did_you_mean

FOLDER = Path(__file__).parent
DEFAULT = "fmnist-demo"


def builtin() -> dict[str, Path]:
    """Name → path of every built-in recipe."""
    return {p.stem: p for p in sorted(FOLDER.glob("*.yaml"))}


def find(name_or_path: str) -> Path:
    """A recipe file by path, or a built-in recipe by name; unknown names list the built-in ones."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    table = builtin()
    if name_or_path in table:
        return table[name_or_path]
    hint = did_you_mean(name_or_path, list(table), n=1)
    raise ConfigError(
        f"recipe {name_or_path!r} is neither a file nor a built-in recipe.{hint} Built-in: {', '.join(table)}"
    )
