"""A plain multilayer perceptron over the flattened input."""

from __future__ import annotations

import math

from torch import nn

from kdforge.registry import MODELS


@MODELS.register("mlp")
def mlp(
    num_classes: int,
    input_shape: tuple[int, ...],
    hidden: tuple[int, ...] = (128,),
    dropout: float = 0.0,
) -> nn.Module:
    """Flatten, then Linear-ReLU (plus Dropout when ``dropout`` > 0) per hidden width, then a Linear head."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(int(d) for d in input_shape)
    for h in hidden:
        layers += [nn.Linear(width, int(h)), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = int(h)
    layers.append(nn.Linear(width, num_classes))
    model = nn.Sequential(*layers)
    # Each hidden width ends at its activation: the features an automatic layer map pairs.
    model.feature_stages = [str(i) for i, m in enumerate(layers) if isinstance(m, nn.ReLU)]
    return model
