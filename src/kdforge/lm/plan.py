"""`kdforge plan`: the peak memory of a causal-LM distillation recipe per process, estimated before anything runs.

Parts (bytes, one process, ``b`` micro-batch rows × ``s`` tokens, ``N = b·s`` tokens, vocabulary ``V``):

- teacher weights: its parameter count (safetensors headers of a folder, else the model built on the meta device)
  × 4, or × 2 with ``teacher.dtype: bfloat16``.
- student: weights 4·P, gradients 4·P, optimizer state 8·P (AdamW: two fp32 moments) or 4·P (SGD with momentum);
  AdamW's step allocates temporaries of 3 × its largest parameter tensor, at most 2·P values (foreach, measured).
- activations: the student keeps N·(L·(8·H + 4·I + 2·KV) + 3·H) fp32 values for backward (``ACT_TRAIN``); the
  teacher's forward under inference mode peaks at N·(1.5·(L+1)·H + 3·I + 5·KV) values of its dtype (``ACT_INFER``:
  the hidden-state tuple it returns plus its largest layer's transients) and keeps its last hidden states (twice: the
  clone and the masked copy) for the loss. H hidden size, I MLP width, L layers, KV = key/value heads × head size.
- loss buffers: every (student, source) pair's chunked loss (objectives/chunked.py) is run once at toy size under
  ``PeakBytes`` with the recipe's own row functions; its peak and what stays alive until backward, in units of
  rows × vocabulary × 4 bytes, scale to ``train.chunk_size`` × V (plus the per-term gradient accumulators, N·H + V·H).

The peak (steady state, after the first optimizer step) is the weights + the optimizer state + the largest of four
phases: the teacher's forward, the student's forward and loss, the backward, and the optimizer step; gradients are
alive in every phase when ``train.grad_accum`` > 1.

Calibration (CPU, torch 2.13, transformers 5.24, sdpa attention, fp32): ``ACT_TRAIN`` is a least-squares fit, rounded,
of the live bytes after a training-mode forward (``PeakBytes`` given every parameter, so weight views are not counted)
of 28 random LlamaForCausalLM configurations (H 16-512, I 2-4·H, L 1-3, 1-8 kv heads, 64-1024 tokens): worst error 3%.
``ACT_INFER`` fits the peak of the same forwards under ``torch.inference_mode``: worst error 15%. Other architectures
use the same constants (an approximation); eager attention would add b·heads·s² per layer, not counted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdforge.errors import ConfigError
from kdforge.recipe import ModelConfig, NetworkTeacherConfig, Recipe

# Floats kept per token by a training-mode forward: per layer (H, I, KV), and outside the layers (H).
ACT_TRAIN = (8.0, 4.0, 2.0, 3.0)
# Values per token at the peak of an inference forward: (L+1)·H (the hidden-state tuple), I, KV.
ACT_INFER = (1.5, 3.0, 5.0)
# AdamW's foreach step allocates about this many copies of its largest parameter tensor (measured: 2-3).
STEP_TEMPS = 3
# Toy size of the loss probe: two chunks of this many rows over this many vocabulary entries, hidden size 1.
PROBE_ROWS, PROBE_VOCAB = 16, 2048
MiB = 2**20


@dataclass(frozen=True)
class Arch:
    """What the estimate needs of a causal LM: parameter counts and the sizes of its layers."""

    params: int
    largest: int  # elements of the largest parameter tensor
    hidden: int
    intermediate: int
    layers: int
    kv: int  # key/value heads × head size
    vocab: int
    head_bias: bool


@dataclass
class LossGroup:
    """One chunked-loss call (the terms of one student/source pair) in units of rows × vocabulary × 4 bytes."""

    terms: list[str]
    teacher: bool
    working: float  # the peak of one chunk, beyond what earlier chunks left alive
    retained: float  # what each chunk leaves alive until backward


@dataclass
class MemoryPlan:
    """A recipe's estimated memory per process, by part (bytes), with the sizes and placement it assumed."""

    name: str
    teacher_weights: int
    student_weights: int
    gradients: int
    optimizer_state: int
    optimizer_step: int
    student_activations: int
    teacher_activations: int
    teacher_signal: int
    loss_chunk: int
    loss_retained: int
    loss_peak: int
    grad_accum: int
    sizes: dict[str, Any] = field(default_factory=dict)
    placement: dict[str, str] = field(default_factory=dict)
    groups: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    teacher_device: str | None = None  # set when the teacher runs on a device of its own

    def phases(self) -> dict[str, int]:
        """Bytes above weights + optimizer state in each phase of a steady-state micro-batch."""
        kept = self.gradients if self.grad_accum > 1 else 0  # earlier micro-batches' gradients
        acts = self.student_activations
        return {
            "teacher forward": kept + (0 if self.teacher_device else self.teacher_activations),
            "student forward + loss": kept + acts + self.teacher_signal + self.loss_peak,
            # The loss's retained buffers and the activations are freed as the gradients appear.
            "backward": max(kept + acts + self.loss_retained, self.gradients + acts),
            "optimizer step": self.gradients + self.optimizer_step,
        }

    @property
    def weights(self) -> int:
        """Teacher and student weights (what is resident once the models are loaded)."""
        return (0 if self.teacher_device else self.teacher_weights) + self.student_weights

    @property
    def teacher_device_total(self) -> int:
        """The peak on the teacher's own device (0 when it shares the student's): weights + its forward."""
        return self.teacher_weights + self.teacher_activations if self.teacher_device else 0

    @property
    def training(self) -> int:
        """What training adds to the loaded weights at its peak: optimizer state + the largest phase."""
        return self.optimizer_state + max(self.phases().values())

    @property
    def total(self) -> int:
        """The estimated peak per process."""
        return self.weights + self.training

    def to_dict(self) -> dict[str, Any]:
        """Every part, the phases, the total, sizes and placement as plain values."""
        out = asdict(self)
        out.update(phases=self.phases(), training=self.training, total=self.total)
        out["teacher_device_total"] = self.teacher_device_total
        return out

    def to_json(self) -> str:
        """``to_dict()`` as indented JSON."""
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        """The plan as aligned text lines: the four parts, the peak and its largest phase, placement."""
        s = self.sizes
        phases = self.phases()
        largest = max(phases, key=lambda k: phases[k])
        opt = s["optimizer"]
        rows: list[tuple[str, int | None, str]] = [
            ("teacher weights", self.teacher_weights, f"{_count(s['teacher_params'])} in {s['teacher_format']}"),
            ("student weights + gradients + optimizer state", None, f"{_count(s['student_params'])} parameters"),
            ("  weights", self.student_weights, "4 B each"),
            ("  gradients", self.gradients, "4 B each"),
            (f"  optimizer state ({opt})", self.optimizer_state, f"{s['optimizer_states']} × 4 B each"),
            (
                "  optimizer step temporaries",
                self.optimizer_step,
                f"{STEP_TEMPS} × largest tensor" if opt == "adamw" else "",
            ),
            ("activations", None, f"micro-batch {s['batch']} × {s['max_len']} tokens"),
            ("  student (kept for backward)", self.student_activations, f"{s['student_layers']} layers"),
            ("  teacher forward (inference, transient)", self.teacher_activations, f"{s['teacher_layers']} layers"),
            ("  teacher hidden states for the loss", self.teacher_signal, ""),
            ("loss buffers per chunk", None, f"{s['chunk']} tokens × {s['vocab']} vocabulary"),
        ]
        for g in self.groups:
            rows.append(
                (f"  {'+'.join(g['terms'])}: one chunk", g["chunk_bytes"], f"{g['working']:.1f} × chunk × V × 4 B")
            )
        rows += [
            ("  kept until backward (all chunks, accumulators)", self.loss_retained, ""),
            ("  chunked loss at its peak", self.loss_peak, f"{s['tokens']} tokens"),
            ("total (peak per process)", self.total, f"weights + optimizer state + {largest}"),
        ]
        if self.teacher_device:
            rows.append((f"teacher device {self.teacher_device}", self.teacher_device_total, "weights + forward"))
        width = max(len(r[0]) for r in rows) + 2
        lines = [f"memory plan: {self.name} (steady state, one process)"]
        for label, value, why in rows:
            shown = "" if value is None else _size(value)
            lines.append(f"{label:<{width}}{shown:>11}   {why}".rstrip())
        lines.append(
            "phases (above weights + optimizer state): " + ", ".join(f"{k} {_size(v)}" for k, v in phases.items())
        )
        lines += [f"placement: {k}: {v}" for k, v in self.placement.items()]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def training_activations(arch: Arch, tokens: int) -> int:
    """Bytes a float32 training-mode forward keeps for backward over ``tokens`` tokens (``ACT_TRAIN``)."""
    a_layer, a_inter, a_kv, a_out = ACT_TRAIN
    per_layer = a_layer * arch.hidden + a_inter * arch.intermediate + a_kv * arch.kv
    return int(tokens * (arch.layers * per_layer + a_out * arch.hidden) * 4)


def inference_activations(arch: Arch, tokens: int, nbytes: int) -> int:
    """Peak bytes of an inference-mode forward over ``tokens`` tokens returning its hidden states (``ACT_INFER``)."""
    i_hidden, i_inter, i_kv = ACT_INFER
    values = i_hidden * (arch.layers + 1) * arch.hidden + i_inter * arch.intermediate + i_kv * arch.kv
    return int(tokens * values * nbytes)


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / MiB:.1f} MiB"


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else str(n)


def _is_causal_lm(cfg: ModelConfig | None) -> bool:
    return cfg is not None and cfg.name == "hf" and cfg.params.get("task") == "causal_lm"


def _meta_model(config: Any) -> torch.nn.Module:
    """A causal LM of ``config`` on the meta device: shapes without memory."""
    from kdforge.models.hf.load import auto_class

    with torch.device("meta"):
        return auto_class("causal_lm").from_config(config)


def _header_counts(folder: Path) -> tuple[int, int] | None:
    """(parameters, largest tensor) from the safetensors headers of a folder, None without safetensors files."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    sizes = []
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            sizes += [math.prod(f.get_slice(k).get_shape()) for k in f.keys()]  # noqa: SIM118 (not iterable)
    return sum(sizes), max(sizes)


def _teacher_weight_bytes(teacher: Arch, t_format: str) -> int:
    """The teacher's resident weights in its number format (int8: the embedding/head stay float32, not quantized)."""
    if t_format == "int8":
        table = teacher.vocab * teacher.hidden
        return (teacher.params - table) + 4 * table
    return teacher.params * {"bfloat16": 2, "float16": 2}.get(t_format, 4)


def _arch(cfg: ModelConfig, vocab: Callable[[], int], where: str) -> Arch:
    """The architecture of an `hf` causal LM from its folder's config and headers, or its config mapping."""
    from kdforge.models.hf.load import OFFLINE, require_folder

    path = cfg.params.get("path")
    counts = None
    if path:
        folder = Path(str(path)).expanduser()
        if cfg.params.get("gguf_file") or folder.suffix == ".gguf":
            raise ConfigError(f"{where}.params.path: kdforge plan reads transformers folders, not GGUF files")
        try:
            require_folder(folder)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(str(folder), **OFFLINE)
        except (OSError, ValueError, KeyError) as err:
            raise ConfigError(
                f"{where}.params.path: cannot read {str(folder)!r}: {' '.join(str(err).split())}"
            ) from None
        model = _meta_model(config)
        counts = _header_counts(folder)
    else:
        try:
            model = _build_meta(cfg, vocab())
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        config = model.config
    if counts is None:
        sizes = [p.numel() for p in model.parameters()]
        counts = (sum(sizes), max(sizes))
    hidden = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head = model.get_output_embeddings()
    return Arch(
        params=counts[0],
        largest=counts[1],
        hidden=hidden,
        intermediate=int(getattr(config, "intermediate_size", None) or 4 * hidden),
        layers=int(config.num_hidden_layers),
        kv=kv_heads * head_dim,
        vocab=int(config.vocab_size),
        head_bias=getattr(head, "bias", None) is not None,
    )


def _build_meta(cfg: ModelConfig, vocab: int) -> torch.nn.Module:
    from kdforge.models.hf.load import from_config

    with torch.device("meta"):
        return from_config("causal_lm", cfg.params.get("config"), vocab)


def _probe(fns: list[Any], teacher_dtype: torch.dtype | None, bias: bool) -> tuple[float, float]:
    """(working, retained) of one chunked-loss call, measured at toy size in rows × vocabulary × 4-byte units."""
    from kdforge.evaluate.memory import PeakBytes
    from kdforge.objectives.chunked import ChunkPlan, chunked_row_sums
    from kdforge.signals import HeadSignal

    c, v, n = PROBE_ROWS, PROBE_VOCAB, 2 * PROBE_ROWS
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, 1, generator=gen).requires_grad_()
    head = torch.nn.Linear(1, v, bias=bias)
    labels = torch.randint(0, v, (n,), generator=gen)
    fields = {"from_student": torch.zeros(n, dtype=torch.bool)}
    outside = [hidden, labels, *head.parameters(), *fields.values()]
    signal = None
    if teacher_dtype is not None:
        t_hidden, t_weight = torch.randn(n, 1, generator=gen), torch.randn(v, 1, generator=gen)
        signal = HeadSignal(t_hidden.to(teacher_dtype), t_weight.to(teacher_dtype))
        outside += [signal.hidden, signal.weight]
    plan = ChunkPlan(fns, signal, labels, c, v, None, fields)
    with PeakBytes(*outside) as pb:
        sums = chunked_row_sums(hidden, head, plan)
        after = pb.live
    del sums
    # The per-term gradient accumulators (N·H, V·H, V) are counted separately, at their real size.
    acc = len(fns) * (n + v + (v if bias else 0)) * 4
    retained = max(after - acc, 0) / (n * v * 4)
    working = max(pb.peak - acc - retained * c * v * 4, 0) / (c * v * 4)
    return working, retained


def _loss_groups(recipe: Recipe, teacher_dtype: torch.dtype | None, bias: bool) -> tuple[list[LossGroup], list[str]]:
    """The recipe's token terms grouped by pair as the Distiller groups them, each probed; and terms without rows."""
    from kdforge.engine.terms import parse_objectives
    from kdforge.signals import Progress

    terms, _ = parse_objectives(recipe.objectives, ["student"], ["teacher"] if teacher_dtype is not None else [])
    taught = {t.source for t in terms.values() if t.source is not None and t.objective.needs.teacher_logits}
    pairs: dict[Any, list[Any]] = {}
    dense = []
    for term in terms.values():
        if term.objective.rows is None:
            dense.append(term.name)
        else:
            pairs.setdefault(term.pair, []).append(term)
    groups = []
    for (_, source), group in pairs.items():
        fns = [t.objective.row_fn(Progress(0, 0.0, 0.0), t.objective.new_state(by_rows=True)) for t in group]
        signal = teacher_dtype if source in taught else None
        working, retained = _probe(fns, signal, bias)
        groups.append(LossGroup([t.name for t in group], signal is not None, working, retained))
    return groups, dense


def _micro_batch(recipe: Recipe, bundle: Any) -> tuple[int, int]:
    """(rows, tokens) of one micro-batch: the loader yields data.batch_size rows (one process), grad_accum a step."""
    from kdforge.data.base import dataset_params

    max_len = recipe.data.params.get("max_len")
    if max_len is None:
        max_len = dataset_params(recipe.data.name).get("max_len")
    if not isinstance(max_len, int):
        max_len = int(bundle().input_shape[0])
    return recipe.data.batch_size, int(max_len)


def estimate(recipe: Recipe) -> MemoryPlan:
    """Estimate a causal-LM recipe's peak memory per process, without loading weights (meta device, file headers)."""
    from kdforge.data.recipe_data import load_data

    if not _is_causal_lm(recipe.student):
        raise ConfigError(
            "student: kdforge plan estimates causal-LM recipes; expected {name: hf, params: {task: causal_lm, ...}}, "
            f"got name {recipe.student.name!r} with task {recipe.student.params.get('task')!r}"
        )
    t = recipe.teacher
    if t is not None and not (t.kind == "live" and isinstance(t, NetworkTeacherConfig) and _is_causal_lm(t.model)):
        raise ConfigError(
            f"teacher: kdforge plan estimates a live causal-LM teacher (kind: live, model: {{name: hf, params: "
            f"{{task: causal_lm, ...}}}}) or none; got kind {t.kind!r}"
        )
    cache: dict[str, Any] = {}

    def bundle() -> Any:
        if "data" not in cache:
            cache["data"] = load_data(recipe)
        return cache["data"]

    def vocab() -> int:
        config = recipe.student.params.get("config")
        # A config that is no mapping is refused by the builder, naming params.config; here it has no vocabulary.
        given = config.get("vocab_size") if isinstance(config, dict) else None
        return int(given) if isinstance(given, int) and not isinstance(given, bool) else int(bundle().num_classes)

    student = _arch(recipe.student, vocab, "student")
    teacher = None
    if isinstance(t, NetworkTeacherConfig) and t.model is not None:
        teacher = _arch(t.model, lambda: student.vocab, "teacher.model")
    t_format = t.dtype if isinstance(t, NetworkTeacherConfig) else "float32"
    # int8 dynamic quantization stores Linear weights in 1 byte and computes (activations, signal) in float32.
    t_bytes = {"bfloat16": 2, "float16": 2}.get(t_format, 4)
    t_dtype = (
        None if teacher is None else {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(t_format, torch.float32)
    )
    t_device = t.device if isinstance(t, NetworkTeacherConfig) else None

    rows, max_len = _micro_batch(recipe, bundle)
    tokens = rows * max_len  # every position counted: an upper bound on the target tokens
    chunk = min(recipe.train.chunk_size, tokens)
    # The chunk's logits are as wide as the wider head (the narrower side is compared on the shared rows).
    v = max(student.vocab, teacher.vocab) if teacher is not None else student.vocab
    p = student.params
    opt = recipe.train.optimizer
    states = 2 if opt.name == "adamw" else (1 if opt.momentum > 0 else 0)

    student_acts = training_activations(student, tokens)
    teacher_acts = teacher_signal = 0
    if teacher is not None:
        teacher_acts = inference_activations(teacher, tokens, t_bytes)
        teacher_signal = 2 * tokens * teacher.hidden * t_bytes  # the clone run_frozen returns + its masked copy

    groups, dense = _loss_groups(recipe, t_dtype, student.head_bias)
    cell = v * 4  # one row of float32 logits
    # Each call's gradient accumulators: one (N, H) and one (V, H) per term.
    accums = [
        len(g.terms) * (tokens * student.hidden + v * student.hidden + (v if student.head_bias else 0)) * 4
        for g in groups
    ]
    kept = [a + int(g.retained * tokens * cell) for g, a in zip(groups, accums, strict=True)]
    peaks = [
        a + int(g.retained * (tokens - chunk) * cell + g.working * chunk * cell)
        for g, a in zip(groups, accums, strict=True)
    ]
    # Calls run one after another; what earlier calls keep stays alive under the later ones.
    loss_peak = max((sum(kept[:i]) + peaks[i] for i in range(len(groups))), default=0)
    notes = []
    if dense:
        # A term without a per-token form needs the student's whole (N, V) logits, its gradient and softmax.
        loss_peak += 3 * tokens * cell
        notes.append(f"objectives {dense} have no per-token form: counted as 3 × whole (tokens × V) logits")
    if recipe.train.mixed_precision != "no":
        notes.append("activations are counted in float32 (an upper bound under mixed precision)")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    placement = {"student": f"float32 on {device}, trained (DDP-wrapped under several processes)"}
    if teacher is not None:
        where = (
            f"on {t_device} (teacher.device; its signals are moved to the student's device)"
            if t_device
            else f"on {device} (the student's device: the Trainer moves every teacher to accelerator.device)"
        )
        placement["teacher"] = (
            f"{t_format} {where}, frozen under inference_mode, never wrapped in DDP (the Trainer prepares "
            "only distiller.trainable(): students and connectors); one copy per process"
        )
    return MemoryPlan(
        name=recipe.name,
        teacher_weights=0 if teacher is None else _teacher_weight_bytes(teacher, t_format),
        teacher_device=t_device if teacher is not None else None,
        student_weights=4 * p,
        gradients=4 * p,
        optimizer_state=4 * states * p,
        optimizer_step=min(STEP_TEMPS * student.largest, 2 * p) * 4 if opt.name == "adamw" else 0,
        student_activations=student_acts,
        teacher_activations=teacher_acts,
        teacher_signal=teacher_signal,
        loss_chunk=max((int(g.working * chunk * cell) for g in groups), default=0),
        loss_retained=sum(kept),
        loss_peak=loss_peak,
        grad_accum=recipe.train.grad_accum,
        sizes={
            "batch": rows,
            "max_len": max_len,
            "tokens": tokens,
            "chunk": chunk,
            "vocab": v,
            "student_params": p,
            "student_layers": student.layers,
            "teacher_params": 0 if teacher is None else teacher.params,
            "teacher_layers": 0 if teacher is None else teacher.layers,
            "teacher_bytes": t_bytes,
            "teacher_format": t_format,
            "optimizer": opt.name,
            "optimizer_states": states,
        },
        placement=placement,
        groups=[{**asdict(g), "chunk_bytes": int(g.working * chunk * cell)} for g in groups],
        notes=notes,
    )
