"""Optimizers and learning-rate schedules as pure functions of the recipe."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from kdforge.recipe import OptimizerConfig, ScheduleConfig


def build_optimizer(params: Iterable[nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or AdamW from the recipe."""
    params = list(params)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, total_steps: int, steps_per_epoch: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (linear warm-up, then the schedule)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "step":
        epoch = step / max(steps_per_epoch, 1)
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    span = max(total_steps - cfg.warmup_steps, 1)
    t = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int, cfg: ScheduleConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR driven by ``lr_factor``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, steps_per_epoch, cfg))
