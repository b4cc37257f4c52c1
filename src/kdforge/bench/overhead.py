"""The cost of distilling, measured side by side in one process: step-time and activation-memory ratios."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from kdforge.data import load_dataset
from kdforge.data.base import subset
from kdforge.engine.distiller import Distiller
from kdforge.models import build_model
from kdforge.signals import Needs
from kdforge.teachers import Live, Precomputed

KD = {"ce": 0.5, "kd": {"weight": 0.5, "T": 4}}


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _step(distiller: Distiller, opt: torch.optim.Optimizer, batch: dict[str, Any]) -> Callable[[], None]:
    def run() -> None:
        distiller(batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return run


def _plain_kd_step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: dict[str, Any], t: torch.Tensor):
    """The same KD step in plain PyTorch: the floor any library pays for the KD term."""

    def run() -> None:
        z = model(batch["input"])
        kd = F.kl_div(F.log_softmax(z / 4, -1), F.softmax(t / 4, -1), reduction="batchmean") * 16
        (0.5 * F.cross_entropy(z, batch["label"]) + 0.5 * kd).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return run


def saved_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of the tensors autograd keeps for the backward of ``fn()``'s loss (the activation memory)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn()
    loss.backward()
    return total


def measure(student: tuple[str, dict[str, Any]], seed: int, steps: int = 40, warmup: int = 5, batch_size: int = 128):
    """Median step times (ms) of CE, teacher forward, KD (live, precomputed, plain PyTorch) and their ratios."""
    torch.manual_seed(seed)
    bundle = load_dataset("fashion_mnist", seed=0)
    n = (steps + warmup) * batch_size
    data = subset(bundle.train, list(range(n)))
    batches = [data.__getitems__(list(range(i, i + batch_size))) for i in range(0, n, batch_size)]
    random.Random(seed).shuffle(batches)
    shape = bundle.input_shape
    teacher = Live(build_model("cnn", 10, shape))
    cached = Precomputed.from_live(teacher, data)
    name, params = student
    models = {k: build_model(name, 10, shape, **params) for k in ("ce", "kd", "precomputed", "plain")}
    for m in models.values():
        m.load_state_dict(models["ce"].state_dict())
    runs = {
        "ce": Distiller(models["ce"], None, {"ce": 1.0}),
        "kd": Distiller(models["kd"], teacher, KD),
        "precomputed": Distiller(models["precomputed"], cached, KD),
    }
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-3) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in ("ce", "teacher", "kd", "precomputed", "plain")}
    for i, batch in enumerate(batches):
        ops = {
            **{k: _step(d, opts[k], batch) for k, d in runs.items()},
            "teacher": lambda b=batch: teacher.signals(b, Needs(teacher_logits=True)),
            "plain": _plain_kd_step(models["plain"], opts["plain"], batch, cached.logits[batch["index"]]),
        }
        # A fresh order each iteration: whatever follows the teacher's forward meets cold caches, for every variant.
        order = list(ops)
        random.Random(seed * 100_003 + i).shuffle(order)
        sample = {k: _timed(ops[k]) for k in order}
        if i >= warmup:
            for k, v in sample.items():
                times[k].append(v)
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    batch = batches[0]
    memory = {
        "ce": saved_bytes(lambda: runs["ce"](batch).loss),
        "kd": saved_bytes(lambda: runs["kd"](batch).loss),
    }
    return {
        "metrics": {
            "kd_over_ce_plus_teacher": ms["kd"] / (ms["ce"] + ms["teacher"]),
            "precomputed_over_ce": ms["precomputed"] / ms["ce"],
            "plain_pytorch_kd_over_ce": ms["plain"] / ms["ce"],
            "activation_memory_kd_over_ce": memory["kd"] / memory["ce"],
            "ce_step_ms": ms["ce"],
            "kd_step_ms": ms["kd"],
        },
        "median_ms": ms,
        "saved_bytes": memory,
        "budget": {"steps": steps, "warmup": warmup, "batch": batch_size},
    }
