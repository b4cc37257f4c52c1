"""Parity fixture for the `ofa` objective: the reference OFA-KD loss on fixed seeded logits.

    python benchmarks/parity/ofa.py REFERENCE [OUT]

REFERENCE is a checkout of Hao840/OFAKD (a work tree, or a bare git directory: its HEAD is read). Only the function
``ofa_loss`` of distillers/ofa.py is taken (the module itself imports timm), written to a throwaway file under /tmp and
run with this environment's torch. OUT defaults to tests/data/parity/ofa.json.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = "Hao840/OFAKD"
PATH = "distillers/ofa.py"
OUT = Path(__file__).resolve().parents[2] / "tests" / "data" / "parity" / "ofa.json"
PARAMS = {"eps": 1.5, "temperature": 2.0}  # the README's ImageNet ε; a temperature ≠ 1 so that T is exercised


def reference_source(checkout: Path) -> tuple[str, str]:
    """(distillers/ofa.py text, commit) of a work tree or a bare git directory."""
    worktree = checkout / PATH
    git = ["git", "-C", str(checkout)] if worktree.is_file() else ["git", f"--git-dir={checkout}"]
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    if worktree.is_file():
        return worktree.read_text(), commit
    text = subprocess.run([*git, "show", f"HEAD:{PATH}"], capture_output=True, text=True, check=True).stdout
    return text, commit


def load_ofa_loss(source: str, workdir: Path):
    """The reference's ``ofa_loss``, copied alone into a module of its own."""
    tree = ast.parse(source)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "ofa_loss")
    module = workdir / "ofa_reference.py"
    module.write_text("import torch\nimport torch.nn.functional as F\n\n" + ast.get_source_segment(source, fn) + "\n")
    spec = importlib.util.spec_from_file_location("ofa_reference", module)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded.ofa_loss


def main(checkout: str, out: str | None = None) -> None:
    """Run the reference loss on seeded inputs and write the fixture."""
    source, commit = reference_source(Path(checkout))
    gen = torch.Generator().manual_seed(12)
    student = torch.randn(8, 10, generator=gen) * 2
    teacher = torch.randn(8, 10, generator=gen) * 3
    labels = torch.randint(0, 10, (8,), generator=gen)
    with tempfile.TemporaryDirectory(prefix="ofa-parity-", dir="/tmp") as tmp:
        ofa_loss = load_ofa_loss(source, Path(tmp))
        value = ofa_loss(student, teacher, F.one_hot(labels, 10), PARAMS["eps"], PARAMS["temperature"])
    fixture = {
        "source": {"repo": REPO, "path": PATH, "commit": commit, "function": "ofa_loss"},
        "params": PARAMS,
        "inputs": {"student_logits": student.tolist(), "teacher_logits": teacher.tolist(), "labels": labels.tolist()},
        "value": float(value),
    }
    target = Path(out) if out else OUT
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"{target}: {fixture['value']!r}")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    main(*sys.argv[1:])
