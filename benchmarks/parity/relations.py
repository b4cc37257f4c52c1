"""Parity fixtures for the relation objectives (sp, rkd, pkt, cc) from the reference implementations' own code.

Reads the loss code out of a torchdistill checkout (torchdistill/losses/mid_level.py: SPKDLoss, RKDLoss, PKTLoss,
CCKDLoss) and an mdistiller checkout (mdistiller/distillers/{SP,RKD,PKT}.py), runs it on fixed seeded tensors and
writes tests/data/parity/{sp,rkd,pkt,cc}.json. Where both frameworks implement a loss, their values are checked to
agree before the fixture is written. Only the named classes and functions are taken from each file (their package
imports are not run), so nothing outside this venv and the two checkouts is needed.

Usage: python benchmarks/parity/relations.py TORCHDISTILL_CHECKOUT MDISTILLER_CHECKOUT [OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lift import agree, arguments, commit, load, seeded, write

TORCHDISTILL_LOSSES = "torchdistill/losses/mid_level.py"


def fixtures(torchdistill: Path, mdistiller: Path) -> dict[str, dict[str, Any]]:
    """One fixture per objective: source, our objective's params, the inputs and the reference value."""
    td = load(torchdistill / TORCHDISTILL_LOSSES, ["SPKDLoss", "RKDLoss", "PKTLoss", "CCKDLoss"])
    md = {
        name: load(mdistiller / f"mdistiller/distillers/{name.upper()}.py", names)
        for name, names in [
            ("sp", ["sp_loss", "similarity_loss"]),
            ("rkd", ["_pdist", "rkd_loss"]),
            ("pkt", ["pkt_loss"]),
        ]
    }
    td_source = {"repo": "yoshitomo-matsubara/torchdistill", "commit": commit(torchdistill)}
    md_source = {"repo": "megvii-research/mdistiller", "commit": commit(mdistiller)}
    out: dict[str, dict[str, Any]] = {}

    def io(x: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        return {"x": {"output": x, "input": x}}

    with torch.no_grad():
        s, t = seeded(0, (4, 3, 2, 2), (4, 5, 2, 2))
        spkd = td["SPKDLoss"](student_output_path="x", teacher_output_path="x", reduction="batchmean")
        value = float(md["sp"]["sp_loss"]([s], [t]))
        out["sp"] = {
            "source": {**md_source, "path": "mdistiller/distillers/SP.py", "function": "sp_loss"},
            "params": {},
        }
        out["sp"].update(inputs={"student": s.tolist(), "teacher": t.tolist()}, value=value)
        # torchdistill's SPKDLoss calls normalize(G, 1): the 1 is p, so its rows are L1-normalized (the paper: L2).
        other = {**td_source, "path": TORCHDISTILL_LOSSES, "class": "SPKDLoss", "value": float(spkd(io(s), io(t)))}
        out["sp"]["other"] = {**other, "note": "rows of G normalized to unit L1 norm (normalize's 2nd argument is p)"}

        s, t = seeded(1, (6, 5), (6, 7))
        value = float(md["rkd"]["rkd_loss"](s, t, squared=False, eps=1e-12, distance_weight=25, angle_weight=50))
        rkd = td["RKDLoss"](
            student_output_path="x", teacher_output_path="x", dist_factor=25, angle_factor=50, reduction="mean"
        )
        agree(float(rkd(io(s), io(t))), value, "rkd: torchdistill vs mdistiller")
        params = {"distance": 25.0, "angle": 50.0, "squared": False, "eps": 1e-12}
        out["rkd"] = {"source": {**md_source, "path": "mdistiller/distillers/RKD.py", "function": "rkd_loss"}}
        out["rkd"].update(params=params, inputs={"student": s.tolist(), "teacher": t.tolist()}, value=value)

        s, t = seeded(2, (6, 5), (6, 7))
        pkt = td["PKTLoss"]("x", "output", "x", "output", eps=1e-7)
        value = float(pkt(io(s), io(t)))
        agree(value, float(md["pkt"]["pkt_loss"](s, t, eps=1e-7)), "pkt: torchdistill vs mdistiller")
        out["pkt"] = {"source": {**td_source, "path": TORCHDISTILL_LOSSES, "class": "PKTLoss"}, "params": {"eps": 1e-7}}
        out["pkt"].update(inputs={"student": s.tolist(), "teacher": t.tolist()}, value=value)

        # CCKDLoss takes the outputs of the two linear heads; unit rows make the paper's L2 normalization a no-op.
        s, t = (F.normalize(x, dim=1) for x in seeded(3, (6, 8), (6, 10)))
        kernel = {"type": "gaussian", "gamma": 0.4, "max_p": 2}
        cckd = td["CCKDLoss"](
            student_linear_path="x", teacher_linear_path="x", kernel_config=kernel, reduction="batchmean"
        )
        value = float(cckd(io(s), io(t)))
        out["cc"] = {"source": {**td_source, "path": TORCHDISTILL_LOSSES, "class": "CCKDLoss"}}
        out["cc"].update(
            params={"embed": 0, "kernel": "gaussian", "gamma": 0.4, "max_p": 2},
            inputs={"student": s.tolist(), "teacher": t.tolist()},
            value=value,
            note="torchdistill reduces with torch.dist (the Frobenius norm, not squared) / b^2; the paper's loss "
            "squares it: on these unit rows ours = b^2 * value^2",
        )
    return out


def main() -> None:
    """Write the four fixtures."""
    (torchdistill, mdistiller), target = arguments(sys.argv[1:], 2, __doc__)
    for name, fixture in fixtures(torchdistill, mdistiller).items():
        write(target / f"{name}.json", fixture, "indent")
        print(f"{name}: {fixture['value']!r}")


if __name__ == "__main__":
    main()
