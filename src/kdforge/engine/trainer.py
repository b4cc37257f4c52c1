"""Trainer: the one training loop, on Hugging Face Accelerate, for every trainable module of a Distiller.

It prepares (DDP-wraps) every student and connector, optimizes, clips, evaluates, selects by a named metric,
checkpoints resumably, stops cleanly on SIGINT/SIGTERM, and calls callbacks at step / optimizer-step / evaluation /
epoch boundaries so strategies never copy it.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

import kdforge.progress as progress
from kdforge.data.base import EpochSampler, id_space
from kdforge.engine.callbacks import Callback, CallbackList, StopRequest, TeacherHooks, stop_on_signals
from kdforge.engine.distiller import Distiller
from kdforge.engine.optim import build_optimizer, build_scheduler
from kdforge.engine.resume import (
    load_training_state,
    optimizer_state,
    restore_modules,
    rng_state,
    save_training_state,
    set_rng_state,
    teacher_groups,
)
from kdforge.engine.rundir import RunDir
from kdforge.errors import ConfigError, Interrupted, NonFiniteLossError
from kdforge.evaluate.lm import lm_metrics
from kdforge.evaluate.metrics import classification_metrics
from kdforge.evaluate.predict import predict
from kdforge.recipe import SelectConfig, TrainConfig
from kdforge.teachers.base import evaluation_model


def resolve_precision(name: str) -> str:
    """'auto' → bf16 on a GPU that has it, fp16 on other GPUs, 'no' on CPU; fp16 on CPU is refused."""
    if name == "auto":
        if torch.cuda.is_available():
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "no"
    if name == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.mixed_precision=fp16 needs a GPU; on CPU use bf16 or no")
    return name


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


def with_lookahead(batches: Iterable[Any], prefetch: Any) -> Iterator[Any]:
    """Iterate one batch ahead, handing each next batch to ``prefetch`` before the current one is used."""
    if prefetch is None:
        yield from batches
        return
    it = iter(batches)
    current = next(it, None)
    while current is not None:
        upcoming = next(it, None)
        if upcoming is not None:
            prefetch(upcoming)
        yield current
        current = upcoming


class LogWindow:
    """Means of the loss and every term over the micro-batches since the last log line (not the last one alone)."""

    def __init__(self) -> None:
        self.pending: list[dict[str, torch.Tensor]] = []
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, out: Any) -> None:
        """Keep one micro-batch's values (no host copy yet)."""
        named = {"loss": out.loss, **{f"term/{k}": v for k, v in out.terms.items()}}
        named.update({f"weighted/{k}": v for k, v in out.weighted.items()})
        self.pending.append({k: v.detach().float() for k, v in named.items()})

    def step(self) -> float:
        """Fold the optimizer step's micro-batches in (one host copy for all of them); returns the step's mean loss."""
        if not self.pending:
            return math.nan
        keys = list(self.pending[0])
        values = torch.stack([torch.stack([p[k] for k in keys]) for p in self.pending]).tolist()
        for row in values:
            for key, value in zip(keys, row, strict=True):
                self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += len(values)
        step_loss = sum(row[0] for row in values) / len(values)
        self.pending = []
        return step_loss

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
    resumed_from: int | None = None


@dataclass
class LoopState:
    """Where the loop is; all of it is saved in a resumable checkpoint."""

    step: int = 0
    epoch: int = 0
    micro: int = 0  # micro-batches of the current epoch already consumed
    best_score: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    last: dict[str, Any] | None = None


@dataclass
class Prepared:
    """What ``fit`` prepared for the loop: loaders, optimizer and schedule, wrapped modules, budget."""

    loader: Any
    eval_loaders: dict[str, Any]
    teacher_logits: dict[str, torch.Tensor]
    optimizer: Any
    scheduler: Any
    wrapped: dict[str, torch.nn.Module]
    params: list[torch.nn.Parameter]
    sampler: Any
    generator: torch.Generator | None
    total: int
    steps_per_epoch: int


def epoch_sampler(loader: Any) -> Any:
    """The loader's sampler that counts epochs (an EpochSampler, or a batch sampler with an ``epoch``), if any."""
    for candidate in (getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None)):
        if isinstance(candidate, EpochSampler) or hasattr(candidate, "epoch"):
            return candidate
    return None


def epoch_seed(seed: int, epoch: int) -> int:
    """The data order generator's seed for one epoch of a run (well mixed, so neighbouring seeds share no epoch)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0] >> 1)


def metric_of(record: dict[str, Any], select: SelectConfig) -> float | None:
    """The selection metric of an evaluation record (None when its split was not evaluated)."""
    split = record.get(select.split)
    if split is None:
        return None
    if select.metric not in split:
        raise ConfigError(
            f"train.select.metric={select.metric!r} is not reported on split {select.split!r}; "
            f"available: {', '.join(sorted(k for k in split if k != 'n'))}"
        )
    return float(split[select.metric])


def _better(score: float, best: float | None, direction: str) -> bool:
    if best is None:
        return True
    return score > best if direction == "max" else score < best


class Trainer:
    """Train every trainable module of ``distiller``; evaluate, log, checkpoint and resume as it goes."""

    def __init__(
        self,
        distiller: Distiller,
        config: TrainConfig,
        run_dir: RunDir | None = None,
        seed: int = 0,
        callbacks: Sequence[Callback] = (),
        resume: bool = False,
        batch_source: Any = None,
    ):
        self.distiller = distiller
        self.config = config
        self.seed = seed
        self.accelerator = get_accelerator(config.mixed_precision, config.grad_accum)
        self.run_dir = run_dir
        self.callbacks = CallbackList([TeacherHooks(), *callbacks])
        self.resume = resume
        self.stop = StopRequest()
        self.state = LoopState()
        self._window_tokens = 0
        # Causal LMs: replaces each batch's responses with generated ones (SeqKD, on-policy, speculative).
        self.batch_source = batch_source
        if run_dir is not None:
            run_dir.main = run_dir.main and self.accelerator.is_main_process

    # -- evaluation -------------------------------------------------------------------------------------------------

    def _log(self, record: dict[str, Any]) -> None:
        if self.run_dir is not None:
            self.run_dir.log(record)
        self.callbacks.on_log(self, record)

    def _predict(self, loader: DataLoader, model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits, labels, _ = predict(model, loader, self.accelerator.device, gather=self.accelerator.gather_for_metrics)
        return logits, labels

    def evaluate(
        self, loaders: dict[str, DataLoader], teacher_logits: dict[str, torch.Tensor]
    ) -> dict[str, dict[str, float]]:
        """Metrics of every student on every evaluation loader; the first student's under the split's own name."""
        out: dict[str, dict[str, float]] = {}
        for i, (name, student) in enumerate(self.distiller.students.items()):
            for split, loader in loaders.items():
                key = split if i == 0 else f"{split}@{name}"
                if self.distiller.adapters[name].causal_lm:
                    out[key] = self._lm_metrics(student, loader)
                    continue
                logits, labels = self._predict(loader, student)
                if labels is None:
                    continue
                metrics = classification_metrics(logits, labels, teacher_logits.get(split))
                out[key] = {**metrics, "n": int(labels.numel())}
        return out

    def _lm_metrics(self, student: torch.nn.Module, loader: DataLoader) -> dict[str, float]:
        """Perplexity, accuracy and (with a teacher network) agreement and KL, streamed in chunks of tokens."""
        network = evaluation_model(self.distiller.teacher)
        acc = self.accelerator
        reduce = (lambda t: acc.reduce(t, reduction="sum")) if acc.num_processes > 1 else None
        return lm_metrics(student, loader, acc.device, network, self.distiller.chunk_size, reduce)

    def _teacher_eval_logits(self, loaders: dict[str, DataLoader]) -> dict[str, torch.Tensor]:
        model = evaluation_model(self.distiller.teacher)
        if model is None or any(a.causal_lm for a in self.distiller.adapters.values()):
            # A causal LM's teacher is evaluated streamed, batch by batch, never kept as whole logits.
            return {}
        model.to(self.accelerator.device)
        return {name: self._predict(loader, model)[0] for name, loader in loaders.items()}

    # -- the loop ---------------------------------------------------------------------------------------------------

    def fit(self, train_loader: DataLoader, eval_loaders: dict[str, DataLoader] | None = None) -> TrainResult:
        """Run the configured budget (continuing a saved state when resuming); returns the evaluation history."""
        cfg, acc, distiller = self.config, self.accelerator, self.distiller
        set_seed(self.seed)
        select = cfg.select
        eval_loaders = dict(eval_loaders or {})
        if select.mode == "best" and select.split not in eval_loaders:
            raise ConfigError(
                f"train.select.mode=best needs a {select.split!r} split to choose on (never the test set); "
                "set data.params.val_fraction > 0 or train.select=last"
            )
        sampler, generator = epoch_sampler(train_loader), getattr(train_loader, "generator", None)
        first = next(iter(train_loader), None)
        if first is None:
            raise ConfigError("the training data yielded no batch: the training split is empty")
        if sampler is not None:
            sampler.epoch = -1
        # Recorders and connectors exist before the optimizer sees the parameters; memory banks get the data's size.
        dataset = getattr(train_loader, "dataset", None)
        ids = getattr(dataset, "indices", None)
        distiller.prepare(first, data_size=id_space(dataset), sample_ids=ids if torch.is_tensor(ids) else None)
        modules = distiller.trainable()
        optimizer = build_optimizer(distiller.parameters_to_train(), cfg.optimizer)
        # Only the students go through Accelerate (DDP): objectives call their connectors' submodules directly, never
        # a wrapper's forward, so DDP would not average their gradients. Connectors (and buffer-only modules such as
        # ND's class means) are moved here, and their gradients are averaged by hand at each optimizer step.
        students = [k for k in modules if k in distiller.students]
        prepared = acc.prepare(*(modules[k] for k in students), optimizer, train_loader)
        wrapped, optimizer, train_loader = dict(zip(students, prepared[:-2], strict=True)), prepared[-2], prepared[-1]
        distiller.connectors.to(acc.device)
        for name, runner in wrapped.items():
            distiller.wrap(name, runner)
        # Counted after prepare: under N processes each one sees 1/N of the batches.
        micro_per_epoch = len(train_loader)
        steps_per_epoch = max(1, math.ceil(micro_per_epoch / cfg.grad_accum))
        total = math.ceil(cfg.epochs * steps_per_epoch)
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps)
        # Not passed through prepare: Accelerate would step it once per process per step.
        scheduler = build_scheduler(optimizer, total, steps_per_epoch, cfg.schedule)
        eval_loaders = {k: acc.prepare(v) for k, v in eval_loaders.items()}
        for teacher in distiller.teachers.values():
            teacher.to(acc.device)
        teacher_logits = self._teacher_eval_logits(eval_loaders)
        result = TrainResult(steps=0, epochs=0.0, world_size=acc.num_processes)
        if self.resume:
            result.resumed_from = self._restore(modules, optimizer, scheduler, generator)
        self.callbacks.on_fit_start(self)
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            with stop_on_signals(self.stop):
                params = [p for m in wrapped.values() for p in m.parameters()]
                self._loop(
                    Prepared(
                        train_loader,
                        eval_loaders,
                        teacher_logits,
                        optimizer,
                        scheduler,
                        wrapped,
                        params,
                        sampler,
                        generator,
                        total,
                        steps_per_epoch,
                    )
                )
            acc.wait_for_everyone()
        except BaseException as err:
            error = err
            raise
        finally:
            # Accelerate may have patched forward with autocast; the exported students must be the plain modules.
            for name, runner in wrapped.items():
                acc.unwrap_model(runner, keep_fp32_wrapper=False)
                distiller.wrap(name, modules[name])
            # The Accelerator outlives this fit: drop its references to our models, optimizer and loaders.
            acc.free_memory()
            self.callbacks.on_fit_exit(self, error)  # trackers flush and close, whichever way the loop was left
        if self.stop:
            # A signal that arrived after the last step (evaluation, saving): training is complete and saved, but
            # the command was interrupted and must not exit 0; a resume finishes the summary.
            raise Interrupted(self.stop.signum or signal.SIGINT, self._stop_message())
        st = self.state
        result.steps, result.epochs = st.step, st.step / steps_per_epoch
        result.history, result.best, result.last = st.history, st.best, st.last
        result.wall_s = time.perf_counter() - started
        if select.mode == "best" and self.run_dir is not None and (self.run_dir.checkpoints / "best").exists():
            _, tensors = load_training_state(self.run_dir.checkpoints / "best")
            restore_modules({**distiller.stateful(), **modules}, tensors["modules.safetensors"])
        self.callbacks.on_fit_end(self, result)
        return result

    def _loop(self, run: Prepared) -> None:
        cfg, acc, st = self.config, self.accelerator, self.state
        window = LogWindow()
        self.distiller.train()
        show = progress.enabled(acc.is_main_process)
        # A teacher streaming its store from disk reads the next batch's shards while this step runs. Not with
        # accumulation: fetching a batch early moves Accelerate's end-of-loader flag, and with it the epoch's last
        # gradient sync (shards are then read on demand, still shard-local).
        teacher = self.distiller.teacher
        prefetch = teacher.prefetch if teacher is not None and teacher.streams and cfg.grad_accum == 1 else None
        with progress.bar(f"train {self.run_dir.path.name if self.run_dir else ''}", run.total, show) as bar:
            if bar is not None and st.step:
                bar.update(0, advance=st.step)
            while st.step < run.total:
                for batch in with_lookahead(self._epoch_batches(run), prefetch):
                    with acc.accumulate(*run.wrapped.values()):
                        self._micro_step(run, batch, window)
                    if acc.sync_gradients and self._after_optimizer_step(run, window, bar):
                        break
                else:
                    # The loader ran out without a final sync (nothing left to accumulate): the epoch is over.
                    st.epoch, st.micro = st.epoch + 1, 0

    def _epoch_batches(self, run: Prepared) -> Iterator[Any]:
        """The current epoch's batches in an order fixed by the seed and epoch, past those already consumed."""
        st, generator = self.state, run.generator
        if generator is not None:
            # The order depends on the seed and the epoch alone, never on how much earlier epochs drew from the
            # generator (the loader draws a worker seed, the sampler may draw past its last batch): a run resumed
            # at any step, an epoch boundary included, replays the order an uninterrupted run saw.
            generator.manual_seed(epoch_seed(self.seed, st.epoch))
        if run.sampler is not None:
            run.sampler.epoch = st.epoch - 1
        batches = iter(run.loader)
        for _ in range(st.micro):
            next(batches)
        return batches

    def _micro_step(self, run: Prepared, batch: Any, window: LogWindow) -> None:
        """Forward and backward of one micro-batch; clip and step at accumulation boundaries."""
        cfg, acc, st = self.config, self.accelerator, self.state
        if self.batch_source is not None:
            batch = self.batch_source(batch, st.step)
        # The whole Distiller under autocast, not only the students' forwards: connectors run on recorded features.
        with acc.autocast():
            out = self.distiller(batch, step=st.step, epoch=st.step / run.steps_per_epoch, progress=st.step / run.total)
        if acc.num_processes == 1:
            self._check_finite(out.loss, out.terms, st.step)
        # Under N processes a rank must not leave alone: the others would wait for it in the gradient all-reduce
        # forever; every rank stops together at the checks below.
        if out.tokens is not None:
            # Token losses: backward on the micro-batch's token sum; at the optimizer step the gradients are divided
            # by the target tokens of the whole accumulated global batch (TRL's and torchtune's normalization).
            self._window_tokens += out.tokens
            acc.backward(out.loss * out.tokens)
        else:
            acc.backward(out.loss)
        window.add(out)
        st.micro += 1
        self.callbacks.on_batch_end(self, out)
        skipped = False
        if acc.sync_gradients:
            if acc.num_processes > 1:
                self._check_finite_everywhere(out, st.step)
                self._average_connector_grads()
            if out.tokens is not None:
                self._normalize_by_tokens(run.params)
            norm = acc.clip_grad_norm_(run.params, cfg.grad_clip or math.inf)
            if not torch.isfinite(torch.as_tensor(norm)):
                if acc.scaler is None:
                    # A finite loss can still give inf gradients; stop before they reach the weights.
                    self._check_finite(out.loss, out.terms, st.step)
                    raise NonFiniteLossError(st.step, "gradient norm", float(norm))
                skipped = True  # fp16: the GradScaler skips this step and lowers its scale
        run.optimizer.step()  # Accelerate's wrapper skips it between accumulation boundaries
        if acc.sync_gradients and not skipped:
            run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)

    def _average_connector_grads(self) -> None:
        """All-reduce (mean) the gradients of connectors and other built modules, which DDP does not see."""
        params = [p for p in self.distiller.connectors.parameters() if p.requires_grad]
        if not params:
            return
        # A parameter without a gradient on this rank still takes part (as zeros): every rank sends the same sizes.
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        torch.distributed.all_reduce(flat)
        flat /= self.accelerator.num_processes
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def _normalize_by_tokens(self, params: list[torch.nn.Parameter]) -> None:
        """Divide the accumulated gradients by the global batch's target tokens (all processes, all micro-batches)."""
        acc = self.accelerator
        count = torch.tensor([float(self._window_tokens)], device=acc.device)
        total = float(acc.reduce(count, reduction="sum")) if acc.num_processes > 1 else float(count)
        self._window_tokens = 0
        if total <= 0:
            raise ConfigError(
                f"step {self.state.step}: every token of the global batch is masked (no next-token target in any "
                "micro-batch); expected at least one target token — check prompt masking and max_len"
            )
        # Accelerate divided each micro-batch's loss by grad_accum and DDP averages over processes.
        factor = acc.num_processes * self.config.grad_accum / total
        for p in params:
            if p.grad is not None:
                p.grad.mul_(factor)

    def _after_optimizer_step(self, run: Prepared, window: LogWindow, bar: Any) -> bool:
        """Log, end the epoch, evaluate, checkpoint, honour a stop request; True when the epoch's loop must end."""
        cfg, st = self.config, self.state
        st.step += 1
        loss = window.step()
        self.distiller.on_optimizer_step(st.step / run.total)
        self.callbacks.on_optimizer_step(self, st.step)
        if bar is not None:
            bar.update(0, advance=1, info=f"loss {loss:.4f}")
        epoch_now = round(st.step / run.steps_per_epoch, 4)
        last = st.step >= run.total
        if st.step % cfg.log_every == 0 or last:
            lr = run.scheduler.get_last_lr()[0]
            gen = self.batch_source.stats() if self.batch_source is not None else {}
            self._log({"split": "train", "step": st.step, "epoch": epoch_now, "lr": lr, **window.pop(), **gen})
        epoch_done = st.micro >= len(run.loader)
        if epoch_done:
            st.epoch, st.micro = st.epoch + 1, 0
            self.callbacks.on_epoch_end(self, st.epoch)
        due = st.step % cfg.eval_every == 0 if cfg.eval_every else st.step % run.steps_per_epoch == 0
        if due or last:
            self._evaluate_and_select(run.eval_loaders, run.teacher_logits, epoch_now)
            self.distiller.train()
        if due or last or self._checkpoint_due(st.step) or self.stop:
            self._save(run.optimizer, run.scheduler, finished=last)
        if self.stop:
            raise Interrupted(self.stop.signum or signal.SIGINT, self._stop_message())
        return last or epoch_done

    def _checkpoint_due(self, step: int) -> bool:
        every = self.config.checkpoint_every
        return bool(every) and step % every == 0

    def _stop_message(self) -> str:
        where = f" in {self.run_dir.checkpoints / 'last'}" if self.run_dir is not None else ""
        resume = f"; continue with: kdforge run --resume {self.run_dir.root}" if self.run_dir is not None else ""
        return f"interrupted at step {self.state.step}; checkpoint saved{where}{resume}"

    def _evaluate_and_select(
        self, loaders: dict[str, Any], teacher_logits: dict[str, torch.Tensor], epoch: float
    ) -> None:
        st, select = self.state, self.config.select
        teacher = self.distiller.teacher
        if teacher is not None and teacher.changes:
            # An EMA teacher moved since the last evaluation: agreement and KL compare with the teacher of now.
            teacher_logits = self._teacher_eval_logits(loaders)
        metrics = self.evaluate(loaders, teacher_logits)
        record: dict[str, Any] = {"step": st.step, "epoch": epoch, **metrics}
        for split, values in metrics.items():
            self._log({"split": split, "step": st.step, "epoch": epoch, **values})
        st.history.append(record)
        st.last = record
        score = metric_of(record, select)
        improved = score is not None and _better(score, st.best_score, select.direction)
        if improved:
            st.best_score, st.best = score, record
        elif st.best is None and score is None:
            st.best = record
        if improved and self.run_dir is not None and self.run_dir.main:
            # Kept whatever train.select says: `kdforge eval --checkpoint best` can always look at it.
            save_training_state(self.run_dir.checkpoints / "best", self.distiller.stateful(), self._json_state(True))
        self.callbacks.on_evaluate(self, record)

    def _json_state(self, finished: bool) -> dict[str, Any]:
        st = self.state
        return {
            "step": st.step,
            "epoch": st.epoch,
            "micro": st.micro,
            "best_score": st.best_score,
            "history": st.history,
            "best": st.best,
            "last": st.last,
            "metrics": {k: v for k, v in (st.last or {}).items() if k not in ("step", "epoch")},
            "seed": self.seed,
            "term_states": self.distiller.term_state_dict(),
            "finished": finished,
            "accelerate_step": self.accelerator.step,
        }

    def _save(self, optimizer: Any, scheduler: Any, finished: bool) -> None:
        if self.run_dir is None or not self.run_dir.main:
            return
        state = {**self._json_state(finished), "scheduler": scheduler.state_dict()}
        teachers = {k: t.state_dict() for k, t in self.distiller.teachers.items()}
        save_training_state(
            self.run_dir.checkpoints / "last",
            self.distiller.stateful(),
            state,
            optimizer,
            teachers={k: v for k, v in teachers.items() if v},
            rng=rng_state(),
        )

    def _restore(self, modules: dict[str, Any], optimizer: Any, scheduler: Any, generator: Any) -> int | None:
        """Load the last checkpoint of the run folder, if any; returns the step it continues from."""
        if self.run_dir is None:
            raise ConfigError("resume needs a run folder")
        last = self.run_dir.checkpoints / "last"
        if not (last.exists() or last.with_name(".last.old").exists()):
            self.run_dir.truncate_metrics(0)
            return None  # killed before its first checkpoint: start over, as the same seed would
        # A finished state is restored too: training is over, and the run goes on to write what it had not yet
        # (its summary); a run whose summary exists is refused before it gets here, so nothing is overwritten.
        state, tensors = load_training_state(last)
        # Buffer-only connectors (ND's class means) are not handed to the optimizer but are part of the state.
        restore_modules({**self.distiller.stateful(), **modules}, tensors["modules.safetensors"])
        if "optimizer.safetensors" in tensors:
            optimizer.load_state_dict(optimizer_state(tensors["optimizer.safetensors"], state["optimizer"]))
        scheduler.load_state_dict(state["scheduler"])
        groups = teacher_groups(tensors.get("teachers.safetensors", {}))
        for name, teacher in self.distiller.teachers.items():
            if name in groups:
                teacher.load_state_dict(groups[name])
        st = self.state
        st.step, st.epoch, st.micro = state["step"], state["epoch"], state["micro"]
        st.best_score, st.history, st.best, st.last = (
            state["best_score"],
            state["history"],
            state["best"],
            state["last"],
        )
        self.distiller.load_term_state_dict(state.get("term_states", {}))
        self.accelerator.step = state.get("accelerate_step", 0)
        if "rng.safetensors" in tensors:
            set_rng_state(tensors["rng.safetensors"], state["rng"])
        self.run_dir.truncate_metrics(st.step)
        return st.step

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


def checkpoint_path(run_dir: RunDir, which: str = "last") -> Path:
    """Where a run keeps its ``last`` (resumable) or ``best`` checkpoint."""
    return run_dir.checkpoints / which
