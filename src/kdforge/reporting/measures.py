"""Pure arithmetic of the report: the Pareto frontier of cost against score, confusion matrices normalised per class."""

from __future__ import annotations

from collections.abc import Sequence


def pareto_front(points: Sequence[tuple[float, float]], higher_is_better: bool = True) -> list[int]:
    """Indices of the points no other point dominates (cost no higher, score no worse, one strictly), by cost."""
    sign = 1.0 if higher_is_better else -1.0
    front = []
    for i, (cost, score) in enumerate(points):
        dominated = any(
            c <= cost and sign * s >= sign * score and (c < cost or sign * s > sign * score)
            for j, (c, s) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -sign * points[i][1]))


def normalise_rows(matrix: Sequence[Sequence[float]]) -> list[list[float]]:
    """Each row divided by its sum (the share of a true class given to each prediction); an empty row stays zeros."""
    out = []
    for row in matrix:
        total = float(sum(row))
        out.append([float(v) / total if total > 0 else 0.0 for v in row])
    return out
