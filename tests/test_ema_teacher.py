"""The EMA teacher: Mean Teacher's decay ramp, constant decay, buffers, tied weights and an exact state round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdforge.teachers.ema import Ema, EmaConfig


def student(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))


def train_a_little(model: nn.Module, seed: int) -> None:
    """Change every weight and BatchNorm statistic, as an optimizer step and a forward would."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.train()
    model(torch.randn(8, 4))


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_ramp_copies_first_then_averages_with_a_half():
    live = student()
    ema = Ema(decay=0.99)
    ema.setup({"s": live})
    assert [ema.current_decay()] == [0.0]
    train_a_little(live, 1)
    ema.on_optimizer_step(1)
    for k, v in ema.model.state_dict().items():
        assert torch.equal(v, live.state_dict()[k]), f"α_0 = 0: {k} is the student's"
    before = snapshot(ema.model)
    train_a_little(live, 2)
    assert ema.current_decay() == 0.5
    ema.on_optimizer_step(2)
    for k, v in ema.model.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, 0.5 * before[k] + 0.5 * live.state_dict()[k], atol=1e-7), k
        else:
            assert torch.equal(v, live.state_dict()[k]), "counters are copied"
    ema.updates = 1000
    assert ema.current_decay() == 0.99, "the ramp stops at the configured decay"
    assert [min(1 - 1 / (t + 1), 0.99) for t in range(4)] == [0.0, 0.5, 1 - 1 / 3, 0.75]


def test_without_ramp_the_decay_is_constant():
    live = student()
    ema = Ema(decay=0.9, ramp=False)
    ema.setup({"s": live})
    start = snapshot(ema.model)
    train_a_little(live, 1)
    ema.on_optimizer_step(1)
    assert ema.current_decay() == 0.9 and ema.updates == 1
    for k, v in ema.model.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, 0.9 * start[k] + 0.1 * live.state_dict()[k], atol=1e-7), k
    assert ema.fingerprint == "ema:0.9" and Ema(0.9).fingerprint == "ema:0.9:ramp"


def test_tied_weights_are_averaged_once():
    live = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))
    live[1].weight = live[0].weight  # one Parameter under two names
    ema = Ema(decay=0.5, ramp=False)
    ema.setup({"s": live})
    start = ema.model[0].weight.clone()
    with torch.no_grad():
        live[0].weight.add_(1.0)
    ema.on_optimizer_step(1)
    assert ema.model[0].weight is ema.model[1].weight
    assert torch.allclose(ema.model[0].weight, 0.5 * start + 0.5 * live[0].weight.detach())


def test_state_round_trip_resumes_exactly():
    live = student()
    ema = Ema(decay=0.9)
    ema.setup({"s": live})
    for step in range(3):
        train_a_little(live, step)
        ema.on_optimizer_step(step + 1)
    state = {k: v.clone() for k, v in ema.state_dict().items()}
    assert int(state["updates"]) == 3
    resumed = Ema(decay=0.9)
    resumed.setup({"s": live})
    resumed.load_state_dict(state)
    assert resumed.updates == 3 and resumed.current_decay() == ema.current_decay() == 0.75
    train_a_little(live, 9)
    ema.on_optimizer_step(4)
    resumed.on_optimizer_step(4)
    for k, v in ema.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_the_update_follows_a_student_moved_after_setup():
    live = student().double()
    ema = Ema(decay=0.5, ramp=False)
    ema.setup({"s": live})
    live.float()  # Module.to()/float() after setup: parameters keep their objects, buffers are new tensors
    ema.to("cpu")
    ema.network.float()
    train_a_little(live, 1)
    start = snapshot(ema.model)
    ema.on_optimizer_step(1)
    for k, v in ema.model.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, 0.5 * start[k] + 0.5 * live.state_dict()[k], atol=1e-6), k


def test_config_accepts_ramp():
    assert EmaConfig.model_validate({"kind": "ema"}).ramp is True
    assert EmaConfig.model_validate({"kind": "ema", "decay": 0.99, "ramp": False}).ramp is False
    with pytest.raises(ValueError, match="ramp"):
        EmaConfig.model_validate({"kind": "ema", "ramp": "sometimes"})
