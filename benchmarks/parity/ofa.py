"""Parity fixture for the `ofa` objective: the reference OFA-KD loss on fixed seeded logits.

    python benchmarks/parity/ofa.py REFERENCE [OUT]

REFERENCE is a checkout of Hao840/OFAKD (a work tree, or a bare git directory: its HEAD is read). Only the function
``ofa_loss`` of distillers/ofa.py is taken (the module itself imports timm) and run with this environment's torch.
OUT defaults to tests/data/parity/ofa.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from lift import PARITY_DIR, commit, definitions, source, write

REPO = "Hao840/OFAKD"
PATH = "distillers/ofa.py"
PARAMS = {"eps": 1.5, "temperature": 2.0}  # the README's ImageNet ε; a temperature ≠ 1 so that T is exercised


def main(checkout: str, out: str | None = None) -> None:
    """Run the reference loss on seeded inputs and write the fixture."""
    reference = Path(checkout)
    ofa_loss = definitions(source(reference, PATH), ["ofa_loss"], PATH)["ofa_loss"]
    gen = torch.Generator().manual_seed(12)
    student = torch.randn(8, 10, generator=gen) * 2
    teacher = torch.randn(8, 10, generator=gen) * 3
    labels = torch.randint(0, 10, (8,), generator=gen)
    value = ofa_loss(student, teacher, F.one_hot(labels, 10), PARAMS["eps"], PARAMS["temperature"])
    fixture = {
        "source": {"repo": REPO, "path": PATH, "commit": commit(reference), "function": "ofa_loss"},
        "params": PARAMS,
        "inputs": {"student_logits": student.tolist(), "teacher_logits": teacher.tolist(), "labels": labels.tolist()},
        "value": float(value),
    }
    target = Path(out) if out else PARITY_DIR / "ofa.json"
    write(target, fixture, "indent")
    print(f"{target}: {fixture['value']!r}")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    main(*sys.argv[1:])
