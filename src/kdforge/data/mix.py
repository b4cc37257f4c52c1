"""Mixup as a batch transform (Zhang et al. 2018): each sample mixed with another sample of the same batch.

For function matching the teacher and the student see the very same mixed image, so the draws only have to be
reproducible: λ and the partner of each sample are a pure function of (seed, step, the batch's first sample id),
which a resumed run meets again.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kdforge.errors import ConfigError


class Mixup:
    """x' = λ·x_i + (1−λ)·x_π(i) with λ ~ Beta(α, α) per sample and π a random permutation of the batch."""

    def __init__(self, alpha: float, seed: int = 0):
        if alpha <= 0:
            raise ConfigError(f"strategy.mixup={alpha}: expected a Beta concentration > 0 (0 turns mixup off)")
        self.alpha, self.seed = float(alpha), int(seed)
        self.mixed = 0

    def __call__(self, batch: dict[str, Any], step: int) -> dict[str, Any]:
        """The batch with mixed inputs and no labels (a mixed image has no single class)."""
        x = batch["input"]
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise ConfigError(
                f"strategy.mixup needs real-valued inputs (images, features); got {getattr(x, 'dtype', type(x))} "
                "inputs (token ids cannot be averaged): set strategy.mixup=0"
            )
        first = int(torch.as_tensor(batch["index"]).reshape(-1)[0]) if "index" in batch else 0
        rng = np.random.default_rng([self.seed, step, first])
        n = x.shape[0]
        lam = torch.from_numpy(rng.beta(self.alpha, self.alpha, size=n)).to(x.dtype).to(x.device)
        partner = torch.from_numpy(rng.permutation(n)).to(x.device)
        shape = (n,) + (1,) * (x.dim() - 1)
        mixed = lam.reshape(shape) * x + (1 - lam.reshape(shape)) * x[partner]
        self.mixed += n
        out = {k: v for k, v in batch.items() if k != "label"}
        out["input"] = mixed
        return out

    def stats(self) -> dict[str, Any]:
        """What the training log records about the transform."""
        return {"mixup_alpha": self.alpha, "mixed_samples": self.mixed}
