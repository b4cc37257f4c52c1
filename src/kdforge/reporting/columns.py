"""The results table's columns (key, heading), shared by `kdforge report` and `kdforge eval`'s terminal table."""

from __future__ import annotations

from collections.abc import Sequence

CLASSIFICATION_COLUMNS = (
    ("accuracy", "accuracy"),
    ("top5", "top-5"),
    ("macro_f1", "macro-F1"),
    ("agreement", "agreement"),
    ("kl", "KL(T‖S)"),
    ("ece", "ECE"),
    ("nll", "NLL"),
    ("brier", "Brier"),
    ("params", "params"),
    ("size_bytes", "size"),
    ("flops", "FLOPs/sample"),
    ("latency_ms_b1", "ms/sample b1"),
    ("latency_ms_b1_p95", "b1 p95"),
    ("latency_ms_bN", "ms/sample bN"),
    ("throughput_per_s", "throughput/s"),
)
LM_COLUMNS = (
    ("perplexity", "perplexity"),
    ("nll", "NLL/token"),
    ("accuracy", "token acc"),
    ("agreement", "token agreement"),
    ("kl", "KL(T‖S)/token"),
    ("params", "params"),
    ("size_bytes", "size"),
    ("flops", "FLOPs/sequence"),
    ("latency_ms_b1", "ms/sequence b1"),
    ("latency_ms_b1_p95", "b1 p95"),
    ("latency_ms_bN", "ms/sequence bN"),
    ("throughput_per_s", "sequences/s"),
)


def headings(columns: Sequence[tuple[str, str]], batches: Sequence[int]) -> list[str]:
    """The columns' headings, ``bN`` named after the large batch when every row was timed at the same one."""
    sizes = sorted(set(batches))
    return [t.replace("bN", f"b{sizes[0]}") if len(sizes) == 1 else t for _, t in columns]
