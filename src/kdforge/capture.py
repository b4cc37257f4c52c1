"""Recorder: capture named intermediate tensors of any model by module path, without editing it.

A path names a module's output (``layer3``); ``layer3:input`` names its first input (the features a classifier head
sees: ``fc:input``) and ``attn:1`` the element 1 of a module that returns a tuple (attention weights).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor, nn

from kdforge.errors import ConfigError
from kdforge.registry import closest


def _first_tensor(output: Any) -> Tensor:
    # Modules such as attention blocks return tuples; the first tensor is the hidden state by convention.
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, Tensor):
                return item
    if isinstance(output, dict):
        for item in output.values():
            if isinstance(item, Tensor):
                return item
    raise TypeError(f"Recorder: module returned {type(output).__name__}, which holds no tensor")


def split_path(path: str) -> tuple[str, str | int | None]:
    """``'fc:input'`` → ('fc', 'input'); ``'attn:1'`` → ('attn', 1); ``'layer3'`` → ('layer3', None)."""
    module, _, part = path.partition(":")
    if not part:
        return module, None
    return module, int(part) if part.isdigit() else part


def _select(path: str, part: str | int | None, inputs: Any, output: Any) -> Tensor:
    if part is None:
        return _first_tensor(output)
    if part == "input":
        if not any(isinstance(x, Tensor) for x in inputs):
            raise ConfigError(
                f"Recorder: {path!r}: the module was called without a positional tensor (keyword arguments only), so "
                "its input cannot be recorded; record the output of the module before it instead"
            )
        return _first_tensor(inputs)
    if isinstance(part, int) and not isinstance(output, (tuple, list)):
        raise ConfigError(
            f"Recorder: {path!r}: element {part} of the output was asked for, but the module returns a "
            f"{type(output).__name__}, not a tuple; record {path.partition(':')[0]!r} itself"
        )
    if isinstance(part, int) and part < len(output):
        got = output[part]
        if isinstance(got, Tensor):
            return got
        raise ConfigError(
            f"Recorder: {path!r}: element {part} of the module's output is {type(got).__name__}, not a tensor "
            "(attention weights need the eager attention implementation)"
        )
    if isinstance(part, int):
        raise ConfigError(f"Recorder: {path!r}: the module's output has {len(output)} elements; expected N < that")
    raise ConfigError(f"Recorder: {path!r}: expected ':input' or ':N' (an element of a tuple output) after the path")


class Recorder:
    """Forward hooks on named submodules; ``tensors`` holds the outputs of the latest forward."""

    def __init__(self, model: nn.Module, paths: Iterable[str]):
        modules = dict(model.named_modules())
        self.paths = tuple(dict.fromkeys(paths))
        for path in self.paths:
            module_path, part = split_path(path)
            if part is not None and part != "input" and not isinstance(part, int):
                raise ConfigError(f"Recorder: {path!r}: expected ':input' or ':N' after the module path")
            if module_path not in modules:
                valid = [name for name in modules if name]
                near = closest(path, valid, n=5)
                hint = f" Closest valid paths: {', '.join(near)}." if near else ""
                raise ConfigError(
                    f"Recorder: {type(model).__name__} has no module {module_path!r}.{hint} "
                    f"It has {len(valid)} named modules (e.g. {', '.join(valid[:8])})"
                )
        self.tensors: dict[str, Tensor] = {}
        self._handles = [modules[split_path(p)[0]].register_forward_hook(self._hook(p)) for p in self.paths]

    def _hook(self, path: str):
        part = split_path(path)[1]

        def store(_module: nn.Module, inputs: Any, output: Any) -> None:
            # A copy: the next layer may change the output in place (ReLU(inplace=True) after a Linear), and the
            # feature must be the module's own output, not what is left of it after the forward.
            self.tensors[path] = _select(path, part, inputs, output).clone()

        return store

    def clear(self) -> None:
        """Drop the tensors of the previous forward so they can be freed."""
        self.tensors = {}

    def remove(self) -> None:
        """Detach every hook; the model is left exactly as it was."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.tensors = {}

    def __enter__(self) -> Recorder:
        self.clear()
        return self

    def __exit__(self, *_exc: object) -> None:
        # A `with` block is a one-shot capture: the model leaves it without hooks, the tensors stay readable.
        tensors = self.tensors
        self.remove()
        self.tensors = tensors
