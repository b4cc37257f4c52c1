"""Parity fixtures for the feature-map objectives (at, nst, fsp) from the reference implementations' own code.

Reads the loss code out of an mdistiller checkout (mdistiller/distillers/{AT,NST}.py), a RepDistiller checkout
(distiller_zoo/{AT,NST,FSP}.py) and a torchdistill checkout (torchdistill/losses/mid_level.py: ATLoss, FSPLoss), runs
it on fixed seeded tensors and writes tests/data/parity/{at,nst,fsp}.json. mdistiller's AT and NST are checked to
agree with RepDistiller's (where they come from) before a fixture is written. Only the named classes and functions are
taken from each file (their package imports are not run), so nothing outside this venv and the checkouts is needed.

Each fixture: ``source`` (repo, path, commit, function), ``params`` (ours), ``inputs`` (student_i / teacher_i
tensors, one layer pair per i), ``value`` (the reference's loss, which *sums* the layer pairs), and ``other``: further
reference values on their own inputs whose definitions differ from ours on purpose, each with a note.

Usage: python benchmarks/parity/maps.py MDISTILLER_CHECKOUT REPDISTILLER_CHECKOUT TORCHDISTILL_CHECKOUT [OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from lift import agree, arguments, commit, load, seeded, write

TORCHDISTILL_LOSSES = "torchdistill/losses/mid_level.py"
PAIRS = ["student_0 -> teacher_0", "student_1 -> teacher_1"]  # the layer map of the AT and NST fixtures' inputs


def named(prefix: str, tensors: list[torch.Tensor]) -> dict[str, list]:
    """``{prefix_0: nested list, ...}``."""
    return {f"{prefix}_{i}": x.tolist() for i, x in enumerate(tensors)}


def io(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """torchdistill's io_dict: every tensor as the output of a module of its name."""
    return {k: {"output": v} for k, v in tensors.items()}


def at_fixture(md: Path, rep: Path, td: Path) -> dict[str, Any]:
    """mdistiller's at_loss over two pairs, each side pooled once (student larger, then teacher larger)."""
    md_at = load(md / "mdistiller/distillers/AT.py", ["single_stage_at_loss", "at_loss"])
    rep_at = load(rep / "distiller_zoo/AT.py", ["Attention"])
    s = seeded(0, (3, 4, 6, 6), (3, 5, 3, 3))
    t = seeded(1, (3, 6, 3, 3), (3, 7, 6, 6))
    value = float(md_at["at_loss"](s, t, 2))
    agree(value, float(sum(rep_at["Attention"](p=2)(s, t))), "at: mdistiller vs RepDistiller")
    # torchdistill compares maps of one resolution; 'code' is the authors' code, 'paper' the paper's eq. 2.
    td_at = load(td / TORCHDISTILL_LOSSES, ["ATLoss", "_extract_feature_map"])["ATLoss"]
    s_td, t_td = seeded(2, (3, 4, 5, 5), (3, 6, 5, 5))
    pairs = {"pair": {"student": {"io": "output", "path": "s"}, "teacher": {"io": "output", "path": "t"}}}
    other = []
    for mode, note in [
        ("code", "the same definition, one pair of one resolution"),
        ("paper", "mean over samples of the L2 norm (not squared, not averaged over positions) of the map difference"),
    ]:
        got = float(td_at(pairs, mode=mode)(io({"s": s_td}), io({"t": t_td})))
        other.append(
            {
                "source": {"repo": "yoshitomo-matsubara/torchdistill", "path": TORCHDISTILL_LOSSES, "class": "ATLoss"},
                "params": {"mode": mode},
                "inputs": {"student_0": s_td.tolist(), "teacher_0": t_td.tolist()},
                "value": got,
                "note": note,
            }
        )
    source = {"repo": "megvii-research/mdistiller", "path": "mdistiller/distillers/AT.py", "function": "at_loss"}
    return {
        "source": {**source, "commit": commit(md)},
        "params": {"layers": PAIRS, "p": 2.0},
        "inputs": {**named("student", s), **named("teacher", t)},
        "value": value,
        "reduction": "sum over the layer pairs (ours: mean)",
        "other": [{**o, "source": {**o["source"], "commit": commit(td)}} for o in other],
    }


def nst_fixture(md: Path, rep: Path) -> dict[str, Any]:
    """mdistiller's nst_loss over two pairs of different widths, each side pooled once."""
    md_nst = load(md / "mdistiller/distillers/NST.py", ["nst_loss", "single_stage_nst_loss", "poly_kernel"])
    rep_nst = load(rep / "distiller_zoo/NST.py", ["NSTLoss"])
    s = seeded(3, (3, 4, 6, 6), (3, 5, 3, 3))
    t = seeded(4, (3, 6, 3, 3), (3, 7, 6, 6))
    value = float(md_nst["nst_loss"](s, t))
    agree(value, float(sum(rep_nst["NSTLoss"]()(s, t))), "nst: mdistiller vs RepDistiller")
    source = {"repo": "megvii-research/mdistiller", "path": "mdistiller/distillers/NST.py", "function": "nst_loss"}
    return {
        "source": {**source, "commit": commit(md)},
        "params": {"layers": PAIRS},
        "inputs": {**named("student", s), **named("teacher", t)},
        "value": value,
        "reduction": "sum over the layer pairs (ours: mean)",
        "other": [],
    }


def fsp_fixture(rep: Path, td: Path) -> dict[str, Any]:
    """RepDistiller's FSP over three consecutive features (two FSP pairs) per side, same channels on both sides."""
    rep_fsp = load(rep / "distiller_zoo/FSP.py", ["FSP"])["FSP"]
    s = seeded(5, (3, 3, 6, 6), (3, 4, 3, 3), (3, 5, 3, 3))
    t = seeded(6, (3, 3, 4, 4), (3, 4, 4, 4), (3, 5, 2, 2))
    value = float(sum(rep_fsp([x.shape for x in s], [x.shape for x in t])(s, t)))
    td_fsp = load(td / TORCHDISTILL_LOSSES, ["FSPLoss", "_extract_feature_map"])["FSPLoss"]
    pairs = {
        f"pair{i}": {
            "student_first": {"io": "output", "path": f"s{i}"},
            "student_second": {"io": "output", "path": f"s{i + 1}"},
            "teacher_first": {"io": "output", "path": f"t{i}"},
            "teacher_second": {"io": "output", "path": f"t{i + 1}"},
            "weight": 1,
        }
        for i in range(2)
    }
    got = float(td_fsp(pairs)(io({f"s{i}": x for i, x in enumerate(s)}), io({f"t{i}": x for i, x in enumerate(t)})))
    note = (
        "maps pooled by adaptive MAX pooling; per pair Σ over (sample, column) of the L2 norm over rows of "
        "G_s − G_t (not squared), divided by the batch size"
    )
    source = {"repo": "HobbitLong/RepDistiller", "path": "distiller_zoo/FSP.py", "class": "FSP"}
    td_source = {"repo": "yoshitomo-matsubara/torchdistill", "path": TORCHDISTILL_LOSSES, "class": "FSPLoss"}
    return {
        "source": {**source, "commit": commit(rep)},
        "params": {
            "layers": ["student_0, student_1 -> teacher_0, teacher_1", "student_1, student_2 -> teacher_1, teacher_2"]
        },
        "inputs": {**named("student", s), **named("teacher", t)},
        "value": value,
        "reduction": "sum over the FSP pairs (ours: mean)",
        "other": [
            {
                "source": {**td_source, "commit": commit(td)},
                "params": {},
                "inputs": "same",
                "value": got,
                "note": note,
            }
        ],
    }


def main(argv: list[str]) -> None:
    """Write the three fixtures."""
    (md, rep, td), out = arguments(argv, 3, __doc__)
    with torch.no_grad():
        fixtures = {"at": at_fixture(md, rep, td), "nst": nst_fixture(md, rep), "fsp": fsp_fixture(rep, td)}
    for name, data in fixtures.items():
        write(out / f"{name}.json", data, "keys")
        print(f"{name}: {data['value']!r}  other: {[o['value'] for o in data['other']]}")


if __name__ == "__main__":
    main(sys.argv[1:])
