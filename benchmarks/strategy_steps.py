"""Step time of every strategy next to a plain KD step of the same student, side by side in one process.

One training step = the Distiller's forward (teacher signals, every student, every term), backward, AdamW step and
the teachers' step hooks (the EMA update). Arms are interleaved and repeated; figures are medians of the repeats.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from kdforge.data.base import with_views
from kdforge.data.mix import Mixup
from kdforge.data.recipe_data import load_data
from kdforge.engine.distiller import Distiller
from kdforge.models import build_model
from kdforge.recipe import validate
from kdforge.strategies.common import per_student
from kdforge.strategies.mutual import peer_terms
from kdforge.teachers import Live
from kdforge.teachers.ema import Ema
from kdforge.teachers.ensemble import Ensemble

BATCH = 128
KD = {"ce": 0.5, "kd": {"weight": 0.5, "T": 4.0}}


def _model(name: str, seed: int, **params: Any) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, 10, (1, 28, 28), **params)


def _mlp(seed: int = 0, hidden: tuple[int, ...] = (256,)) -> torch.nn.Module:
    return _model("mlp", seed, hidden=hidden)


def _cnn(seed: int = 0) -> torch.nn.Module:
    return _model("cnn", seed)


def _stepper(distiller: Distiller, transform: Callable[[dict], dict] | None = None) -> Callable[[dict, int], None]:
    """One optimizer step of ``distiller`` on a batch (with the teachers' step hooks)."""
    optimizer = torch.optim.AdamW(distiller.parameters_to_train(), lr=1e-3)
    distiller.train()

    def step(batch: dict[str, Any], i: int) -> None:
        if transform is not None:
            batch = transform(batch, i)
        out = distiller(batch, step=i)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for teacher in distiller.teachers.values():
            teacher.on_optimizer_step(i)

    return step


def measure(repeats: int = 7, steps: int = 10) -> dict[str, Any]:
    """Median seconds per step of every arm, and each strategy's ratio to its reference step."""
    bundle = load_data(validate({"student": {"name": "mlp"}, "data": {"name": "fashion_mnist"}}))
    # The mean-teacher recipe's views: the plain image for the teacher, a flip + crop for the student.
    train = with_views(bundle.train, {"strong": "flip_crop"})
    batch = train.__getitems__(list(range(BATCH)))
    mt_batch = {**batch, "label": torch.where(torch.arange(BATCH) < 16, batch["label"], -100)}
    ema = Ema(0.99)
    peers = peer_terms(["s0", "s1"], {"objective": "kd", "T": 1.0, "alpha": 1.0}, 1.0)
    mutual_terms = {**per_student({"ce": 1.0}, ["s0", "s1"], None), **peers}
    pseudo = {"objective": "pseudo_label", "threshold": 0.95, "pair": "student@strong <- teacher"}
    arms: dict[str, tuple[Callable[[dict, int], None], dict]] = {
        "plain_kd": (_stepper(Distiller(_mlp(), Live(_cnn()), KD)), batch),
        "ce_one_student": (_stepper(Distiller(_mlp(), None, {"ce": 1.0})), batch),
        "mutual_2": (_stepper(Distiller({"s0": _mlp(0), "s1": _mlp(1)}, None, mutual_terms)), batch),
        "born_again_link": (_stepper(Distiller(_mlp(1), Live(_mlp(0)), KD)), batch),
        "assistant_last_link": (_stepper(Distiller(_mlp(1, (8,)), Live(_mlp(0)), KD)), batch),
        "kd_tiny_from_cnn": (_stepper(Distiller(_mlp(1, (8,)), Live(_cnn()), KD)), batch),
        "multi_teacher_3": (
            _stepper(Distiller(_mlp(), Ensemble([Live(_cnn(s)) for s in range(3)], aggregate="mean"), KD)),
            batch,
        ),
        "function_matching": (
            _stepper(Distiller(_mlp(), Live(_cnn()), {"kd": {"T": 1.0, "alpha": 1.0}}), Mixup(1.0, 0)),
            batch,
        ),
        "kd_label_free": (_stepper(Distiller(_mlp(), Live(_cnn()), {"kd": {"T": 1.0, "alpha": 1.0}})), batch),
        # The mean-teacher recipe's student, against a plain CE step of the same student on the same batch.
        "ce_mt_batch": (_stepper(Distiller(_mlp(), None, {"ce": 1.0})), mt_batch),
        "mean_teacher": (
            _stepper(Distiller(_mlp(), ema, {"ce": 1.0, "pseudo": pseudo}, views=("strong",))),
            mt_batch,
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in arms}
    ema_times: list[float] = []
    for step, b in arms.values():
        for i in range(3):  # warm-up: allocator, first-batch checks, connector/recorder set-up
            step(b, i)
    for r in range(repeats):
        for name, (step, b) in arms.items():
            started = time.perf_counter()
            for i in range(steps):
                step(b, 3 + r * steps + i)
            times[name].append((time.perf_counter() - started) / steps)
        started = time.perf_counter()
        for i in range(steps):
            ema.on_optimizer_step(i)
        ema_times.append((time.perf_counter() - started) / steps)
    median = {name: statistics.median(values) for name, values in times.items()}
    ema_update = statistics.median(ema_times)
    return {
        "setting": f"Fashion-MNIST batch {BATCH}, mlp[256] student, CNN teachers (untrained weights: time only), "
        f"mean teacher: 16 labelled + 112 unlabeled rows; medians of {repeats} interleaved repeats of {steps} steps, "
        f"{torch.get_num_threads()} threads",
        "seconds_per_step": median,
        "ratios": {
            "mutual_2 / (2 x ce_one_student)": median["mutual_2"] / (2 * median["ce_one_student"]),
            "born_again_link / ce_one_student": median["born_again_link"] / median["ce_one_student"],
            "assistant (both links) / direct kd_tiny_from_cnn": (median["plain_kd"] + median["assistant_last_link"])
            / median["kd_tiny_from_cnn"],
            "multi_teacher_3 / plain_kd": median["multi_teacher_3"] / median["plain_kd"],
            "function_matching / kd_label_free": median["function_matching"] / median["kd_label_free"],
            "mean_teacher / ce_mt_batch": median["mean_teacher"] / median["ce_mt_batch"],
        },
        "ema_update_s": ema_update,
        "ema_update_share_of_mean_teacher_step": ema_update / median["mean_teacher"],
    }
