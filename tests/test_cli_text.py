"""Text runs through the CLI, and the speed profile and test metrics they end with (token-id inputs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from kdforge.data import ArrayDataset, make_loader
from kdforge.errors import ConfigError
from kdforge.evaluate import model_profile, split_metrics
from kdforge.models import build_model

from conftest import run_cli, small_text_recipe

PROFILE_KEYS = {"params", "size_bytes", "latency_ms_b1", "latency_ms_b256"}


def test_model_profile_times_token_id_models_on_their_ids():
    torch.manual_seed(0)
    model = build_model("text_bag", 8, (16,)).train()
    ids = torch.randint(1000, 2000, (5, 16))  # fewer rows than 256: they are cycled
    ids[:, 12:] = 0
    with pytest.raises(RuntimeError):
        model(ids.float())  # what random float inputs used to do to an embedding
    profile = model_profile(model, ids)
    assert set(profile) == PROFILE_KEYS
    assert profile["params"] == sum(p.numel() for p in model.parameters())
    assert profile["latency_ms_b1"] > 0 and profile["latency_ms_b256"] > 0
    assert model.training  # the training flag is restored


def test_model_profile_times_image_models_in_their_dtype():
    model = build_model("cnn", 10, (1, 8, 8)).to(torch.bfloat16)
    profile = model_profile(model, torch.randn(300, 1, 8, 8))  # float32 rows are cast to bf16, 256 are used
    assert set(profile) == PROFILE_KEYS
    assert profile["latency_ms_b1"] > profile["latency_ms_b256"] > 0


def test_model_profile_rejects_an_empty_example():
    with pytest.raises(ValueError, match="non-empty batch"):
        model_profile(nn.Linear(4, 2), torch.empty(0, 4))


def _loader(inputs: torch.Tensor, labels: torch.Tensor | None) -> object:
    return make_loader(ArrayDataset(inputs, labels, split="test"), 7, shuffle=False, seed=0)


def test_test_metrics_with_and_without_a_teacher_network():
    torch.manual_seed(0)
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    student = nn.Linear(4, 3)
    metrics = split_metrics.test_metrics(student, _loader(x, y))
    assert set(metrics) == {"accuracy", "nll", "ece"}
    with torch.no_grad():
        logits = student(x)
    assert metrics["accuracy"] == pytest.approx((logits.argmax(-1) == y).float().mean().item())
    assert metrics["nll"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    same = split_metrics.test_metrics(student, _loader(x, y), teacher_model=student)
    assert same["agreement"] == 1.0 and same["kl"] == pytest.approx(0.0, abs=1e-9)
    other = split_metrics.test_metrics(student, _loader(x, y), teacher_model=nn.Linear(4, 3))
    assert 0.0 <= other["agreement"] <= 1.0 and other["kl"] > 0


def test_test_metrics_token_ids_and_unlabelled_split():
    model = build_model("text_bag", 3, (8,))
    ids = torch.randint(1000, 2000, (10, 8))
    assert 0.0 <= split_metrics.test_metrics(model, _loader(ids, torch.arange(10) % 3))["accuracy"] <= 1.0
    with pytest.raises(ConfigError, match="no 'label'"):
        split_metrics.test_metrics(model, _loader(ids, None))


@pytest.mark.slow
def test_text_run_then_eval_through_the_cli(tmp_path: Path):
    recipe = small_text_recipe(tmp_path, "reuters-bag", {"name": "text_bag", "params": {"dim": 16, "hidden": 32}})
    path = tmp_path / "reuters-bag.yaml"
    path.write_text(yaml.safe_dump(recipe))
    res = run_cli("run", str(path), timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    (run_dir,) = list((tmp_path / "runs").iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["profile"]) == PROFILE_KEYS and summary["profile"]["latency_ms_b256"] > 0
    assert 0.0 <= summary["test"]["accuracy"] <= 1.0
    again = run_cli("eval", str(run_dir), timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    (evaluated,) = json.loads((run_dir / "eval-last.json").read_text())["rows"]
    assert evaluated["accuracy"] == pytest.approx(summary["test"]["accuracy"])
