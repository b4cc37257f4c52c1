"""Trainer: the one training loop, on Hugging Face Accelerate (AMP, accumulation, DDP via accelerate launch)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from kdforge import progress
from kdforge.engine.checkpoint import load_checkpoint, save_checkpoint
from kdforge.engine.distiller import Distiller
from kdforge.engine.optim import build_optimizer, build_scheduler
from kdforge.engine.rundir import RunDir
from kdforge.errors import ConfigError, NonFiniteLossError
from kdforge.evaluate.metrics import classification_metrics
from kdforge.evaluate.predict import predict
from kdforge.recipe import TrainConfig
from kdforge.teachers.base import evaluation_model
from kdforge.teachers.live import Live


def resolve_precision(name: str) -> str:
    """'auto' → bf16 on a GPU that has it, fp16 on other GPUs, 'no' on CPU."""
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


_ACCELERATOR: Accelerator | None = None


def get_accelerator(mixed_precision: str | None = None, grad_accum: int | None = None) -> Accelerator:
    """One Accelerator per process (Accelerate's state is process-wide); None leaves a setting as it is."""
    global _ACCELERATOR
    precision = resolve_precision(mixed_precision or "no")
    if _ACCELERATOR is None:
        # Without cpu=True, Accelerate ignores torchrun's WORLD_SIZE on a machine with no GPU and runs one process.
        cpu = not torch.cuda.is_available()
        _ACCELERATOR = Accelerator(cpu=cpu, mixed_precision=precision, gradient_accumulation_steps=grad_accum or 1)
    elif mixed_precision is not None and _ACCELERATOR.mixed_precision != precision:
        raise ConfigError(
            f"train.mixed_precision={precision!r} differs from {_ACCELERATOR.mixed_precision!r} already used in "
            "this process; run the two settings in separate processes"
        )
    if grad_accum is not None:
        _ACCELERATOR.gradient_accumulation_steps = grad_accum
    return _ACCELERATOR


def with_lookahead(loader: Any, prefetch: Any) -> Iterator[Any]:
    """Iterate ``loader`` one batch ahead, handing each next batch to ``prefetch`` before the current one is used."""
    if prefetch is None:
        yield from loader
        return
    batches = iter(loader)
    current = next(batches, None)
    while current is not None:
        upcoming = next(batches, None)
        if upcoming is not None:
            prefetch(upcoming)
        yield current
        current = upcoming


class LogWindow:
    """Running means of the loss and every term between two log lines (not just the last micro-batch)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, out: Any) -> float:
        """Accumulate one optimizer step's values; returns the step's loss."""
        named = {"loss": out.loss, **{f"term/{k}": v for k, v in out.terms.items()}}
        named.update({f"weighted/{k}": v for k, v in out.weighted.items()})
        # One device-to-host copy for all of them: on a GPU each .item() would be a separate sync.
        values = torch.stack([v.detach().float() for v in named.values()]).tolist()
        for key, value in zip(named, values, strict=True):
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1
        return values[0]

    def pop(self) -> dict[str, float]:
        """The means since the last pop, then start a new window."""
        means = {k: v / max(self.count, 1) for k, v in self.sums.items()}
        self.sums, self.count = {}, 0
        return means


@dataclass
class TrainResult:
    """What a fit returns: evaluation history, best and last records, timing."""

    steps: int
    epochs: float
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    last: dict[str, Any] | None = None
    wall_s: float = 0.0
    world_size: int = 1


class Trainer:
    """Train ``distiller.student`` with its objectives; evaluate, log and checkpoint as it goes."""

    def __init__(self, distiller: Distiller, config: TrainConfig, run_dir: RunDir | None = None, seed: int = 0):
        self.distiller = distiller
        self.config = config
        self.seed = seed
        self.accelerator = get_accelerator(config.mixed_precision, config.grad_accum)
        self.run_dir = run_dir
        if run_dir is not None:
            run_dir.main = run_dir.main and self.accelerator.is_main_process

    def _log(self, record: dict[str, Any]) -> None:
        if self.run_dir is not None:
            self.run_dir.log(record)

    def _predict(self, loader: DataLoader, model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits, labels, _ = predict(model, loader, self.accelerator.device, gather=self.accelerator.gather_for_metrics)
        return logits, labels

    def evaluate(
        self, loaders: dict[str, DataLoader], teacher_logits: dict[str, torch.Tensor]
    ) -> dict[str, dict[str, float]]:
        """Metrics of the student on every evaluation loader (gathered across processes)."""
        out: dict[str, dict[str, float]] = {}
        for name, loader in loaders.items():
            logits, labels = self._predict(loader, self.distiller.student)
            if labels is None:
                continue
            out[name] = {**classification_metrics(logits, labels, teacher_logits.get(name)), "n": int(labels.numel())}
        return out

    def fit(
        self,
        train_loader: DataLoader,
        eval_loaders: dict[str, DataLoader] | None = None,
        select_on: str = "val",
    ) -> TrainResult:
        """Run the configured budget; returns the evaluation history and the best/last records."""
        cfg, acc, distiller = self.config, self.accelerator, self.distiller
        set_seed(self.seed)
        eval_loaders = dict(eval_loaders or {})
        optimizer = build_optimizer(distiller.parameters_to_train(), cfg.optimizer)
        student, optimizer, train_loader = acc.prepare(distiller.student, optimizer, train_loader)
        # Counted after prepare: under N processes each one sees 1/N of the batches.
        steps_per_epoch = max(1, math.ceil(len(train_loader) / cfg.grad_accum))
        total = math.ceil(cfg.epochs * steps_per_epoch)
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps)
        # Not passed through prepare: Accelerate would step it once per process per step.
        scheduler = build_scheduler(optimizer, total, steps_per_epoch, cfg.schedule)
        eval_loaders = {k: acc.prepare(v) for k, v in eval_loaders.items()}
        distiller.wrap_student(student)
        if isinstance(distiller.teacher, Live):
            distiller.teacher.to(acc.device)
        teacher_logits = self._teacher_eval_logits(eval_loaders)
        if cfg.select == "best" and select_on not in eval_loaders:
            raise ConfigError(
                f"train.select=best needs a {select_on!r} split to choose on (never the test set); "
                "set data.params.val_fraction > 0 or train.select=last"
            )

        try:
            result = TrainResult(steps=0, epochs=0.0, world_size=acc.num_processes)
            best_score = -math.inf
            step, started = 0, time.perf_counter()
            window = LogWindow()
            distiller.train()
            show = progress.enabled(acc.is_main_process)
            with progress.bar(f"train {self.run_dir.path.name if self.run_dir else ''}", total, show) as bar:
                # A teacher streaming its store from disk reads the next batch's shards while this step runs.
                # Not with accumulation: fetching a batch early moves Accelerate's end-of-loader flag, and with it
                # the last gradient sync of the epoch (shards are then read on demand, still shard-local).
                streams = getattr(distiller.teacher, "streams", False) and cfg.grad_accum == 1
                prefetch = distiller.teacher.prefetch if streams else None
                while step < total:
                    for batch in with_lookahead(train_loader, prefetch):
                        with acc.accumulate(student):
                            epoch_f = step / steps_per_epoch
                            out = distiller(batch, step=step, epoch=epoch_f, progress=step / total)
                            if acc.num_processes == 1:
                                self._check_finite(out.loss, out.terms, step)
                            # Under N processes a rank must not leave alone: the others would wait for it in the
                            # gradient all-reduce forever. A NaN loss reaches every rank through that all-reduce,
                            # and all of them stop together at the gradient-norm check below.
                            acc.backward(out.loss)
                            if acc.sync_gradients:
                                if acc.num_processes > 1:
                                    self._check_finite_everywhere(out, step)
                                # A finite loss can still give inf gradients; stop before they reach the weights.
                                norm = acc.clip_grad_norm_(student.parameters(), cfg.grad_clip or math.inf)
                                if not torch.isfinite(torch.as_tensor(norm)):
                                    self._check_finite(out.loss, out.terms, step)  # names the term on its rank
                                    raise NonFiniteLossError(step, "gradient norm", float(norm))
                            optimizer.step()  # Accelerate's wrapper skips it between accumulation boundaries
                            if acc.sync_gradients:
                                scheduler.step()
                            optimizer.zero_grad(set_to_none=True)
                        if not acc.sync_gradients:
                            continue
                        step += 1
                        loss = window.add(out)
                        if bar is not None:
                            bar.update(0, advance=1, info=f"loss {loss:.4f}")
                        if step % cfg.log_every == 0 or step == total:
                            epoch_now = round(step / steps_per_epoch, 4)
                            lr = scheduler.get_last_lr()[0]
                            self._log({"split": "train", "step": step, "epoch": epoch_now, "lr": lr, **window.pop()})
                        due = step % cfg.eval_every == 0 if cfg.eval_every else step % steps_per_epoch == 0
                        if due or step == total:
                            record = self._eval_and_checkpoint(
                                step,
                                steps_per_epoch,
                                eval_loaders,
                                teacher_logits,
                                select_on,
                                best_score,
                                optimizer,
                            )
                            result.history.append(record)
                            score = record.get(select_on, {}).get("accuracy", -math.inf)
                            if score > best_score:
                                best_score, result.best = score, record
                            result.last = record
                            distiller.train()
                        if step >= total:
                            break
            result.steps, result.epochs = step, step / steps_per_epoch
            result.wall_s = time.perf_counter() - started
            acc.wait_for_everyone()
        finally:
            # Accelerate may have patched forward with autocast; the exported student must be the plain module.
            acc.unwrap_model(student, keep_fp32_wrapper=False)
            distiller.wrap_student(distiller.student)
            # The Accelerator outlives this fit: drop its references to our model, optimizer and loaders.
            acc.free_memory()
        if cfg.select == "best" and self.run_dir is not None and (self.run_dir.checkpoints / "best").exists():
            load_checkpoint(self.run_dir.checkpoints / "best", distiller.student)
        return result

    def _teacher_eval_logits(self, loaders: dict[str, DataLoader]) -> dict[str, torch.Tensor]:
        model = evaluation_model(self.distiller.teacher)
        if model is None:
            return {}
        model.to(self.accelerator.device)
        return {name: self._predict(loader, model)[0] for name, loader in loaders.items()}

    def _check_finite_everywhere(self, out: Any, step: int) -> None:
        """One small all-reduce per optimizer step: if any process has a non-finite loss, every process stops.

        A NaN loss can come with finite gradients (a batch whose labels are all ignored); the gradient check alone
        would then let the other processes train on.
        """
        acc = self.accelerator
        bad = torch.tensor([0.0 if torch.isfinite(out.loss) else 1.0], device=acc.device)
        if float(acc.reduce(bad, reduction="sum")) > 0:
            self._check_finite(out.loss, out.terms, step)  # names the term on the process that has it
            raise NonFiniteLossError(step, "loss on another process", float("nan"))

    @staticmethod
    def _check_finite(loss: torch.Tensor, terms: dict[str, torch.Tensor], step: int) -> None:
        if torch.isfinite(loss):
            return
        for name, value in terms.items():
            if not torch.isfinite(value):
                raise NonFiniteLossError(step, name, float(value))
        raise NonFiniteLossError(step, "total", float(loss))

    def _eval_and_checkpoint(
        self,
        step: int,
        steps_per_epoch: int,
        loaders: dict[str, DataLoader],
        teacher_logits: dict[str, torch.Tensor],
        select_on: str,
        best_score: float,
        optimizer: torch.optim.Optimizer,
    ) -> dict[str, Any]:
        metrics = self.evaluate(loaders, teacher_logits)
        record: dict[str, Any] = {"step": step, "epoch": round(step / steps_per_epoch, 4), **metrics}
        for split, values in metrics.items():
            self._log({"split": split, "step": step, "epoch": record["epoch"], **values})
        if self.run_dir is not None and self.run_dir.main:
            state = {"step": step, "epoch": record["epoch"], "metrics": metrics, "seed": self.seed}
            student = self.distiller.student
            save_checkpoint(self.run_dir.checkpoints / "last", student, state, optimizer)
            if metrics.get(select_on, {}).get("accuracy", -math.inf) > best_score:
                save_checkpoint(self.run_dir.checkpoints / "best", student, state)
        return record
