"""One flat row per model (teacher first) from a run's evaluation record, or from what the run recorded."""

from __future__ import annotations

import re
from typing import Any

from kdforge.reporting.collect import RunData

METRICS = ("accuracy", "top5", "macro_f1", "agreement", "kl", "ece", "nll", "brier", "perplexity")
_BATCH_LATENCY = re.compile(r"latency_ms_b(\d+)$")


def model_rows(run: RunData) -> list[dict[str, Any]]:
    """Rows ``{run, model, <metrics>, params, size_bytes, flops, latencies, throughput_per_s, batch_size, busy}``."""
    if run.record is not None:
        models = run.record["models"].items()
        return [model_row(run.name, name, m.get("metrics"), m.get("profile")) for name, m in models]
    rows = []
    teacher = next((r for r in run.summary.get("rows") or [] if r.get("name") == "teacher"), None)
    if teacher is not None:
        size = teacher.get("size_kb")
        profile = {**teacher, "size_bytes": None if size is None else size * 1024}
        rows.append(model_row(run.name, "teacher", teacher, profile))
    rows += [model_row(run.name, s.name, s.summary.get("test"), s.summary.get("profile")) for s in run.students]
    return rows


def model_row(run: str, model: str, metrics: dict[str, Any] | None, profile: dict[str, Any] | None) -> dict[str, Any]:
    """One model's flat row from its metrics and profile (a record's entry, or what the run recorded)."""
    metrics, profile = metrics or {}, profile or {}
    batch = profile.get("batch_size")
    if batch is None:  # a run's own profile names its batch in the key: latency_ms_b256, latency_ms_b8
        sizes = [int(m.group(1)) for k in profile if (m := _BATCH_LATENCY.match(k)) and m.group(1) != "1"]
        batch = max(sizes) if sizes else None
    return {
        "run": run,
        "model": model,
        **{k: metrics.get(k) for k in METRICS},
        "params": profile.get("params"),
        "size_bytes": profile.get("size_bytes"),
        "flops": profile.get("flops_per_sample"),
        "latency_ms_b1": profile.get("latency_ms_b1"),
        "latency_ms_b1_p95": profile.get("latency_ms_b1_p95"),
        "latency_ms_bN": profile.get("latency_ms_bN", profile.get(f"latency_ms_b{batch}")),
        "throughput_per_s": profile.get("throughput_per_s"),
        "batch_size": batch,
        "busy": bool(profile.get("busy")),
    }
