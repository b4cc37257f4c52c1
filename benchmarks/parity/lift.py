"""Shared helpers of the parity fixture generators: lift reference code out of a checkout, seed inputs, write JSON.

The generators run as scripts (``python benchmarks/parity/X.py``), so this folder is first on ``sys.path`` and they
``import lift`` directly.
"""

from __future__ import annotations

import ast
import json
import math
import subprocess
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PARITY_DIR = Path(__file__).resolve().parents[2] / "tests" / "data" / "parity"

# The names the reference files import at their top (their import lines are not run: their packages are not here).
GLOBALS: dict[str, Any] = {
    "torch": torch,
    "nn": nn,
    "F": F,
    "functional": F,
    "np": np,
    "math": math,
    "OrderedDict": OrderedDict,
    "Dict": dict,
    "Tuple": tuple,
    "normalize": F.normalize,
    "cosine_similarity": F.cosine_similarity,
    "adaptive_avg_pool2d": F.adaptive_avg_pool2d,
    "adaptive_max_pool2d": F.adaptive_max_pool2d,
}


def _git(checkout: Path, *args: str) -> str:
    """The stdout of a git command in a work tree or a bare git directory."""
    return subprocess.run(["git", "-C", str(checkout), *args], check=True, capture_output=True, text=True).stdout


def commit(checkout: Path) -> str:
    """The checkout's HEAD commit."""
    return _git(checkout, "rev-parse", "HEAD").strip()


def source(checkout: Path, path: str) -> str:
    """A file's text from a work tree, or from HEAD of a bare git directory."""
    file = checkout / path
    return file.read_text() if file.is_file() else _git(checkout, "show", f"HEAD:{path}")


def definitions(text: str, names: list[str], filename: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The named top-level classes/functions of reference source text, executed without decorators or imports."""
    tree = ast.parse(text)
    nodes = [n for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name in names]
    missing = set(names) - {n.name for n in nodes}
    if missing:
        raise SystemExit(f"{filename}: no {sorted(missing)}")
    for node in nodes:
        node.decorator_list = []  # the registries of the reference package are not loaded
    namespace = {**GLOBALS, **(extra or {})}
    exec(compile(ast.unparse(ast.Module(body=nodes, type_ignores=[])), filename, "exec"), namespace)
    return namespace


def load(path: Path, names: list[str], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The named top-level classes/functions of a reference file (see ``definitions``)."""
    return definitions(path.read_text(), names, str(path), extra)


def seeded(seed: int, *shapes: tuple[int, ...]) -> list[torch.Tensor]:
    """Standard-normal float32 tensors from a fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen) for shape in shapes]


def agree(a: float, b: float, what: str) -> None:
    """Stop when two reference implementations disagree."""
    if not math.isclose(a, b, rel_tol=1e-5):
        raise SystemExit(f"{what}: {a} vs {b}")


def nested(x: torch.Tensor) -> Any:
    """A tensor as nested lists (float32 values are exact in JSON's doubles)."""
    return x.detach().cpu().tolist()


def arguments(argv: list[str], checkouts: int, usage: str) -> tuple[list[Path], Path]:
    """The checkouts named first on the command line, and the output folder after them (else tests/data/parity)."""
    if len(argv) not in (checkouts, checkouts + 1):
        raise SystemExit(usage)
    return [Path(a) for a in argv[:checkouts]], Path(argv[checkouts]) if len(argv) > checkouts else PARITY_DIR


def write(path: Path, fixture: Mapping[str, Any], layout: str = "line") -> None:
    """Write a fixture as JSON: on one line ("line"), indented by one ("indent") or one line per top-level key."""
    if layout == "line":
        text = json.dumps(fixture)
    elif layout == "indent":
        text = json.dumps(fixture, indent=1)
    elif layout == "keys":  # the nested input lists stay compact
        text = "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in fixture.items()) + "\n}"
    else:
        raise ValueError(f"layout {layout!r}: expected 'line', 'indent' or 'keys'")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
