"""Why `objectives.functional.log_softmax_rows` exists: PyTorch's CPU log_softmax over a small last dimension.

Times torch.log_softmax(x, -1) against the same values computed over dim 0 of the transposed view, for 128 rows and
several class counts. Writes benchmarks/results/softmax_rows.json. Usage: python benchmarks/softmax_rows.py
"""

from __future__ import annotations

import timeit

import torch

from kdforge.objectives.functional import log_softmax_rows

from common import save


def best_us(fn: object, number: int = 1000) -> float:
    """Best of 5 repeats, microseconds per call."""
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6  # type: ignore[arg-type]


def main() -> None:
    """Measure both layouts and the helper for each class count."""
    torch.manual_seed(0)
    rows = {}
    for classes in (7, 10, 15, 16, 20, 100):
        x = torch.randn(128, classes)
        rows[str(classes)] = {
            "last_dim_us": best_us(lambda x=x: torch.log_softmax(x, -1)),
            "transposed_us": best_us(lambda x=x: torch.log_softmax(x.t(), 0).t()),
            "log_softmax_rows_us": best_us(lambda x=x: log_softmax_rows(x)),
        }
        print(classes, {k: round(v, 1) for k, v in rows[str(classes)].items()})
    save("softmax_rows", {"rows": 128, "by_classes": rows}, merge_key=None)


if __name__ == "__main__":
    main()
