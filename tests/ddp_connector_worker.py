"""Under torchrun (2 ranks, gloo): train `hint` through a linear connector; write each rank's weights."""

from __future__ import annotations

import json
import sys
import warnings

import torch

from kdforge.data import load_dataset, make_loader
from kdforge.engine.distiller import Distiller
from kdforge.engine.trainer import Trainer, get_accelerator
from kdforge.models import build_model
from kdforge.recipe import TrainConfig

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
bundle = load_dataset("digits", seed=0)
torch.manual_seed(0)
student = build_model("mlp", 10, bundle.input_shape, hidden=(32,))
teacher = build_model("mlp", 10, bundle.input_shape, hidden=(64,))
distiller = Distiller(student, teacher, {"ce": 1.0, "hint": {"layers": ["2 -> 2"], "connector": "linear"}})
cfg = TrainConfig(optimizer={"name": "adamw", "lr": 0.01}, epochs=1, max_steps=5, log_every=1)
Trainer(distiller, cfg, run_dir=None, seed=0).fit(make_loader(bundle.train, 32, shuffle=True, seed=0))
connector = distiller.connectors["hint"][0]
rank = get_accelerator().process_index
out = {
    "rank": rank,
    "connector": [float(v) for v in connector.weight.double().flatten()[:64]],
    "student_sum": float(sum(p.double().sum() for p in student.parameters())),
}
with open(f"{sys.argv[1]}.{rank}", "w") as f:
    json.dump(out, f)
