"""What distilling costs over training alone: step-time and activation-memory ratios, side by side in one process."""

from __future__ import annotations

from kdforge.bench.suite import Cell, Column, Suite, register_suite

STUDENTS = {"mlp256": ("mlp", {"hidden": (256,)}), "cnn_small": ("cnn", {"widths": (16, 32, 64)})}


def _probe(student: str):
    def run(seed: int) -> dict:
        from kdforge.bench.overhead import measure

        return measure(STUDENTS[student], seed)

    return run


def cells() -> list[Cell]:
    """One probe per student."""
    return [Cell(f"cnn->{s}", {"pair": f"cnn->{s}"}, probe=_probe(s)) for s in STUDENTS]


SUITE = register_suite(
    Suite(
        name="overhead",
        description="Fashion-MNIST batches of 128, the demo's CNN teacher; medians of 40 steps after 5 warm-up",
        cells=cells,
        columns=(
            Column("kd_over_ce_plus_teacher", "KD step / (CE step + teacher fwd)"),
            Column("precomputed_over_ce", "precomputed KD / CE step"),
            Column("plain_pytorch_kd_over_ce", "plain PyTorch KD / CE step"),
            Column("activation_memory_kd_over_ce", "activation memory KD / CE"),
        ),
        metric="",
    )
)
