"""Parity fixture for the `hint` objective (FitNet) from the reference implementations' own regressor and loss code.

Reads mdistiller's FitNet regressor and loss (mdistiller/distillers/_common.py: ConvReg; FitNet.py: the
``F.mse_loss(conv_reg(f_s), f_t)`` of FitNet.forward_train), RepDistiller's (models/util.py: ConvReg;
distiller_zoo/FitNet.py: HintLoss) and torchdistill's (torchdistill/models/adaptation.py: ConvReg;
torchdistill/losses/mid_level.py: SimpleLossWrapper around torch's MSELoss, as its FitNet sample config wires them),
runs them on fixed seeded tensors in training mode (batch-statistics BatchNorm, as during distillation) and writes
tests/data/parity/hint.json. RepDistiller and torchdistill are checked to agree with mdistiller before it is written.
Only the named classes are taken from each file (their package imports are not run): nothing outside this venv and
the checkouts is needed.

Regressor weights: at one resolution our ``conv1x1`` weights are the reference's 1×1 conv weights (its conv bias is
dropped: batch-statistics BatchNorm subtracts it again). At another resolution the reference learns a 3×3 stride-2
conv (student twice the teacher's size) or a 4×4 stride-2 transposed conv (half the size); our 1×1 weights W are
written into those kernels as the same linear map — W/4 on the 2×2 taps our average pooling reads, W times the
bilinear weights (1/4, 3/4, 3/4, 1/4)² — so that only the definitions, not the random draws, differ.

The fixture: ``source``, ``params`` (ours), ``inputs`` (student_0 / teacher_0 and the weights), ``value`` (the
reference's FitNet loss, ReLU after BatchNorm as it runs), ``value_without_relu`` (its ``use_relu=False``), ``note``,
and ``other``: the same for the other resolutions and torchdistill's summed reduction, each with a note.

Usage: python benchmarks/parity/fitnet.py MDISTILLER_CHECKOUT REPDISTILLER_CHECKOUT TORCHDISTILL_CHECKOUT [OUT_DIR]
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lift import agree, arguments, commit, load, nested, write

MD_PATH = "mdistiller/distillers/_common.py"
TD_ADAPTATION = "torchdistill/models/adaptation.py"
TD_LOSSES = "torchdistill/losses/mid_level.py"
TD_CONFIG = "configs/sample/ilsvrc2012/fitnet/resnet18_from_resnet152.yaml"
BILINEAR_X2 = torch.tensor([0.25, 0.75, 0.75, 0.25])  # 2× bilinear upsampling (align_corners=False) as a 1-D kernel
PARAMS = {"layers": ["student_0 -> teacher_0"], "connector": "conv1x1"}


def mdistiller_loss(md: Path) -> Any:
    """The line of FitNet.forward_train that makes the feature loss, after checking it is still that line."""
    text = (md / "mdistiller/distillers/FitNet.py").read_text()
    if "self.conv_reg(feature_student" not in text or "F.mse_loss(" not in text:
        raise SystemExit("mdistiller FitNet.forward_train no longer computes F.mse_loss(conv_reg(f_s), f_t)")
    return lambda reg, f_s, f_t: F.mse_loss(reg(f_s), f_t)


def features(seed: int, s_shape: tuple[int, ...], t_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """A student map and a post-ReLU teacher map (the references' hint features follow a ReLU)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*s_shape, generator=gen), torch.randn(*t_shape, generator=gen).relu()


def trained_bn(bn: nn.BatchNorm2d, seed: int) -> None:
    """Trained-looking BatchNorm affine parameters (the initial 1 / 0 would hide a wrong copy)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.weight.copy_(1 + 0.2 * torch.randn(bn.weight.shape, generator=gen))
        bn.bias.copy_(0.2 * torch.randn(bn.bias.shape, generator=gen))


def both_relus(conv_reg: type, s: torch.Tensor, t: torch.Tensor, state: dict[str, torch.Tensor]) -> tuple[Any, Any]:
    """Two reference regressors with one set of weights, the default (ReLU after BN) and ``use_relu=False``."""
    regs = []
    for use_relu in (True, False):
        reg = conv_reg(s.shape, t.shape, use_relu=use_relu)
        reg.load_state_dict(state)
        regs.append(reg.train())
    return regs[0], regs[1]


def same_resolution(md: Path, rep: Path, td: Path) -> dict[str, Any]:
    """One pair at one resolution: their 1×1 conv (+ bias) + BN (+ ReLU) against ours, weights copied."""
    md_reg = load(md / MD_PATH, ["ConvReg"])["ConvReg"]
    s, t = features(0, (4, 3, 4, 4), (4, 5, 4, 4))
    torch.manual_seed(0)
    reg = md_reg(s.shape, t.shape)
    if tuple(reg.conv.kernel_size) != (1, 1):
        raise SystemExit(f"mdistiller ConvReg at one resolution: kernel {reg.conv.kernel_size}, expected 1×1")
    trained_bn(reg.bn, 1)
    state = {k: v.clone() for k, v in reg.state_dict().items()}
    with_relu, without_relu = both_relus(md_reg, s, t, state)
    loss = mdistiller_loss(md)
    value, value_without_relu = float(loss(with_relu, s, t)), float(loss(without_relu, s, t))

    rep_ns = {**load(rep / "models/util.py", ["ConvReg"]), **load(rep / "distiller_zoo/FitNet.py", ["HintLoss"])}
    rep_with, rep_without = both_relus(rep_ns["ConvReg"], s, t, state)
    agree(value, float(rep_ns["HintLoss"]()(rep_with(s), t)), "hint: mdistiller vs RepDistiller")
    agree(value_without_relu, float(rep_ns["HintLoss"]()(rep_without(s), t)), "hint: RepDistiller use_relu=False")

    # torchdistill: its ConvReg as the student's '+convreg' adaptation, SimpleLossWrapper(MSELoss) on the io dicts.
    td_reg = load(td / TD_ADAPTATION, ["ConvReg"])["ConvReg"]
    wrapper = load(td / TD_LOSSES, ["SimpleLossWrapper"])["SimpleLossWrapper"]
    io = {
        "input": {"is_from_teacher": False, "module_path": "+convreg", "io": "output"},
        "target": {"is_from_teacher": True, "module_path": "layer1", "io": "output"},
    }
    td_values = {}
    for reduction in ("mean", "sum"):
        conv_reg = td_reg(3, 5, kernel_size=1, stride=1, padding=0, uses_relu=True).train()
        conv_reg.load_state_dict(state)
        criterion = wrapper(nn.MSELoss(reduction=reduction), **io)
        td_values[reduction] = float(criterion({"+convreg": {"output": conv_reg(s)}}, {"layer1": {"output": t}}, None))
    agree(value, td_values["mean"], "hint: mdistiller vs torchdistill (reduction='mean')")

    inputs = {
        "student_0": nested(s),
        "teacher_0": nested(t),
        # ours: conv1x1's conv (no bias) and BN; theirs adds a conv bias (its BN state is the same)
        "connector.conv.weight": nested(state["conv.weight"]),
        "connector.bn.weight": nested(state["bn.weight"]),
        "connector.bn.bias": nested(state["bn.bias"]),
        "reference.conv.bias": nested(state["conv.bias"]),
    }
    source = {"repo": "megvii-research/mdistiller", "path": f"mdistiller/distillers/FitNet.py, {MD_PATH}"}
    return {
        "source": {**source, "class": "FitNet, ConvReg", "commit": commit(md)},
        "params": PARAMS,
        "inputs": inputs,
        "value": value,
        "value_without_relu": value_without_relu,
        "note": (
            "ConvReg = conv (with bias) -> BatchNorm2d -> ReLU, then F.mse_loss (mean). Ours: conv1x1 = 1x1 conv "
            "(no bias) -> BatchNorm2d, then the mean squared error. The conv bias cancels in batch-statistics BN; "
            "the ReLU is the difference: ours equals value_without_relu (ConvReg(use_relu=False))."
        ),
        "other": [
            {
                "source": {
                    "repo": "yoshitomo-matsubara/torchdistill",
                    "path": f"{TD_ADAPTATION}, {TD_LOSSES}, {TD_CONFIG}",
                    "class": "ConvReg, SimpleLossWrapper(MSELoss)",
                    "commit": commit(td),
                },
                "params": {"reduction": "sum", "uses_relu": True},
                "inputs": "same",
                "value": td_values["sum"],
                "note": (
                    "torchdistill's FitNet sample config sums the squared errors (MSELoss reduction 'sum'); with "
                    "reduction 'mean' it equals value. sum = mean x B*C*H*W."
                ),
            }
        ],
    }


def resized(md: Path, seed: int, s_shape: tuple[int, ...], t_shape: tuple[int, ...], kind: str) -> dict[str, Any]:
    """One pair at another resolution: their learned strided (transposed) conv, our 1×1 weights written into it."""
    md_reg = load(md / MD_PATH, ["ConvReg"])["ConvReg"]
    s, t = features(seed, s_shape, t_shape)
    torch.manual_seed(seed)
    reg = md_reg(s.shape, t.shape)
    trained_bn(reg.bn, seed + 1)
    gen = torch.Generator().manual_seed(seed + 2)
    w = torch.randn(t_shape[1], s_shape[1], 1, 1, generator=gen) / math.sqrt(s_shape[1])  # ours: (C_t, C_s, 1, 1)
    with torch.no_grad():
        if kind == "down":  # Conv2d(3, stride 2, padding 1): output i reads rows 2i-1, 2i, 2i+1; the pool 2i, 2i+1
            if not isinstance(reg.conv, nn.Conv2d) or tuple(reg.conv.kernel_size) != (3, 3):
                raise SystemExit(f"mdistiller ConvReg {s_shape} -> {t_shape}: {reg.conv}, expected a 3×3 conv")
            kernel = torch.zeros_like(reg.conv.weight)
            kernel[:, :, 1:, 1:] = w / 4
        else:  # ConvTranspose2d(4, stride 2, padding 1), weight (C_s, C_t, 4, 4)
            if not isinstance(reg.conv, nn.ConvTranspose2d):
                raise SystemExit(f"mdistiller ConvReg {s_shape} -> {t_shape}: {reg.conv}, expected a transposed conv")
            kernel = w[:, :, 0, 0].t()[:, :, None, None] * torch.outer(BILINEAR_X2, BILINEAR_X2)
        reg.conv.weight.copy_(kernel)
    state = {k: v.clone() for k, v in reg.state_dict().items()}
    with_relu, without_relu = both_relus(md_reg, s, t, state)
    loss = mdistiller_loss(md)
    if kind == "down":
        note = (
            "student twice the teacher's size: ConvReg learns a 3x3 stride-2 conv (padding 1); ours average-pools "
            "2x2 and applies a 1x1 conv, which is that conv with W/4 on taps [1:, 1:] and 0 elsewhere: with those "
            "weights value_without_relu equals ours; ConvReg can learn more (its other taps)."
        )
    else:
        note = (
            "student half the teacher's size: ConvReg learns a 4x4 stride-2 transposed conv (padding 1); ours "
            "upsamples bilinearly (align_corners=False) and applies a 1x1 conv. With W x (1/4, 3/4, 3/4, 1/4)^2 "
            "as the kernel the two agree inside the map but not on its border rows and columns: the transposed "
            "conv reads zeros outside the map (0.75 x[0]), bilinear interpolation clamps to the edge (x[0])."
        )
    return {
        "source": {"repo": "megvii-research/mdistiller", "path": MD_PATH, "class": "ConvReg", "commit": commit(md)},
        "params": PARAMS,
        "inputs": {
            "student_0": nested(s),
            "teacher_0": nested(t),
            "connector.conv.weight": nested(w),  # ours: the 1×1 conv after the resize
            "connector.bn.weight": nested(state["bn.weight"]),
            "connector.bn.bias": nested(state["bn.bias"]),
            "reference.conv.weight": nested(state["conv.weight"]),
            "reference.conv.bias": nested(state["conv.bias"]),
        },
        "value": float(loss(with_relu, s, t)),
        "value_without_relu": float(loss(without_relu, s, t)),
        "case": kind,
        "note": note,
    }


def main(argv: list[str]) -> None:
    """Write hint.json."""
    (md, rep, td), out = arguments(argv, 3, __doc__)
    with torch.no_grad():
        fixture = same_resolution(md, rep, td)
        fixture["other"] += [
            resized(md, 10, (4, 3, 8, 8), (4, 5, 4, 4), "down"),
            resized(md, 20, (4, 3, 4, 4), (4, 5, 8, 8), "up"),
        ]
    write(out / "hint.json", fixture, "keys")
    print(f"hint: {fixture['value']!r} without relu {fixture['value_without_relu']!r}")
    for other in fixture["other"]:
        print(f"  {other.get('case', 'torchdistill sum')}: {other['value']!r} {other.get('value_without_relu', '')!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
