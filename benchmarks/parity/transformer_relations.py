"""Parity fixture for minilm_relations from an independent MiniLMv2 implementation's own code.

torchdistill and mdistiller have no MiniLMv2; Bloomberg's minilmv2.bb (minilmv2/minilmv2.py, class MiniLM) is a public
re-implementation of the paper's loss. Its relation-head split (``_transpose_for_scores_relation``) and per-sequence
KL (``_get_kl_loss``) are taken from the checkout and run on fixed seeded Q/K/V tensors of a right-padded batch (it
cuts each sequence at its length, so it handles right padding only), with relation weights α = 1 for Q-Q, K-K, V-V
as in the paper's sum; tests/data/parity/minilm_relations.json is written. Only the MiniLM class is taken from the
file (its package is not imported), so nothing outside this venv and the checkout is needed.

Usage: python benchmarks/parity/transformer_relations.py MINILMV2_BB_CHECKOUT [OUT_DIR]
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from lift import arguments, commit, load, write

SOURCE = "minilmv2/minilmv2.py"
RELATION_HEADS = 4
RELATIONS = {"qq": 1.0, "kk": 1.0, "vv": 1.0}
ROLES = "qkv"


def fixture(checkout: Path) -> dict[str, Any]:
    """Inputs, our parameters and the reference value of the MiniLMv2 relation loss."""
    minilm = load(checkout / SOURCE, ["MiniLM"])["MiniLM"]
    # The two methods read only these attributes; the teacher and student models of __init__ are not needed.
    this = SimpleNamespace(A_r=RELATION_HEADS, kl_loss_fn=nn.KLDivLoss(reduction="sum"))
    gen = torch.Generator().manual_seed(2021)
    inputs = {f"student_{r}": torch.randn(3, 6, 8, generator=gen) * 1.5 for r in ROLES}
    inputs |= {f"teacher_{r}": torch.randn(3, 6, 12, generator=gen) * 1.5 for r in ROLES}
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]])
    value = 0.0
    for name, alpha in RELATIONS.items():
        rel = {}
        for side, width in (("student", 8), ("teacher", 12)):
            d_r = width // RELATION_HEADS
            a, b = (minilm._transpose_for_scores_relation(this, inputs[f"{side}_{r}"], d_r) for r in name)
            rel[side] = a @ b.transpose(-1, -2) / math.sqrt(d_r)
        value += alpha * float(minilm._get_kl_loss(this, rel["teacher"], rel["student"], mask))
    return {
        "source": {
            "repo": "bloomberg/minilmv2.bb",
            "path": SOURCE,
            "commit": commit(checkout),
            "class": "MiniLM",
            "methods": ["_transpose_for_scores_relation", "_get_kl_loss"],
        },
        "params": {"relation_heads": RELATION_HEADS, "relations": RELATIONS},
        "inputs": {k: v.tolist() for k, v in inputs.items()} | {"attention_mask": mask.tolist()},
        "value": value,
    }


def main() -> None:
    """Write tests/data/parity/minilm_relations.json (or into OUT_DIR)."""
    (checkout,), out = arguments(sys.argv[1:], 1, __doc__)
    data = fixture(checkout)
    write(out / "minilm_relations.json", data)
    print(f"minilm_relations: {data['value']:.8g}")


if __name__ == "__main__":
    main()
