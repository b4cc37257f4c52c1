"""`kdforge eval`'s profile: FLOPs, percentiles, latency at two batch sizes, the busy-machine flag, the diagram."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kdforge.evaluate.flops import count_flops
from kdforge.evaluate.full import torch_profile
from kdforge.evaluate.reliability_plot import plot_reliability
from kdforge.evaluate.speed import speed_profile
from kdforge.evaluate.timing import percentile, time_calls

FAST = {"warmup": 1, "repeats": 8, "max_seconds": 0.5}


def test_percentile_golden_and_numpy():
    values = [float(v) for v in range(1, 21)]  # 1..20
    assert percentile(values, 95) == pytest.approx(19.05)  # position 0.95 · 19 = 18.05 → 19 + 0.05
    assert percentile(values, 50) == pytest.approx(10.5)
    assert percentile([3.0], 95) == 3.0
    rng = np.random.default_rng(0)
    sample = rng.exponential(size=37).tolist()
    for q in (0, 5, 50, 95, 99, 100):
        assert percentile(sample, q) == pytest.approx(float(np.percentile(sample, q)), abs=1e-12)
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_flops_of_a_linear_layer_at_batch_1():
    layer = nn.Linear(37, 11)
    assert count_flops(lambda: layer(torch.randn(1, 37))) == 2 * 37 * 11
    profile = torch_profile(layer, {"input": torch.randn(5, 37)}, 4, **FAST)
    assert profile["flops_per_sample"] == 2 * 37 * 11
    assert profile["params"] == 37 * 11 + 11 and profile["size_bytes"] > 4 * profile["params"]


def test_speed_profile_keys_and_throughput():
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()

    def run(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            return model(inputs["input"])

    profile = speed_profile(run, {"input": torch.randn(3, 64)}, 16, **FAST)
    assert set(profile) == {
        "latency_ms_b1",
        "latency_ms_b1_p95",
        "latency_ms_bN",
        "latency_ms_bN_p95",
        "batch_size",
        "throughput_per_s",
        "cpu_share",
        "busy",
    }
    assert profile["batch_size"] == 16 and profile["latency_ms_b1_p95"] >= profile["latency_ms_b1"] > 0
    # Throughput is the batch's samples per second at the median: the inverse of the per-sample median latency.
    assert profile["throughput_per_s"] * profile["latency_ms_bN"] / 1e3 == pytest.approx(1.0)
    assert isinstance(profile["busy"], bool) and profile["cpu_share"] > 0


def test_warmup_calls_are_not_timed():
    calls: list[int] = []
    timed = time_calls(lambda: calls.append(1), warmup=4, repeats=6, max_seconds=10)
    assert len(calls) == 10 and len(timed.times) == 6


BUSY_LOOP = "while True: pass"


def test_a_busy_machine_is_flagged():
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("needs os.sched_setaffinity (Linux)")
    before, threads = os.sched_getaffinity(0), torch.get_num_threads()
    cpu = min(before)
    loops: list[subprocess.Popen[bytes]] = []
    try:
        os.sched_setaffinity(0, {cpu})
        torch.set_num_threads(1)
        # Started after the pinning, the loops inherit it: three runnable processes share one CPU.
        loops = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(2)]
        for loop in loops:
            os.sched_setaffinity(loop.pid, {cpu})
        model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256)).eval()

        def run(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            with torch.inference_mode():
                return model(inputs["input"])

        profile = speed_profile(run, {"input": torch.randn(8, 256)}, 64, warmup=2, repeats=200, max_seconds=0.6)
        assert profile["cpu_share"] < 0.8 and profile["busy"] is True, profile
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
        os.sched_setaffinity(0, before)
        torch.set_num_threads(threads)


def test_reliability_diagram_is_a_png(tmp_path: Path):
    bins = {
        "edges": [i / 15 for i in range(16)],
        "count": [0] * 14 + [3],
        "confidence": [None] * 14 + [0.97],
        "accuracy": [None] * 14 + [2 / 3],
    }
    path = plot_reliability(bins, tmp_path / "eval" / "x-reliability.png", "reliability — x")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    assert [p.name for p in path.parent.iterdir()] == ["x-reliability.png"]


def test_a_model_name_holding_dollars_is_drawn_as_written(tmp_path: Path):
    bins = {"edges": [i / 15 for i in range(16)], "count": [0] * 14 + [3], "confidence": [None] * 14 + [0.9],
            "accuracy": [None] * 14 + [1.0]}  # fmt: skip
    # '$x^$' is a mathtext parse error and '$x$' would be drawn as an italic x: both are shown literally.
    for title in ("reliability — $x^$", "reliability — $x$"):
        path = plot_reliability(bins, tmp_path / f"{len(title)}-{title.count('^')}.png", title)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unique_stems_and_json_safe_golden():
    from kdforge.evaluate.full import json_safe, unique_stems

    names = ["teacher", "a b", "a_b", "a/b", "a_b-2", "kd (onnx)"]
    assert unique_stems(names) == {
        "teacher": "teacher", "a b": "a_b", "a_b": "a_b-2", "a/b": "a_b-3", "a_b-2": "a_b-2-2", "kd (onnx)": "kd_onnx",
    }  # fmt: skip
    record = {"m": {"nll": float("inf"), "kl": float("nan"), "acc": 0.5, "bins": [1.0, float("-inf"), None]}, "n": 3}
    assert json_safe(record) == {"m": {"nll": None, "kl": None, "acc": 0.5, "bins": [1.0, None, None]}, "n": 3}


def test_evaluate_imports_neither_strategies_rerun_nor_export():
    code = (
        "import sys, torch\n"
        "from torch import nn\n"
        "from kdforge.evaluate.full import torch_profile\n"
        "torch_profile(nn.Linear(4, 3), {'input': torch.randn(8, 4)}, 4, warmup=1, repeats=2, max_seconds=0.1)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('kdforge.strategies', 'kdforge.rerun', "
        "'kdforge.export'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
