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


def head_path(model: nn.Module) -> str:
    """The path of the model's classifier head: its last Linear."""
    heads = [path for path, m in model.named_modules() if isinstance(m, nn.Linear) and path]
    if not heads:
        raise ConfigError(f"{type(model).__name__} has no Linear head whose input is its embedding; name the layer")
    return heads[-1]


def embedding_path(model: nn.Module) -> str:
    """The pooled features the classifier head sees: ``'<head>:input'``, or the input of the dropout before it.

    The head is the model's last Linear. When the module registered just before it under the same parent is a
    Dropout (kdforge's cnn, BertForSequenceClassification), its input is taken instead: the features before dropout,
    which is what the references compare (a student's dropped-out embedding would distort every relation).
    """
    head = head_path(model)
    parent_path, _, name = head.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    siblings = list(parent.named_children())
    names = [n for n, _ in siblings]
    position = names.index(name)
    if position > 0 and isinstance(siblings[position - 1][1], nn.Dropout):
        before = siblings[position - 1][0]
        return f"{parent_path + '.' if parent_path else ''}{before}:input"
    return f"{head}:input"
