"""CRD (Tian et al., ICLR 2020): contrast each student embedding with its teacher's against memory-bank negatives.

Built on the first batch: linear heads to ``feat_dim`` with L2 norm for the student (``embed_s``) and the teacher
(``embed_t``), and two memory banks of ``data_size`` rows (float32 buffers, checkpointed with the run), initialised
uniform in ±1/√(feat_dim/3) as RepDistiller's ``ContrastMemory``. Per batch, each sample i is contrasted with
``nce_k`` rows drawn uniformly from the bank's other rows:

    P(i, j) = exp(⟨bank[j], v_i⟩ / nce_t) / Z,   Z = mean(exp(·/nce_t) of the first batch) · data_size (then frozen)
    loss    = −(1/B) Σ_i [ log P(i,i)/(P(i,i) + k/n) + Σ_neg log (k/n)/(P(i,j) + k/n) ]      (paper Eq. 18, n = rows)

once with the student embedding as anchor against the teacher bank and once the other way round; the two are summed.
After the loss each sample's rows move toward its new embeddings: bank[i] ← normalize(m·bank[i] + (1 − m)·v_i).

``nce_k`` (16384, the paper's) is clipped to ``data_size − 1`` for smaller data sets, with a warning. The negatives
come from a generator seeded by ``seed``, the optimizer step and the sample ids, so a resumed run draws the same ones.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdforge.errors import ConfigError, ShapeMismatchError
from kdforge.objectives.base import BuildContext, PairContext, register_objective
from kdforge.objectives.layers import default_layer_rules, feature_pairs, layer_pairs, with_default_layers

_BANKS = ("memory_s", "memory_t", "z")


class CRDModule(nn.Module):
    """The two embedding heads, the two memory banks and the frozen normalisation constants Z of one CRD term."""

    def __init__(
        self, s_dim: int, t_dim: int, feat_dim: int, data_size: int, nce_k: int, sample_ids: Tensor | None = None
    ):
        super().__init__()
        self.embed_s = nn.Linear(s_dim, feat_dim)
        self.embed_t = nn.Linear(t_dim, feat_dim)
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        # Rows of the student's (memory_v1 in the reference) and the teacher's (memory_v2) past embeddings.
        self.register_buffer("memory_s", torch.rand(data_size, feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_t", torch.rand(data_size, feat_dim).mul_(2 * stdv).add_(-stdv))
        # Z for the student anchor and for the teacher anchor; negative until the first batch sets them.
        self.register_buffer("z", torch.full((2,), -1.0))
        self.nce_k = nce_k
        # Sample id → bank row. With the training ids known the bank has exactly one row per training sample, so no
        # row of a validation id (never updated) is drawn as a negative; otherwise the id is the row.
        if sample_ids is not None:
            lookup = torch.full((int(sample_ids.max()) + 1,), -1, dtype=torch.long)
            lookup[sample_ids] = torch.arange(sample_ids.numel())
            self.register_buffer("row_of_id", lookup)
        else:
            self.row_of_id = None

    @property
    def data_size(self) -> int:
        """Rows of each memory bank."""
        return int(self.memory_s.shape[0])

    def rows(self, term: str, index: Tensor) -> Tensor:
        """The bank rows of these sample ids (refusing ids that are not training samples)."""
        if self.row_of_id is None:
            return index
        known = index < self.row_of_id.numel()
        rows = torch.where(known, self.row_of_id[index.clamp(max=self.row_of_id.numel() - 1)], -1)
        if bool((rows < 0).any()):
            bad = int(index[rows < 0][0])
            raise ConfigError(
                f"objectives.{term}: sample id {bad} is not a training sample; CRD's bank has no row for it"
            )
        return rows

    def _apply(self, fn: Any, recurse: bool = True) -> CRDModule:
        # ``.half()`` / ``.to(bfloat16)`` on the run's modules must not round the banks: their momentum updates would
        # lose the small steps, and Z its precision. The heads follow the cast; the banks only follow device moves.
        banks = {name: self._buffers.pop(name) for name in _BANKS}
        device = banks["z"].device
        try:
            super()._apply(fn, recurse)
            device = fn(torch.zeros(1, device=device)).device
        finally:
            self._buffers.update({name: bank.to(device) for name, bank in banks.items()})
        return self

    def embed(self, f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
        """L2-normalised float32 embeddings of the flattened student and teacher features."""
        v_s = F.normalize(self.embed_s(f_s.flatten(1)).float(), dim=1)
        v_t = F.normalize(self.embed_t(f_t.flatten(1)).float(), dim=1)
        return v_s, v_t


# -- the math ---------------------------------------------------------------------------------------------------------


def contrast_scores(bank: Tensor, rows: Tensor, anchor: Tensor, temperature: float) -> Tensor:
    """exp(⟨bank[rows[i, j]], anchor[i]⟩ / T): (B, K+1) unnormalised scores, the bank rows taken as constants."""
    weights = bank[rows].detach()  # (B, K+1, D)
    return torch.exp(torch.bmm(weights, anchor.unsqueeze(-1)).squeeze(-1) / temperature)


def nce_loss(p: Tensor, n_data: int, eps: float = 1e-7) -> Tensor:
    """CRD's NCE loss (Eq. 18) of normalised scores ``p`` (B, 1+K), the positive first, noise 1/n_data per sample."""
    noise = (p.shape[1] - 1) / float(n_data)  # K · P_n
    log_d1 = torch.log(p[:, 0] / (p[:, 0] + noise + eps))
    log_d0 = torch.log(noise / (p[:, 1:] + noise + eps))
    return -(log_d1.sum() + log_d0.sum()) / p.shape[0]


def momentum_rows(bank: Tensor, ids: Tensor, values: Tensor, momentum: float) -> Tensor:
    """The rows ``ids`` of ``bank`` moved toward ``values`` and renormalised: normalize(m·bank + (1 − m)·values)."""
    moved = bank[ids] * momentum + values * (1 - momentum)
    return moved / moved.pow(2).sum(1, keepdim=True).sqrt()


def draw_negatives(index: Tensor, data_size: int, k: int, seed: int, step: int) -> Tensor:
    """(B, k) rows drawn uniformly (with replacement) among the bank's rows other than each sample's own.

    Deterministic in (seed, step, sample ids): a run resumed at a step draws what the first run drew. The per-sample
    shift keeps micro-batches (and processes) that share a step from drawing the same rows.
    """
    generator = torch.Generator(device=index.device)
    generator.manual_seed((int(seed) * 1_000_003 + int(step)) % (2**63 - 1))
    draw = torch.randint(0, data_size - 1, (index.numel(), k), generator=generator, device=index.device)
    draw = (draw + (index.view(-1, 1) * 2_654_435_761) % (data_size - 1)) % (data_size - 1)
    return draw + (draw >= index.view(-1, 1)).long()  # skip the sample's own row: uniform over the other n−1


def crd_contrast(
    module: CRDModule,
    f_s: Tensor,
    f_t: Tensor,
    index: Tensor,
    negatives: Tensor,
    *,
    nce_t: float = 0.07,
    momentum: float = 0.5,
    eps: float = 1e-7,
    update: bool = True,
) -> Tensor:
    """Both contrast directions for given negatives; sets Z on the first call and (if ``update``) the bank rows."""
    v_s, v_t = module.embed(f_s, f_t)
    rows = torch.cat([index.view(-1, 1), negatives], dim=1)
    # Scores in float32 even under autocast: exp(⟨·,·⟩/0.07) turns a bf16 rounding of the dot product into ~10%.
    with torch.autocast(v_s.device.type, enabled=False):
        out_s = contrast_scores(module.memory_t, rows, v_s, nce_t)  # student anchor, teacher-side bank (out_v1)
        out_t = contrast_scores(module.memory_s, rows, v_t, nce_t)  # teacher anchor, student-side bank (out_v2)
    n = module.data_size
    with torch.no_grad():
        # Z = mean score × n, estimated once (the reference's rule), without a host sync on later steps.
        estimate = torch.stack([out_s.mean(), out_t.mean()]) * n
        module.z.copy_(torch.where(module.z < 0, estimate, module.z))
    loss = nce_loss(out_s / module.z[0], n, eps) + nce_loss(out_t / module.z[1], n, eps)
    if update:
        with torch.no_grad():
            module.memory_s.index_copy_(0, index, momentum_rows(module.memory_s, index, v_s, momentum))
            module.memory_t.index_copy_(0, index, momentum_rows(module.memory_t, index, v_t, momentum))
    return loss


# -- the objective ----------------------------------------------------------------------------------------------------


def _crd_params(params: Mapping[str, Any]) -> dict[str, Any]:
    return with_default_layers(params, "embedding")


def _one_pair(term: str, params: Mapping[str, Any]) -> tuple[str, str]:
    pairs = layer_pairs(term, params)
    if len(pairs) != 1:
        raise ConfigError(
            f"objectives.{term}.layers: {len(pairs)} pairs; CRD contrasts one embedding per sample: expected one "
            "'STUDENT -> TEACHER' pair (default: embedding, the inputs of the two classifier heads)"
        )
    return pairs[0]


def build_crd(params: Mapping[str, Any], ctx: BuildContext) -> nn.Module:
    """The embedding heads and the two memory banks of ``ctx.data_size`` rows."""
    params = _crd_params(params)
    _one_pair(ctx.term, params)
    ids = None if ctx.sample_ids is None else torch.unique(ctx.sample_ids)
    n, k, dim = (ctx.data_size if ids is None else int(ids.numel())), int(params["nce_k"]), int(params["feat_dim"])
    if n is None:
        raise ConfigError(
            f"objectives.{ctx.term}: the memory bank needs the training set's size; pass it to "
            "distiller.prepare(first_batch, data_size=N) (the Trainer does)"
        )
    if n < 2:
        raise ConfigError(f"objectives.{ctx.term}: data_size={n}; CRD needs at least 2 samples to contrast")
    if k < 1 or dim < 1:
        raise ConfigError(f"objectives.{ctx.term}: nce_k={k} and feat_dim={dim} must be positive")
    if not 0 <= float(params["momentum"]) <= 1 or float(params["nce_t"]) <= 0:
        raise ConfigError(
            f"objectives.{ctx.term}: momentum={params['momentum']} must be in [0, 1] and nce_t={params['nce_t']} > 0"
        )
    if k > n - 1:
        warnings.warn(
            f"objectives.{ctx.term}: nce_k={k} negatives but the memory bank has {n} rows (one per training "
            f"sample); using nce_k={n - 1}",
            stacklevel=2,
        )
        k = n - 1
    ((s, t),) = ctx.features(params)
    return CRDModule(int(s[0].numel()), int(t[0].numel()), dim, n, k, ids)


def _checked_index(term: str, index: Tensor | None, batch: int, data_size: int) -> Tensor:
    if index is None:
        raise ConfigError(
            f"objectives.{term}: the batch has no 'index' (sample ids); CRD's memory bank keeps one row per training "
            "sample: expected the data to give each batch its sample ids (kdforge's data sets do)"
        )
    index = torch.as_tensor(index).view(-1).long()
    if index.numel() != batch:
        raise ShapeMismatchError(f"objectives.{term}: the batch has {index.numel()} sample ids for {batch} samples")
    bad = index[(index < 0) | (index >= data_size)]
    if bad.numel():
        raise ConfigError(
            f"objectives.{term}: sample id {int(bad[0])} is outside the memory bank of {data_size} rows; "
            f"expected ids in [0, {data_size - 1}] (data_size is the training set's largest id + 1)"
        )
    return index


_NEEDS, _RESOLVE = default_layer_rules("crd", "embedding")


@register_objective("crd", teacher=False, needs=_NEEDS, inputs="pair", build=build_crd, resolve=_RESOLVE)
def crd(
    pair: PairContext,
    *,
    layers: Any = None,
    feat_dim: int = 128,
    nce_k: int = 16384,
    nce_t: float = 0.07,
    momentum: float = 0.5,
    eps: float = 1e-7,
    seed: int = 0,
) -> Tensor:
    """CRD: NCE contrast of student and teacher embeddings against memory-bank negatives, both directions summed."""
    params = _crd_params({"layers": layers})
    names = _one_pair("crd", params)
    module = pair.connector
    if not isinstance(module, CRDModule):
        raise ConfigError("objectives.crd: its embedding heads and memory banks were not built; call prepare first")
    ((f_s, f_t),) = feature_pairs("crd", params, pair.student.features, pair.teacher.features)
    for side, f, head, name in (("student", f_s, module.embed_s, names[0]), ("teacher", f_t, module.embed_t, names[1])):
        if f[0].numel() != head.in_features:
            raise ShapeMismatchError(
                f"objectives.crd: {side} {name!r} {tuple(f.shape)} gives {f[0].numel()} features per sample; the "
                f"embedding head was built for {head.in_features}"
            )
    space = module.data_size if module.row_of_id is None else int(module.row_of_id.numel())
    index = _checked_index("crd", pair.index, f_s.shape[0], space).to(f_s.device)
    rows = module.rows("crd", index)
    negatives = draw_negatives(rows, module.data_size, module.nce_k, seed, pair.progress.step or 0)
    return crd_contrast(
        module, f_s, f_t.detach(), rows, negatives, nce_t=nce_t, momentum=momentum, eps=eps, update=module.training
    )
