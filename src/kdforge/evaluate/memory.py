"""Peak memory of tensor code on any device: live tensor bytes counted through the dispatcher.

CPU allocations are invisible to ``tracemalloc`` and torch's allocator statistics are CUDA-only, so this counts the
storages created under a dispatch mode and frees them as they die; the peak is what the code held at once.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakBytes(TorchDispatchMode):
    """Bytes of the storages created inside this mode, each counted until it is freed; records the peak."""

    def __init__(self, *outside: Tensor) -> None:
        super().__init__()
        # Storages made before the mode (the inputs) are not counted, even when an op returns a view of one.
        self.seen = {t.untyped_storage()._cdata for t in outside}
        self.live = 0
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor):
                self._track(t.untyped_storage())
        return out

    def _track(self, storage: torch.UntypedStorage) -> None:
        key, size = storage._cdata, storage.nbytes()
        if key in self.seen:
            return
        self.seen.add(key)
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, size)

    def _free(self, key: int, size: int) -> None:
        self.seen.discard(key)
        self.live -= size


def peak_backward_bytes(loss: Callable[[Tensor], Tensor], x: Tensor, *inputs: Tensor) -> int:
    """Peak live bytes of ``loss(x).backward()`` (x's .grad included), not counting ``x`` and ``inputs``."""
    x.grad = None
    with PeakBytes(x, *inputs) as mode:
        loss(x).backward()
    x.grad = None
    return mode.peak
