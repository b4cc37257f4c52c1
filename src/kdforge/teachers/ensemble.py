"""A multi-teacher ensemble: several live teacher networks whose predictions are mixed per sample.

The teaching logits are the log of the mixture log Σ_k w_k(x) softmax(z_k(x)/T), so ``kd`` at T=1 matches the mixture
exactly. The weights are uniform (mean), fixed (weights), per-sample confidence or entropy, a per-sample tag naming the
member, or a tiny learned gate. Members can be left out of a training batch's mixture (teacher dropping, UNIC), and
their features can be PHI-S standardized so that hint-style objectives see every teacher at the same scale.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from torch import Tensor, nn

from kdforge.errors import ConfigError
from kdforge.recipe import NetworkTeacherConfig, TeacherConfig
from kdforge.registry import TEACHERS
from kdforge.signals import DenseSignal, FeatureSignal, Needs, StudentOutput, TeacherOutput
from kdforge.teachers.base import Teacher, TeacherBuild
from kdforge.teachers.live import Live
from kdforge.teachers.standardize import PhiS, apply, fit, from_state, to_state

AGGREGATES = ("mean", "weights", "confidence", "entropy", "tag", "gate")
IGNORE = -100  # label of rows without a target, as in F.cross_entropy
MAX_FEATURES = 8192  # PHI-S eigendecomposes a D×D covariance: beyond this it is too slow and too large to keep
FIT_BATCH = 256  # samples per forward while fitting PHI-S statistics


# -- the math: pure functions over member log-probabilities (K, ..., C) -----------------------------------------------


def member_log_probs(logits: Sequence[Tensor], temperature: float) -> Tensor:
    """(K, ..., C): log softmax(z_k / temperature) of every member's logits, in float32."""
    return torch.stack([torch.log_softmax(z.float() / temperature, dim=-1) for z in logits])


def _broadcast(log_weights: Tensor, log_probs: Tensor) -> Tensor:
    """``log_weights`` (K,) or (K, B, ...) with trailing singleton dims so it broadcasts against ``log_probs``."""
    return log_weights.reshape(*log_weights.shape, *([1] * (log_probs.dim() - log_weights.dim())))


def log_mixture(log_probs: Tensor, log_weights: Tensor) -> Tensor:
    """log Σ_k w_k p_k, computed stably as a logsumexp over members (dim 0) of log w_k + log p_k."""
    return torch.logsumexp(log_probs + _broadcast(log_weights, log_probs), dim=0)


def fixed_log_weights(weights: Sequence[float]) -> Tensor:
    """(K,): log of the weights normalised to sum 1 (a zero weight is −inf: that member never teaches)."""
    w = torch.tensor([float(x) for x in weights], dtype=torch.float32)
    return torch.log(w / w.sum())


def confidence_log_weights(log_probs: Tensor) -> Tensor:
    """(K, ...): per position, w_k ∝ max_c p_k(c|x)."""
    top = log_probs.amax(dim=-1)
    return top - torch.logsumexp(top, dim=0, keepdim=True)


def entropy_log_weights(log_probs: Tensor) -> Tensor:
    """(K, ...): per position, w = softmax_k(−H(p_k)): the more certain member weighs more."""
    # xlogy keeps a zero probability at zero entropy contribution (0·log 0 = 0).
    entropy = -torch.special.xlogy(log_probs.exp(), log_probs.exp()).sum(dim=-1)
    return torch.log_softmax(-entropy, dim=0)


def tag_log_weights(tags: Tensor, members: int) -> Tensor:
    """(K, B): one-hot on member ``tags[i]`` for sample i, as logs (0 and −inf)."""
    one_hot = F.one_hot(tags.long(), members).T.float()
    return torch.log(one_hot)


def gate_log_weights(gate: nn.Linear, log_probs: Tensor) -> Tensor:
    """(K, ...): log softmax(W · concat_k log p_k + b) per position."""
    k = log_probs.shape[0]
    joined = log_probs.movedim(0, -2).reshape(*log_probs.shape[1:-1], k * log_probs.shape[-1])
    return torch.log_softmax(gate(joined), dim=-1).movedim(-1, 0)


def drop_mask(seed: int, counter: int, members: int, drop: float) -> Tensor:
    """(K,) bool: the members kept in batch ``counter``; a pure function of (seed, counter), never all False."""
    # A generator seeded from (seed, counter) alone: a resumed run draws exactly what the first one did.
    digest = hashlib.sha256(f"ensemble-drop:{seed}:{counter}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    keep = torch.rand(members, generator=generator) >= drop
    if not keep.any():
        keep[int(torch.randint(members, (1,), generator=generator))] = True
    return keep


def renormalise(log_weights: Tensor, keep: Tensor) -> Tensor:
    """The weights of the kept members (``keep`` (K,) bool) renormalised to sum 1 at every position."""
    shaped = _broadcast(keep.to(log_weights.device), log_weights)
    kept = log_weights.masked_fill(~shaped, -math.inf)
    total = torch.logsumexp(kept, dim=0, keepdim=True)
    # Where every kept member has zero weight (a fixed weight of 0) the batch keeps its undropped weights.
    return torch.where(torch.isfinite(total), kept - total, log_weights)


def weights_problem(weights: Sequence[float] | None, members: int | None, aggregate: str) -> str | None:
    """Why ``weights`` do not fit ``aggregate`` and the member count (None when they do)."""
    if aggregate != "weights":
        if weights is None:
            return None
        return f"only used with aggregate: weights (aggregate is {aggregate!r}); remove it or set aggregate: weights"
    expected = f"{members} numbers, one per member" if members is not None else "one number per member"
    if weights is None:
        return f"aggregate: weights needs a list of non-negative weights: expected {expected}"
    if members is not None and len(weights) != members:
        return f"expected {expected}, got {len(weights)}: {list(weights)}"
    if any(not math.isfinite(w) or w < 0 for w in weights):
        return f"weights must be non-negative finite numbers ({expected}), got {list(weights)}"
    if sum(weights) <= 0:
        return f"at least one weight must be positive, got {list(weights)}"
    return None


# -- the recipe section -----------------------------------------------------------------------------------------------


def _invalid(text: str) -> PydanticCustomError:
    # The text travels as context, not as the template: a '{' in it is then not a placeholder.
    return PydanticCustomError("ensemble", "{text}", {"text": text})


class EnsembleConfig(TeacherConfig):
    """``teacher: {kind: ensemble, members: [{model: ...}, {model: ...}], aggregate: mean}``."""

    model_config = ConfigDict(extra="forbid")
    members: list[NetworkTeacherConfig] = Field(
        default_factory=list,
        validate_default=True,
        description="two or more teacher networks (model, checkpoint, train, seed, dtype, ...), each run live",
    )
    aggregate: Literal["mean", "weights", "confidence", "entropy", "tag", "gate"] = Field(
        "mean", description="how members' probabilities are weighted per sample"
    )
    weights: list[float] | None = Field(
        None,
        validate_default=True,
        description="aggregate=weights: one non-negative number per member (normalised to sum 1)",
    )
    temperature: float = Field(1.0, gt=0, description="members' logits are softmaxed at this temperature first")
    tag_field: str = Field(
        "tag", min_length=1, description="aggregate=tag: the batch field holding each sample's teaching member"
    )
    drop: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="teacher dropping (UNIC): each member leaves a training batch's mixture with this probability",
    )
    seed: int = Field(0, description="seed of the dropping draws (a function of seed and batch count alone)")
    gate_lr: float = Field(0.01, gt=0, description="aggregate=gate: SGD learning rate of the gate")
    standardize: Literal["none", "phi_s"] = Field(
        "none", description="how each member's features are standardized before objectives see them"
    )
    standardize_samples: int = Field(
        2048, ge=2, description="the first N training samples the PHI-S statistics are fitted on"
    )

    @field_validator("members")
    @classmethod
    def _members(cls, value: list[NetworkTeacherConfig]) -> list[NetworkTeacherConfig]:
        if len(value) < 2:
            raise _invalid(
                f"an ensemble needs at least two members, got {len(value)}; list teacher networks such as "
                "[{model: {name: cnn}, seed: 1}, {model: {name: cnn}, seed: 2}]"
            )
        for i, member in enumerate(value):
            if member.kind != "live":
                raise _invalid(
                    f"member {i} has kind {member.kind!r}; every ensemble member is a teacher network run live "
                    "(kind: live, or leave kind out)"
                )
            if member.model is None:
                raise _invalid(f"member {i} has no model; expected e.g. {{model: {{name: cnn}}, checkpoint: ...}}")
        return value

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: list[float] | None, info: ValidationInfo) -> list[float] | None:
        if "aggregate" not in info.data:
            return value  # the aggregate itself is invalid: that error is the one to read
        members = info.data.get("members")
        problem = weights_problem(value, len(members) if members is not None else None, info.data.get("aggregate", ""))
        if problem is not None:
            raise _invalid(problem)
        return value

    @field_validator("drop")
    @classmethod
    def _drop(cls, value: float, info: ValidationInfo) -> float:
        if value > 0 and info.data.get("aggregate") == "tag":
            raise _invalid("aggregate: tag gives each sample one teaching member; it cannot be dropped (use drop: 0)")
        return value


# -- the teacher ------------------------------------------------------------------------------------------------------


@TEACHERS.register("ensemble")
class Ensemble(Teacher):
    """Several live teachers mixed into one teaching distribution; features are routed to members by ``<k>:<path>``."""

    Config = EnsembleConfig

    def __init__(
        self,
        members: Sequence[Teacher],
        aggregate: str = "mean",
        *,
        weights: Sequence[float] | None = None,
        temperature: float = 1.0,
        tag_field: str = "tag",
        drop: float = 0.0,
        seed: int = 0,
        gate_lr: float = 0.01,
        standardize: str = "none",
        fit_inputs: Mapping[str, Any] | None = None,
    ):
        self.members = list(members)
        _check(self.members, aggregate, weights, temperature, drop, gate_lr, standardize)
        self.aggregate, self.temperature, self.tag_field = aggregate, float(temperature), tag_field
        self.drop, self.seed, self.gate_lr, self.standardize = float(drop), int(seed), float(gate_lr), standardize
        self.weights = None if weights is None else [float(w) for w in weights]
        self.fixed = fixed_log_weights(self.weights) if self.weights is not None else None
        self.fit_inputs = fit_inputs  # the samples PHI-S statistics are fitted on (a batch dict)
        self.gate: nn.Linear | None = None  # built at the first batch: its input size is K × classes
        self.stats: dict[str, PhiS] = {}  # "<k>:<path>" → PHI-S statistics of that member's feature
        self.batches = 0  # training batches seen: the dropping draws are keyed by it
        self.students: dict[str, nn.Module] = {}
        self._cache: tuple[dict[str, Any], Tensor] | None = None  # (batch, member log-probs) for the gate's step
        settings = {
            "members": [m.fingerprint for m in self.members],
            "aggregate": aggregate,
            "weights": self.weights,
            "temperature": self.temperature,
            "tag_field": tag_field,
            "drop": self.drop,
            "seed": self.seed,
            "gate_lr": self.gate_lr,
            "standardize": standardize,
        }
        self.fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_recipe(cls, cfg: EnsembleConfig, build: TeacherBuild) -> tuple[Teacher | None, dict[str, Any]]:
        """Every member built live from its own network section (checkpoint, or trained once and cached)."""
        member_build = getattr(build, "member", None)
        if member_build is None:
            raise ConfigError(f"teacher.kind=ensemble: the build {type(build).__name__} cannot provide member networks")
        members: list[Teacher] = []
        infos: list[dict[str, Any]] = []
        for i, member_cfg in enumerate(cfg.members):
            try:
                teacher, info = Live.from_recipe(member_cfg, member_build(member_cfg))
            except ConfigError as err:
                raise ConfigError(f"teacher.members.{i}: {err}") from None
            infos.append(info)
            if teacher is None:  # its network is not trained yet and training is not allowed here
                return None, {"kind": "ensemble", "aggregate": cfg.aggregate, "members": infos, "missing": True}
            members.append(teacher)
        fit_inputs = first_samples(build.bundle.train, cfg.standardize_samples) if cfg.standardize == "phi_s" else None
        ensemble = cls(
            members,
            cfg.aggregate,
            weights=cfg.weights,
            temperature=cfg.temperature,
            tag_field=cfg.tag_field,
            drop=cfg.drop,
            seed=cfg.seed,
            gate_lr=cfg.gate_lr,
            standardize=cfg.standardize,
            fit_inputs=fit_inputs,
        )
        return ensemble, {"kind": "ensemble", "aggregate": cfg.aggregate, "members": infos}

    def setup(self, students: Mapping[str, nn.Module]) -> None:
        """Remember the students: a batch is a training batch (one that may drop members) while they train."""
        self.students = dict(students)
        for member in self.members:
            member.setup(students)

    def is_training(self) -> bool:
        """Whether the current ``signals`` call is a training forward (gradients on, the taught students training)."""
        # Evaluation, connector probes and caches run without gradients or with students in eval mode: never dropped.
        if not torch.is_grad_enabled() or torch.is_inference_mode_enabled():
            return False
        return any(m.training for m in self.students.values()) if self.students else True

    def signals(self, batch: dict[str, Any], needs: Needs) -> TeacherOutput:
        """The mixture's log-probabilities as logits, and each ``<k>:<path>`` feature from member k."""
        routes = self._routes(needs.teacher_features)
        if self.standardize == "phi_s":
            self._fit_missing(routes)
        training = self.is_training()
        outs: list[TeacherOutput | None] = []
        for k, member in enumerate(self.members):
            paths = routes.get(k, ())
            if not needs.teacher_logits and not paths:
                outs.append(None)
                continue
            outs.append(member.signals(batch, Needs(teacher_logits=needs.teacher_logits, teacher_features=paths)))
        logits = self._mix(batch, outs, training) if needs.teacher_logits else None
        features = self._features(routes, outs) if routes else None
        mask = next((o.mask for o in outs if o is not None and o.mask is not None), None)
        if training:
            self.batches += 1
        return TeacherOutput(logits=logits, features=features, mask=mask)

    def observe(self, batch: dict[str, Any], student: StudentOutput) -> None:
        """aggregate=gate: one SGD step of the gate on CE(labels, mixture) for the batch ``signals`` just mixed."""
        cached, self._cache = self._cache, None
        if self.aggregate != "gate" or cached is None or cached[0] is not batch:
            return
        labels = batch.get("label")
        if labels is None:
            return
        self._gate_step(cached[1], torch.as_tensor(labels))

    def to(self, device: torch.device | str) -> Ensemble:
        """Move every member, the gate and the PHI-S statistics to ``device``."""
        for member in self.members:
            member.to(device)
        if self.gate is not None:
            self.gate.to(device)
        self.stats = {k: v.to(device) for k, v in self.stats.items()}
        return self

    @property
    def model(self) -> nn.Module | None:
        """The ensemble as one network for evaluation (teacher accuracy, agreement, KL), when every member has one."""
        if any(member.model is None for member in self.members):
            return None
        return MixtureModel(self)

    def state_dict(self) -> dict[str, Tensor]:
        """The batch counter (dropping draws), the gate's weights, the PHI-S statistics and the members' state."""
        state = {"batches": torch.tensor(self.batches)}
        if self.gate is not None:
            state["gate.weight"] = self.gate.weight.detach().clone()
            state["gate.bias"] = self.gate.bias.detach().clone()
        for name, stats in self.stats.items():
            state.update(to_state(stats, f"phi_s.{name}."))
        for i, member in enumerate(self.members):
            state.update({f"members.{i}.{k}": v for k, v in member.state_dict().items()})
        return state

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore what ``state_dict`` returned: a resumed run draws, gates and standardizes as the first one did."""
        if "batches" in state:
            self.batches = int(state["batches"])
        if "gate.weight" in state:
            weight = state["gate.weight"]
            if weight.shape[0] != len(self.members):
                raise ConfigError(
                    f"teacher: the saved gate has {weight.shape[0]} outputs but the ensemble has {len(self.members)} "
                    "members; resume with the recipe the run was started with"
                )
            self.gate = _new_gate(weight.shape[1], weight.shape[0], weight.device)
            with torch.no_grad():
                self.gate.weight.copy_(weight)
                self.gate.bias.copy_(state["gate.bias"])
        names = {k.removeprefix("phi_s.").rsplit(".", 1)[0] for k in state if k.startswith("phi_s.")}
        self.stats.update({name: from_state(state, f"phi_s.{name}.") for name in names})
        for i, member in enumerate(self.members):
            prefix = f"members.{i}."
            own = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            if own:
                member.load_state_dict(own)

    def close(self) -> None:
        """Close every member (their feature hooks)."""
        for member in self.members:
            member.close()

    # -- helpers --------------------------------------------------------------------------------------------------

    def _routes(self, names: Sequence[str]) -> dict[int, tuple[str, ...]]:
        """``"<k>:<path>"`` feature names grouped by member: {k: (path, ...)}."""
        routes: dict[int, tuple[str, ...]] = {}
        for name in names:
            k, sep, path = name.partition(":")
            if not sep or not k.isdigit() or not path or int(k) >= len(self.members):
                raise ConfigError(
                    f"teacher feature {name!r}: an ensemble's feature paths are written '<member>:<module path>' "
                    f"(e.g. '0:features.3'), with member in 0..{len(self.members) - 1}"
                )
            routes[int(k)] = (*routes.get(int(k), ()), path)
        return routes

    def _mix(self, batch: dict[str, Any], outs: list[TeacherOutput | None], training: bool) -> DenseSignal:
        """The log mixture of the members' (tempered) probabilities under this batch's weights."""
        logits = []
        for k, out in enumerate(outs):
            signal = None if out is None else out.logits
            if not isinstance(signal, DenseSignal):
                raise ConfigError(
                    f"teacher.members.{k}: returned {type(signal).__name__} logits; an ensemble mixes dense logits"
                )
            logits.append(signal.logits)
        shapes = {tuple(z.shape) for z in logits}
        if len(shapes) > 1:
            raise ConfigError(
                f"teacher.members: the members' logits differ in shape ({sorted(shapes)}); an ensemble needs members "
                "with the same outputs (the same classes or vocabulary)"
            )
        device = logits[0].device
        log_probs = member_log_probs([z.to(device) for z in logits], self.temperature)
        log_weights = self._log_weights(batch, log_probs)
        if training and self.drop > 0:
            log_weights = renormalise(log_weights, drop_mask(self.seed, self.batches, len(self.members), self.drop))
        if training and self.aggregate == "gate":
            self._cache = (batch, log_probs)
        return DenseSignal(log_mixture(log_probs, log_weights))

    def _log_weights(self, batch: dict[str, Any], log_probs: Tensor) -> Tensor:
        """Log weights (K,) or (K, ...) of this batch's members under the aggregation rule."""
        k = len(self.members)
        if self.aggregate == "mean":
            return torch.full((k,), -math.log(k), device=log_probs.device)
        if self.aggregate == "weights":
            assert self.fixed is not None
            return self.fixed.to(log_probs.device)
        if self.aggregate == "confidence":
            return confidence_log_weights(log_probs)
        if self.aggregate == "entropy":
            return entropy_log_weights(log_probs)
        if self.aggregate == "tag":
            return tag_log_weights(self._tags(batch, log_probs.shape[1]), k).to(log_probs.device)
        with torch.no_grad():  # the student's loss never trains the gate: only observe() does
            return gate_log_weights(self._gate_for(log_probs), log_probs)

    def _tags(self, batch: dict[str, Any], rows: int) -> Tensor:
        """The batch's per-sample member indices, checked."""
        field = self.tag_field
        if field not in batch:
            raise ConfigError(
                f"teacher.tag_field={field!r}: the batch has no field {field!r}; aggregate=tag needs, per sample, the "
                f"index of the member that teaches it (batch keys: {sorted(batch)})"
            )
        tags = torch.as_tensor(batch[field]).reshape(-1)
        if tags.numel() != rows or tags.is_floating_point() or tags.is_complex():
            raise ConfigError(
                f"teacher.tag_field={field!r}: expected {rows} integer member indices (one per sample), got "
                f"{tags.numel()} of dtype {tags.dtype}"
            )
        bad = tags[(tags < 0) | (tags >= len(self.members))]
        if bad.numel():
            raise ConfigError(
                f"teacher.tag_field={field!r}: tag {int(bad[0])} is out of range; the ensemble has "
                f"{len(self.members)} members (tags 0..{len(self.members) - 1})"
            )
        return tags

    def _gate_for(self, log_probs: Tensor) -> nn.Linear:
        """The gate for K members of C outputs, built at zero (= mean) on first use, on ``log_probs``' device."""
        k, inputs = log_probs.shape[0], log_probs.shape[0] * log_probs.shape[-1]
        if self.gate is None:
            self.gate = _new_gate(inputs, k, log_probs.device)
        if self.gate.in_features != inputs:
            raise ConfigError(
                f"teacher.aggregate=gate: the gate was built for {self.gate.in_features // k} outputs per member, "
                f"but the members now give {log_probs.shape[-1]}"
            )
        if self.gate.weight.device != log_probs.device:
            self.gate.to(log_probs.device)
        return self.gate

    def _gate_step(self, log_probs: Tensor, labels: Tensor) -> None:
        """One plain SGD step (no momentum: no optimizer state to checkpoint) of the gate on CE(labels, mixture)."""
        # The teacher may have run under inference mode: a clone made outside it is an ordinary constant.
        with torch.inference_mode(False), torch.enable_grad():
            lp = log_probs.detach().clone()
            gate = self._gate_for(lp)
            mix = log_mixture(lp, gate_log_weights(gate, lp)).reshape(-1, lp.shape[-1])
            y = labels.to(lp.device).reshape(-1).long()
            if y.numel() != mix.shape[0]:
                raise ConfigError(
                    f"teacher.aggregate=gate: {y.numel()} labels for {mix.shape[0]} rows of teacher outputs; "
                    "expected one label per row"
                )
            valid = y != IGNORE
            # Trained on every member: dropping regularises the student's targets, not what the gate learns.
            nll = F.nll_loss(mix[valid], y[valid], reduction="sum")
            # With no labelled row the sum is 0 and its gradients are zeros: every rank still joins the reduction.
            grads = torch.autograd.grad(nll, [gate.weight, gate.bias])
        count, weight_grad, bias_grad = summed_over_processes(valid.sum().to(grads[0].dtype), *grads)
        if count <= 0:
            return
        with torch.no_grad():
            gate.weight.sub_(weight_grad / count, alpha=self.gate_lr)
            gate.bias.sub_(bias_grad / count, alpha=self.gate_lr)

    def _features(self, routes: dict[int, tuple[str, ...]], outs: list[TeacherOutput | None]) -> FeatureSignal:
        """Each routed feature under its full name ``<k>:<path>``, PHI-S standardized when asked."""
        tensors: dict[str, Tensor] = {}
        for k, paths in routes.items():
            out = outs[k]
            got = out.features if out is not None else None
            for path in paths:
                if got is None or path not in got.tensors:
                    raise ConfigError(f"teacher.members.{k}: returned no feature {path!r}")
                name = f"{k}:{path}"
                tensor = got[path]
                if self.standardize == "phi_s":
                    stats = self.stats[name]
                    if stats.mean.device != tensor.device:  # moved once, not every batch
                        stats = self.stats[name] = stats.to(tensor.device)
                    tensor = apply(stats, tensor)
                tensors[name] = tensor
        return FeatureSignal(tensors)

    def _fit_missing(self, routes: dict[int, tuple[str, ...]]) -> None:
        """Fit PHI-S statistics for every routed feature that has none yet, on ``fit_inputs`` (once per feature)."""
        for k, paths in routes.items():
            missing = [p for p in paths if f"{k}:{p}" not in self.stats]
            if not missing:
                continue
            if self.fit_inputs is None:
                raise ConfigError(
                    "teacher.standardize=phi_s: no training samples to fit the PHI-S statistics on; build the "
                    "ensemble from a recipe, or pass fit_inputs (a batch dict of samples) to Ensemble"
                )
            chunks: dict[str, list[Tensor]] = {p: [] for p in missing}
            n = len(self.fit_inputs["input"])
            for start in range(0, n, FIT_BATCH):
                part = {key: v[start : start + FIT_BATCH] if _rows(v, n) else v for key, v in self.fit_inputs.items()}
                # All of member k's routed paths, as the batch call asks: its feature hooks are then kept, not redone.
                out = self.members[k].signals(part, Needs(teacher_features=paths))
                if out.features is None:
                    raise ConfigError(f"teacher.members.{k}: returned no features for {missing}")
                for p in missing:
                    chunks[p].append(out.features[p].detach().to("cpu"))
            for p in missing:
                samples = torch.cat(chunks[p])
                width = samples[0].numel()
                if width > MAX_FEATURES:
                    raise ConfigError(
                        f"teacher.standardize=phi_s: feature '{k}:{p}' has {width} values per sample; PHI-S fits a "
                        f"D×D covariance, at most {MAX_FEATURES} — standardize a smaller layer or use standardize: none"
                    )
                self.stats[f"{k}:{p}"] = fit(samples)


def summed_over_processes(*tensors: Tensor) -> list[Tensor]:
    """The tensors summed over every process of a distributed run (themselves when there is one process)."""
    # Every rank calls this for every training batch, so each holds the same gate: the CE mean of the global batch.
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return list(tensors)
    out = [t.clone() for t in tensors]
    for t in out:
        torch.distributed.all_reduce(t)
    return out


def _rows(value: Any, n: int) -> bool:
    """Whether ``value`` is a per-sample tensor of ``n`` rows (sliced into chunks)."""
    return torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == n


def _new_gate(inputs: int, members: int, device: torch.device | str) -> nn.Linear:
    """A zero-initialised gate: uniform weights (the mean) until it is trained."""
    gate = nn.Linear(inputs, members).to(device)
    nn.init.zeros_(gate.weight)
    nn.init.zeros_(gate.bias)
    return gate


def first_samples(dataset: Any, n: int) -> dict[str, Any]:
    """The first ``n`` samples of a training split as one batch dict (un-augmented inputs and per-sample fields)."""
    count = min(n, len(dataset.inputs))
    batch: dict[str, Any] = {"input": dataset.inputs[:count]}
    batch.update({k: v[:count] for k, v in getattr(dataset, "fields", {}).items()})
    return batch


def _check(
    members: list[Teacher],
    aggregate: str,
    weights: Sequence[float] | None,
    temperature: float,
    drop: float,
    gate_lr: float,
    standardize: str,
) -> None:
    """The recipe's rules, for an Ensemble built in Python: one-line errors naming the key."""
    if len(members) < 2:
        raise ConfigError(f"teacher.members: an ensemble needs at least two members, got {len(members)}")
    if aggregate not in AGGREGATES:
        raise ConfigError(f"teacher.aggregate={aggregate!r}: expected one of {', '.join(AGGREGATES)}")
    problem = weights_problem(None if weights is None else list(weights), len(members), aggregate)
    if problem is not None:
        raise ConfigError(f"teacher.weights: {problem}")
    if not temperature > 0:
        raise ConfigError(f"teacher.temperature={temperature}: must be > 0")
    if not 0 <= drop < 1:
        raise ConfigError(f"teacher.drop={drop}: must be in [0, 1)")
    if drop > 0 and aggregate == "tag":
        raise ConfigError("teacher.drop: aggregate: tag gives each sample one teaching member; use drop: 0")
    if not gate_lr > 0:
        raise ConfigError(f"teacher.gate_lr={gate_lr}: must be > 0")
    if standardize not in ("none", "phi_s"):
        raise ConfigError(f"teacher.standardize={standardize!r}: expected none or phi_s")


class MixtureModel(nn.Module):
    """An ensemble run as one network: ``model(x)`` is its log mixture, what evaluation and profiling call.

    No member is ever dropped here (evaluation); ``aggregate: tag`` routes by a batch field a plain forward does not
    have, so it is evaluated as the mean of its members.
    """

    def __init__(self, ensemble: Ensemble):
        super().__init__()
        self.nets = nn.ModuleList([m.model for m in ensemble.members])  # registered: .to() and profiles see them
        self.ensemble = ensemble

    def forward(self, input: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """log Σ_k w_k(x)·softmax(z_k(x)/T) for a batch of inputs."""
        batch: dict[str, Any] = {"input": input}
        if attention_mask is not None:
            batch["attention_mask"] = attention_mask
        ensemble = self.ensemble
        if ensemble.aggregate == "tag":
            logits = [m.signals(batch, Needs(teacher_logits=True)).logits for m in ensemble.members]
            probs = member_log_probs([z.logits for z in logits if isinstance(z, DenseSignal)], ensemble.temperature)
            return log_mixture(probs, fixed_log_weights([1.0] * len(logits)).to(probs.device))
        with torch.no_grad():
            out = ensemble.signals(batch, Needs(teacher_logits=True)).logits
        assert isinstance(out, DenseSignal)
        return out.logits
