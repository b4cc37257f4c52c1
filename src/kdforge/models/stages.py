"""Feature stages: the module paths whose outputs an automatic layer map pairs, for any network."""

from __future__ import annotations

from torch import nn

from kdforge.errors import ConfigError

STAGES_ATTRIBUTE = "feature_stages"  # a model (or its builder) may name its stages itself


def _blocks(model: nn.Module) -> list[str]:
    """The blocks of the largest ModuleList of same-class modules: a transformer's layers, a ResNet-like stack."""
    best: tuple[int, list[str]] = (0, [])
    for path, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        kinds = {type(child) for child in module}
        if len(kinds) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size > best[0]:
            best = (size, [f"{path}.{i}" if path else str(i) for i in range(len(module))])
    return best[1]


def feature_stages(model: nn.Module) -> list[str]:
    """Stage paths, shallow to deep: ``model.feature_stages`` when set, else the blocks of its largest layer stack."""
    named = getattr(model, STAGES_ATTRIBUTE, None)
    if named:
        return list(named)
    blocks = _blocks(model)
    if blocks:
        return blocks
    raise ConfigError(
        f"{type(model).__name__} names no feature stages and has no stack of same-class blocks; write the layer map "
        "out (layers: ['STUDENT_PATH -> TEACHER_PATH'])"
    )


def embedding_path(model: nn.Module) -> str:
    """The input of the model's last Linear (its classifier head): the pooled features, ``'<head>:input'``."""
    heads = [path for path, m in model.named_modules() if isinstance(m, nn.Linear) and path]
    if not heads:
        raise ConfigError(f"{type(model).__name__} has no Linear head whose input is its embedding; name the layer")
    return f"{heads[-1]}:input"
