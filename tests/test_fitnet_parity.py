"""FitNet (`hint`) against mdistiller / RepDistiller / torchdistill: tests/data/parity/hint.json.

The fixture comes from benchmarks/parity/fitnet.py, which runs the references' own ConvReg and MSE loss in training
mode with our connector's weights copied into their regressor.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdforge.connectors import Resize
from kdforge.objectives import objective
from kdforge.objectives.base import BuildContext, PairContext
from kdforge.signals import FeatureSignal, StudentOutput, TeacherOutput

FIXTURE = json.loads((Path(__file__).parent / "data" / "parity" / "hint.json").read_text())
BILINEAR_X2 = torch.tensor([0.25, 0.75, 0.75, 0.25])


def _case(name: str) -> dict[str, Any]:
    return next(o for o in FIXTURE["other"] if o.get("case") == name)


def _ours(case: dict[str, Any], wrap: Any = None) -> float:
    """Our `hint` on the case's tensors, its conv1x1 connector carrying the case's weights; ``wrap`` edits it first."""
    inp = case["inputs"]
    student = {"student_0": torch.tensor(inp["student_0"])}
    teacher = {"teacher_0": torch.tensor(inp["teacher_0"])}
    s, t = StudentOutput(None, student), TeacherOutput(features=FeatureSignal(teacher))
    bound = objective("hint", **case["params"])
    connectors = bound.spec.build(bound.params, BuildContext("hint", s, t))
    conv, bn = connectors[0][-2], connectors[0][-1]
    assert isinstance(conv, nn.Conv2d) and conv.bias is None and isinstance(bn, nn.BatchNorm2d)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(inp["connector.conv.weight"]))
        bn.weight.copy_(torch.tensor(inp["connector.bn.weight"]))
        bn.bias.copy_(torch.tensor(inp["connector.bn.bias"]))
    if wrap is not None:
        connectors[0] = wrap(connectors[0])
    with torch.no_grad():
        return bound.compute(PairContext(s, t, connector=connectors)).item()


def _close(ours: float, theirs: float) -> bool:
    return math.isclose(ours, theirs, rel_tol=1e-4)


def _relu_after(connector: nn.Module) -> nn.Module:
    return nn.Sequential(connector, nn.ReLU())


def test_hint_equals_mdistiller_fitnet_with_use_relu_false() -> None:
    """Same resolution: their ConvReg is a 1×1 conv with bias + BN; the bias cancels in batch-statistics BN."""
    assert FIXTURE["source"]["repo"] == "megvii-research/mdistiller" and len(FIXTURE["source"]["commit"]) == 40
    assert _close(_ours(FIXTURE), FIXTURE["value_without_relu"]), (_ours(FIXTURE), FIXTURE["value_without_relu"])
    assert any(b != 0 for b in FIXTURE["inputs"]["reference.conv.bias"])  # their bias was live, and cancelled


def test_hint_differs_from_the_references_by_the_relu_after_batch_norm() -> None:
    """The documented difference: mdistiller's, RepDistiller's and torchdistill's FitNet regressor (ConvReg) ends in a
    ReLU after its BatchNorm (use_relu / uses_relu default True), because their hint features are post-ReLU maps and
    FitNet (Romero et al. 2015, eq. 3: ½‖u_h(x) − r(v_g(x))‖²) asks the regressor r to end in the teacher's
    non-linearity. Our conv1x1 connector stops at the BatchNorm, so a negative prediction is penalised rather than
    clipped to 0. Putting a ReLU after our connector reproduces their value exactly. torchdistill's FitNet config also
    sums the squared errors (MSELoss reduction 'sum') where we, mdistiller and RepDistiller average them.
    """
    ours, theirs = _ours(FIXTURE), FIXTURE["value"]
    assert not math.isclose(ours, theirs, rel_tol=0.1), (ours, theirs)
    assert _close(_ours(FIXTURE, _relu_after), theirs)
    summed = FIXTURE["other"][0]
    assert summed["source"]["repo"] == "yoshitomo-matsubara/torchdistill" and summed["params"]["reduction"] == "sum"
    assert _close(summed["value"], theirs * torch.tensor(FIXTURE["inputs"]["teacher_0"]).numel())


def test_hint_downsampling_is_their_strided_conv_restricted_to_a_pooled_1x1() -> None:
    """Student maps twice the teacher's size: ConvReg learns a 3×3 stride-2 conv (padding 1), we average-pool 2×2 and
    apply a 1×1 conv. Ours is their conv with W/4 on the four taps the pool reads and 0 on the others: with those
    weights (in the fixture) the losses agree; theirs can also learn the other taps.
    """
    case = _case("down")
    w = torch.tensor(case["inputs"]["connector.conv.weight"])
    kernel = torch.tensor(case["inputs"]["reference.conv.weight"])
    torch.testing.assert_close(kernel[:, :, 1:, 1:], (w / 4).expand(-1, -1, 2, 2))
    assert kernel[:, :, 0, :].abs().sum() == 0 and kernel[:, :, :, 0].abs().sum() == 0
    assert _close(_ours(case), case["value_without_relu"])
    assert _close(_ours(case, _relu_after), case["value"])


class ZeroPaddedUpsample(nn.Module):
    """2× bilinear weights applied as a transposed conv: zeros beyond the border instead of the edge value."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Each channel through a 4×4 stride-2 transposed conv with kernel (1/4, 3/4, 3/4, 1/4)²."""
        kernel = torch.outer(BILINEAR_X2, BILINEAR_X2).expand(x.shape[1], 1, 4, 4)
        return F.conv_transpose2d(x, kernel, stride=2, padding=1, groups=x.shape[1])


def _zero_padded(connector: nn.Module) -> nn.Module:
    assert isinstance(connector[0], Resize)
    connector[0] = ZeroPaddedUpsample()
    return connector


def test_hint_upsampling_differs_from_their_transposed_conv_only_at_the_border() -> None:
    """Student maps half the teacher's size: ConvReg learns a 4×4 stride-2 transposed conv (padding 1), we upsample
    bilinearly (align_corners=False) and apply a 1×1 conv. With W ⊗ (1/4, 3/4, 3/4, 1/4)² as their kernel the maps
    agree inside but not on the border rows and columns — the transposed conv reads zeros beyond the map (¾·x[0]),
    bilinear interpolation clamps to the edge (x[0]) — so the losses differ; swapping our resize for the zero-padded
    upsampler reproduces theirs.
    """
    case = _case("up")
    w = torch.tensor(case["inputs"]["connector.conv.weight"])[:, :, 0, 0]
    kernel = torch.tensor(case["inputs"]["reference.conv.weight"])
    torch.testing.assert_close(kernel, w.t()[:, :, None, None] * torch.outer(BILINEAR_X2, BILINEAR_X2))
    ours, theirs = _ours(case), case["value_without_relu"]
    assert not math.isclose(ours, theirs, rel_tol=1e-3), (ours, theirs)  # BN rescales: ~0.6 %
    assert _close(_ours(case, _zero_padded), theirs)
    assert _close(_ours(case, lambda c: _relu_after(_zero_padded(c))), case["value"])
