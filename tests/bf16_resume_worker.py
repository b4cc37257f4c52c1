"""Train hint/crd/vid/ofa/nd under bf16 autocast, stop at step 8 like Ctrl-C, resume; print what differs as JSON."""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from kdforge import Distiller
from kdforge.data import load_dataset, make_loader
from kdforge.engine.callbacks import Callback
from kdforge.engine.rundir import RunDir
from kdforge.engine.trainer import Trainer
from kdforge.errors import Interrupted
from kdforge.models import build_model
from kdforge.recipe import TrainConfig

warnings.filterwarnings("ignore")
DIGITS = load_dataset("digits", seed=0)
OBJECTIVES = {
    "ce": 1.0,
    "hint": {"layers": "last", "connector": "conv1x1"},
    "crd": {"weight": 0.8, "nce_k": 64},
    "vid": {"layers": "last"},
    "ofa": 1.0,
    "nd": 1.0,  # equal widths: a buffer-only module (class means)
}


class StopAt(Callback):
    """Ask the loop to stop after step 7, as Ctrl-C does: it saves a checkpoint and raises Interrupted."""

    def on_batch_end(self, trainer: Trainer, out: object) -> None:
        if trainer.state.step == 7:
            trainer.stop.signum = signal.SIGINT


def fit(folder: Path, resume: bool = False, stop: bool = False) -> tuple[Distiller, int | None]:
    """Two epochs of the same seeded run (stopped, or resumed, when asked)."""
    torch.manual_seed(0)
    teacher = build_model("cnn", 10, DIGITS.input_shape, widths=(8, 16))
    torch.manual_seed(1)
    student = build_model("cnn", 10, DIGITS.input_shape, widths=(8, 16))
    distiller = Distiller(student, teacher, OBJECTIVES)
    cfg = TrainConfig(optimizer={"name": "adamw", "lr": 0.01}, epochs=2, mixed_precision="bf16")
    train = make_loader(DIGITS.train, 128, shuffle=True, seed=0)
    trainer = Trainer(
        distiller, cfg, run_dir=RunDir(folder), seed=0, resume=resume, callbacks=[StopAt()] if stop else []
    )
    return distiller, trainer.fit(train, {}).resumed_from


def main() -> None:
    """Compare an uninterrupted run with a stopped-and-resumed one, module by module."""
    with tempfile.TemporaryDirectory() as tmp:
        straight, _ = fit(Path(tmp) / "straight")
        try:
            fit(Path(tmp) / "resumed", stop=True)
            sys.exit("the run was not interrupted")
        except Interrupted:
            pass
        resumed, step = fit(Path(tmp) / "resumed", resume=True)
    differ = {}
    for name in ("nd", "hint", "vid", "ofa", "crd"):
        a, b = straight.connectors[name].state_dict(), resumed.connectors[name].state_dict()
        bad = [k for k in a if k not in b or not torch.equal(a[k], b[k])]
        if bad:
            differ[name] = bad
    s_a, s_b = straight.student.state_dict(), resumed.student.state_dict()
    bad = [k for k in s_a if not torch.equal(s_a[k], s_b[k])]
    if bad:
        differ["student"] = bad
    print(json.dumps({"differ": differ, "resumed_from": step}))


if __name__ == "__main__":
    main()
