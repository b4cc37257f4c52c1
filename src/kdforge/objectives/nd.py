"""ND loss (Wang et al. 2023, "Improving Knowledge Distillation via Regularizing Feature Norm and Direction").

Per labelled sample i of class y: ``1 − ⟨s_i, c_y/‖c_y‖⟩ / max(‖s_i‖, ‖t_i‖)``, the mean over the batch — s the
student's embedding (projected onto the teacher's width when the two differ), t the teacher's, c_y the teacher's
class-mean embedding. Pulling s along the class-mean *direction* while dividing by the larger of the two norms
rewards a student norm above the teacher's. This is ``DirectNormLoss.project_center`` of the authors' code
(WangYZ1608/Knowledge-Distillation-via-ND, CIFAR/utils.py); their ``nd_loss_factor`` is the term's weight.

The authors compute the class means once, from the frozen teacher over the training set, before training
(emb_fea_distribution.py → center_emb_train.json). ``centers: running`` keeps them as running per-class means of
the teacher embeddings of the training batches seen so far (the current batch included, so each label has a mean):
the teacher is frozen, so after one epoch this is the mean over the training data the paper uses, and the buffers
are checkpointed so a resumed run goes on exactly. ``centers: PATH`` loads precomputed means instead (the authors'
JSON ``{"class": [floats]}``, a list of rows, or a (classes, width) tensor saved with torch.save), fixed for the run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.connectors import build_connector
from kdforge.errors import ConfigError, ShapeMismatchError
from kdforge.objectives.base import BuildContext, PairContext, register_objective
from kdforge.objectives.layers import default_layer_rules, feature_pairs, layer_pairs

DEFAULT_LAYERS = "embedding"
RUNNING = "running"


def nd_loss(student: Tensor, teacher: Tensor, centers: Tensor) -> Tensor:
    """Mean over rows of 1 − ⟨s, c/‖c‖⟩ / max(‖s‖, ‖t‖): (B, D) student, teacher and class-mean rows."""
    direction = F.normalize(centers, dim=1)
    scale = torch.maximum(student.norm(dim=1), teacher.norm(dim=1)).clamp_min(1e-12)
    return (1.0 - (student * direction).sum(1) / scale).mean()


class ClassMeans(nn.Module):
    """The teacher's class-mean embeddings (running, or fixed from a file) and the student's projection, if any."""

    def __init__(self, num_classes: int, width: int, projector: nn.Module | None = None, fixed: Tensor | None = None):
        super().__init__()
        self.projector = projector if projector is not None else nn.Identity()
        self.fixed = fixed is not None
        means = torch.zeros(num_classes, width) if fixed is None else fixed.detach().float().clone()
        self.register_buffer("means", means)
        # Integer counts stay exact however long the run; the means are updated in place (no growing sums).
        self.register_buffer("counts", torch.zeros(num_classes, dtype=torch.long))

    @torch.no_grad()
    def observe(self, embeddings: Tensor, labels: Tensor) -> None:
        """Fold one batch's teacher embeddings into the running means of their classes (every process's batch)."""
        sums = torch.zeros_like(self.means).index_add_(0, labels, embeddings.float())
        counts = torch.bincount(labels, minlength=self.counts.numel()).to(self.counts)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # Every process must hold the same means, or a checkpoint (saved by one) would not resume the others.
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        self.counts += counts
        seen = counts > 0
        # mean += (Σ_batch − n_batch·mean) / n_total: the exact running mean, without sums that grow with the run.
        step = (sums[seen] - counts[seen, None].to(sums) * self.means[seen]) / self.counts[seen, None].to(sums)
        self.means[seen] += step

    def forward(self, student: Tensor) -> Tensor:
        """The student's embedding in the teacher's width."""
        return self.projector(student)


def load_centers(path: str, num_classes: int, width: int) -> Tensor:
    """A (classes, width) tensor of precomputed class means from a JSON or torch file."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(
            f"objectives.nd.centers={path!r}: no such file; expected {RUNNING!r} or a file of the teacher's class "
            "means (JSON {class: [floats]} or a (classes, width) tensor saved with torch.save)"
        )
    if file.suffix.lower() == ".json":
        data: Any = json.loads(file.read_text())
    else:
        data = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(data, Mapping):
        missing = [c for c in range(num_classes) if str(c) not in data and c not in data]
        if missing:
            raise ConfigError(f"objectives.nd.centers: {path!r} has no mean for class {missing[0]} of {num_classes}")
        data = [data[str(c)] if str(c) in data else data[c] for c in range(num_classes)]
    centers = torch.stack([torch.as_tensor(row, dtype=torch.float32) for row in data])
    if tuple(centers.shape) != (num_classes, width):
        raise ShapeMismatchError(
            f"objectives.nd.centers: {path!r} holds means of shape {tuple(centers.shape)}; expected "
            f"({num_classes}, {width}): one row per class, the teacher embedding's width"
        )
    return centers


_needs, _resolve = default_layer_rules("nd", DEFAULT_LAYERS)


def _embedding_pair(term: str, params: Mapping[str, Any], student: Any, teacher: Any) -> tuple[Tensor, Tensor, str]:
    """The one (student, teacher) embedding pair ND compares, and its name for messages."""
    pairs = feature_pairs(term, params, student, teacher)
    if len(pairs) != 1:
        raise ConfigError(
            f"objectives.{term}.layers={params.get('layers')!r}: ND compares one embedding pair, got {len(pairs)}; "
            "expected layers: embedding or ['STUDENT_PATH -> TEACHER_PATH']"
        )
    (s_name, t_name), (s, t) = layer_pairs(term, params)[0], pairs[0]
    return s, t, f"student {s_name!r} {tuple(s.shape)} vs teacher {t_name!r} {tuple(t.shape)}"


def class_means(params: Mapping[str, Any], ctx: BuildContext) -> nn.Module:
    """A ``build`` rule: the class-mean buffers, sized (classes, teacher width), and a projector when widths differ."""
    s, t, names = _embedding_pair(ctx.term, params, ctx.student.features, ctx.teacher.features)
    if t.dim() != 2:
        raise ShapeMismatchError(
            f"objectives.{ctx.term}: {names}: expected the teacher's embedding (B, D); use layers: embedding"
        )
    if ctx.num_classes is None:
        raise ConfigError(f"objectives.{ctx.term}: needs the number of classes, but the student returned no logits")
    projector = None
    if s.shape[1:] != t.shape[1:]:
        try:
            projector = build_connector(params.get("connector") or "linear", s, t)
        except ShapeMismatchError as err:
            raise ShapeMismatchError(f"objectives.{ctx.term}: {names}: {err}") from None
    centers = params.get("centers") or RUNNING
    width = int(t.shape[1])
    fixed = None if centers == RUNNING else load_centers(centers, ctx.num_classes, width)
    return ClassMeans(ctx.num_classes, width, projector, fixed)


@register_objective("nd", teacher=False, labels=True, needs=_needs, inputs="pair", build=class_means, resolve=_resolve)
def nd(pair: PairContext, *, layers: Any = None, connector: str = "linear", centers: str = RUNNING) -> Tensor:
    """ND: align the student embedding with the teacher's class-mean direction, scaled by the larger norm.

    ``layers`` defaults to ``embedding`` (each network's classifier input). ``connector`` (linear) projects the
    student's embedding onto the teacher's width when they differ. ``centers``: ``running`` (per-class means of the
    teacher embeddings seen in training, checkpointed) or a file of precomputed means (the paper's). Samples whose
    label is negative (no label) are skipped. Weight: the authors' ``nd_loss_factor`` (1-4 on CIFAR-100).
    """
    params = {"layers": layers}
    s, t, names = _embedding_pair("nd", params, pair.student.features, pair.teacher.features)
    module = pair.connector
    if not isinstance(module, ClassMeans):
        raise ConfigError("objectives.nd: the class means are built on the first batch; call distiller.prepare(batch)")
    s = module(s).float()
    t = t.float()
    if s.dim() != 2 or s.shape != t.shape:
        raise ShapeMismatchError(f"objectives.nd: {names} after the projector {tuple(s.shape)}; expected (B, D) both")
    if pair.labels is None:
        raise ConfigError("objectives.nd needs labels; the batch has none")
    labels = pair.labels.reshape(-1).long().to(s.device)
    keep = labels >= 0
    if module.training and not module.fixed:
        module.observe(t[keep].detach(), labels[keep])
    if not bool(keep.any()):
        return s.sum() * 0.0  # no labelled sample: nothing to align, but the graph stays connected
    return nd_loss(s[keep], t[keep], module.means[labels[keep]])
