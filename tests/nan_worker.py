"""Train under torchrun where only rank 1's first batch holds NaN inputs: every rank must stop with the error."""

from __future__ import annotations

import json
import sys

import torch

from kdforge.data.base import ArrayDataset, make_loader
from kdforge.engine.distiller import Distiller
from kdforge.engine.trainer import Trainer, get_accelerator
from kdforge.errors import NonFiniteLossError
from kdforge.recipe import TrainConfig


def main(out: str, mode: str) -> None:
    """Write {rank: error message} after the fit fails on every rank."""
    torch.manual_seed(0)
    inputs, labels = torch.randn(64, 4), torch.arange(64) % 3
    # Unshuffled batches of 8 per process: rank 0 takes samples 0-7, rank 1 samples 8-15 first.
    if mode == "inputs":
        inputs[8:16] = float("nan")  # NaN loss and NaN gradients
    else:
        labels[8:16] = -100  # every label ignored: NaN loss, finite (zero) gradients
    data = ArrayDataset(inputs, labels)
    model = torch.nn.Linear(4, 3)
    trainer = Trainer(Distiller(model, None, {"ce": 1.0}), TrainConfig(epochs=1), run_dir=None)
    loader = make_loader(data, 8, shuffle=False, seed=0)
    rank = get_accelerator().process_index
    try:
        trainer.fit(loader)
        message = "finished"
    except NonFiniteLossError as err:
        message = str(err)
    with open(f"{out}.{rank}", "w") as f:
        json.dump({"rank": rank, "world": get_accelerator().num_processes, "message": message}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
