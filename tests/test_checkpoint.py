"""Checkpoints and atomic files: round trip, checksum verification, no half-written state."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from kdforge.engine.checkpoint import load_checkpoint, read_state, save_checkpoint
from kdforge.errors import IntegrityError
from kdforge.files import atomic_replace_dir, atomic_write_text


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))


def test_round_trip_with_optimizer_state(tmp_path):
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "last", model, {"step": 7}, opt)
    fresh = _model()
    fresh[0].weight.data.zero_()
    state = load_checkpoint(tmp_path / "last", fresh)
    assert state["step"] == 7 and "optimizer" in state
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert not list(tmp_path.glob(".*")), "no staging folders are left behind"


def test_corrupted_weights_are_detected(tmp_path):
    save_checkpoint(tmp_path / "ck", _model(), {"step": 1})
    path = tmp_path / "ck" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"model\.safetensors.*sha256"):
        read_state(tmp_path / "ck")


def test_failed_write_keeps_previous_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "ck", _model(), {"step": 1})

    def broken(tmp):
        (tmp / "state.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_replace_dir(broken, tmp_path / "ck")
    assert read_state(tmp_path / "ck")["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_kill_between_the_two_renames_loses_nothing(tmp_path):
    save_checkpoint(tmp_path / "ck", _model(), {"step": 1})
    # The state a kill leaves after `target -> .target.old` and before `staging -> target`.
    (tmp_path / "ck").rename(tmp_path / ".ck.old")
    assert read_state(tmp_path / "ck")["step"] == 1, "a reader finds the previous checkpoint (without moving it)"
    assert load_checkpoint(tmp_path / "ck", _model())["step"] == 1
    assert not (tmp_path / "ck").exists()
    save_checkpoint(tmp_path / "ck", _model(), {"step": 2})  # a writer never deletes the only copy first
    assert read_state(tmp_path / "ck")["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_atomic_text_write_replaces_whole_file(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_text(target, json.dumps({"v": 1}))
    atomic_write_text(target, json.dumps({"v": 2}))
    assert json.loads(target.read_text()) == {"v": 2}
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)
