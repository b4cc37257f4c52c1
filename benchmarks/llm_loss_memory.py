"""Peak memory and time of one LM distillation loss step: kdforge's chunked JSD / forward KL vs full logits vs TRL.

Sizes: vocabulary 49,152 and 4 × 1,024 tokens; student and teacher width 576 (SmolLM2-135M's hidden size, the
student of the LLM benchmarks), float32, CPU. Every arm starts from the same tensors — the student's last hidden
states (4096 × 576, requires grad) and head weight (49,152 × 576, requires grad), the teacher's hidden states and
head (no grad) — so the LM-head matmuls are part of every arm:

* ``naive``: logits_s = h_s @ W_sᵀ and logits_t = h_t @ W_tᵀ (4096 × 49,152 each), then the loss in plain PyTorch;
* ``trl``: the same logits, shaped (4, 1024, V), fed to TRL's ``GKDTrainer.generalized_jsd_loss`` (labels all kept,
  so its batchmean is the mean over the 4,096 tokens, as ``GKDTrainer.compute_loss`` calls it);
* ``kdforge_c{512,1024,2048}``: ``chunked_row_sums`` with a ``HeadSignal`` teacher, chunks of 512 / 1024 / 2048 rows
  (``--chunks``), the objective's row form as the Distiller binds it (closed-form gradient for JSD and forward KL).

Losses: generalized JSD β=0.5 and forward KL (TRL's β=0), T=1. A step is forward + backward to h_s.grad / W_s.grad.

Measured per arm:

* peak memory, in a fresh subprocess per arm, run before the parent allocates anything large: the process RSS
  high-water mark over one step minus the RSS once the inputs are allocated, read two ways — VmHWM (reset through
  /proc/self/clear_refs at the baseline) and ``getrusage(RUSAGE_SELF).ru_maxrss`` (which Linux carries over from
  the launching process at exec, hence the ordering and the recorded baseline gap) — and the live tensor bytes
  counted by kdforge's ``PeakBytes`` dispatch mode over a second step (inputs not counted; the gradients it leaves
  in .grad are). A probe checks that ``PeakBytes`` sees allocations made inside a custom autograd Function's
  forward and backward (ChunkedRows computes its gradient inside forward);
* time per step: arms interleaved in one process, 1 warm-up round then ``--repeats`` rounds (order rotated each
  round); median / min / max seconds, and the median of the per-round ratios to the naive arm of the same loss;
* agreement: loss values (relative) and the max abs difference of h_s.grad and W_s.grad against naive and TRL, plus
  a small exact check (V=1000, N=300, H=64, chunks not dividing N) of kdforge against TRL to 1e-6.

TRL lives in a throwaway environment outside the repository, never a kdforge dependency (torch pinned to the local
CPU wheel in the same command; torch's vision add-on is never installed)::

    python3 -m venv /tmp/trlenv
    /tmp/trlenv/bin/pip install torch==2.13.0
    /tmp/trlenv/bin/pip install trl scikit-learn torch==2.13.0
    cd /work/main && HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH=src \\
        /tmp/trlenv/bin/python benchmarks/llm_loss_memory.py        # ~25 min on 2 cores; writes the JSON below

Without TRL installed the script still runs (kdforge vs naive) and says so in the JSON. Writes
benchmarks/results/llm_loss_memory.json. ``--arm NAME`` is the per-arm memory subprocess (internal).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch
import torch.nn.functional as F
from torch import Tensor

from kdforge.evaluate.memory import PeakBytes
from kdforge.objectives import objective
from kdforge.objectives import token_math as tm
from kdforge.objectives.chunked import ChunkPlan, chunked_row_sums
from kdforge.signals import HeadSignal, Progress

BATCH, SEQ, VOCAB, H_STUDENT, H_TEACHER = 4, 1024, 49_152, 576, 576  # 576: SmolLM2-135M's hidden size
CHUNKS = (512, 1024, 2048)
LOSSES = {"jsd": 0.5, "forward_kl": 0.0}  # loss → TRL's β
RESULT = Path(__file__).resolve().parent / "results" / "llm_loss_memory.json"
MB = 1e6


def load_trl() -> tuple[Callable[..., Tensor] | None, str | None, str]:
    """TRL's generalized_jsd_loss, TRL's version and where it came from (None, None, reason when not installed)."""
    try:
        import trl
    except ImportError as err:
        return None, None, f"TRL not importable: {err}"
    try:
        from trl import GKDTrainer  # older releases
    except ImportError:
        from trl.experimental.gkd import GKDTrainer  # TRL ≥ 0.2x moved GKD to trl.experimental
    return GKDTrainer.generalized_jsd_loss, trl.__version__, f"{GKDTrainer.__module__}.GKDTrainer"


TRL_LOSS, TRL_VERSION, TRL_SOURCE = load_trl()


@dataclass
class Inputs:
    """The differentiable student side and the fixed teacher side of one step."""

    h_s: Tensor  # (N, H_s), requires grad
    w_s: Tensor  # (V, H_s), requires grad
    h_t: Tensor  # (N, H_t)
    w_t: Tensor  # (V, H_t)
    batch: int

    @property
    def tensors(self) -> tuple[Tensor, ...]:
        """The four input tensors."""
        return self.h_s, self.w_s, self.h_t, self.w_t

    def clear(self) -> None:
        """Drop the gradients of the previous step."""
        self.h_s.grad = None
        self.w_s.grad = None


def make_inputs(batch: int, seq: int, vocab: int, h_s: int, h_t: int, seed: int = 0) -> Inputs:
    """Seeded inputs filled in place (no temporaries, so the RSS baseline is the inputs alone); logits std ≈ 2."""
    g = torch.Generator().manual_seed(seed)
    n = batch * seq

    def normal(rows: int, cols: int, std: float) -> Tensor:
        return torch.empty(rows, cols).normal_(0.0, std, generator=g)

    student = normal(n, h_s, 1.0).requires_grad_(), normal(vocab, h_s, 2.0 / math.sqrt(h_s)).requires_grad_()
    teacher = normal(n, h_t, 1.0), normal(vocab, h_t, 2.5 / math.sqrt(h_t))
    return Inputs(*student, *teacher, batch=batch)


def plain_rows(s: Tensor, log_p: Tensor, beta: float) -> Tensor:
    """Per-row generalized JSD (β=0: KL(p_t ‖ p_s)) of student logits ``s``, the textbook formula in plain PyTorch."""
    log_q = F.log_softmax(s, dim=-1)
    if beta == 0:
        return (log_p.exp() * (log_p - log_q)).sum(-1)
    log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log1p(-beta))
    kl_p = (log_p.exp() * (log_p - log_m)).sum(-1)
    kl_q = (log_q.exp() * (log_q - log_m)).sum(-1)
    return beta * kl_p + (1 - beta) * kl_q


def naive_loss(inp: Inputs, beta: float) -> Tensor:
    """Full (N, V) logits of both models, then ``plain_rows`` over all of them, token mean."""
    z_s = inp.h_s @ inp.w_s.t()
    with torch.no_grad():
        log_p = F.log_softmax(inp.h_t @ inp.w_t.t(), dim=-1)
    return plain_rows(z_s, log_p, beta).mean()


def trl_loss(inp: Inputs, beta: float) -> Tensor:
    """TRL's GKDTrainer.generalized_jsd_loss on (B, S, V) logits, every label kept (as GKDTrainer.compute_loss)."""
    assert TRL_LOSS is not None
    n, vocab = inp.h_s.shape[0], inp.w_s.shape[0]
    z_s = (inp.h_s @ inp.w_s.t()).view(inp.batch, n // inp.batch, vocab)
    with torch.no_grad():
        z_t = (inp.h_t @ inp.w_t.t()).view(inp.batch, n // inp.batch, vocab)
    labels = torch.zeros(inp.batch, n // inp.batch, dtype=torch.long)
    return TRL_LOSS(z_s, z_t, labels=labels, beta=beta, temperature=1.0)


class Head(torch.nn.Module):
    """A bias-free LM head whose weight is the shared student weight tensor (the leaf every arm differentiates)."""

    def __init__(self, weight: Tensor) -> None:
        """Wrap ``weight`` without copying it."""
        super().__init__()
        self.weight = weight
        self.bias = None


def kdforge_loss(inp: Inputs, beta: float, chunk: int) -> Tensor:
    """kdforge's chunked engine: per-chunk student and teacher (HeadSignal) logits, gradient made in forward."""
    # The objective's bound row form, as the Distiller uses it: with its closed-form gradient where it has one.
    term = objective("jsd", beta=beta, T=1.0) if beta > 0 else objective("forward_kl", T=1.0)
    row = term.row_fn(Progress(step=0, epoch=0.0, progress=0.0))
    plan = ChunkPlan(rows=[row], signal=HeadSignal(inp.h_t, inp.w_t), labels=None, chunk=chunk, vocab=inp.w_s.shape[0])
    return chunked_row_sums(inp.h_s, Head(inp.w_s), plan)[0] / inp.h_s.shape[0]


def arm_names() -> list[str]:
    """Every arm, '<loss>/<implementation>'."""
    impls = ["naive", *(["trl"] if TRL_LOSS is not None else []), *(f"kdforge_c{c}" for c in CHUNKS)]
    return [f"{loss}/{impl}" for loss in LOSSES for impl in impls]


def arm_loss(name: str) -> Callable[[Inputs], Tensor]:
    """The loss function of an arm."""
    loss, impl = name.split("/")
    beta = LOSSES[loss]
    if impl == "naive":
        return partial(naive_loss, beta=beta)
    if impl == "trl":
        return partial(trl_loss, beta=beta)
    return partial(kdforge_loss, beta=beta, chunk=int(impl.removeprefix("kdforge_c")))


def step(fn: Callable[[Inputs], Tensor], inp: Inputs) -> float:
    """One forward + backward from fresh gradients; the loss value."""
    inp.clear()
    loss = fn(inp)
    loss.backward()
    return float(loss.detach())


def proc_status(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS: resident now, VmHWM: its high-water mark), bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def max_rss() -> int:
    """getrusage's RSS high-water mark, bytes (ru_maxrss is KiB on Linux).

    Linux carries the launching process's high-water mark into an exec'd child's ru_maxrss, so the per-arm
    subprocesses are started before the parent allocates anything large (see ``main``) and the baseline gap is kept.
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_high_water() -> bool:
    """Reset this process's VmHWM to its current RSS (/proc/self/clear_refs, value 5); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def measure_arm(name: str) -> dict[str, Any]:
    """Fresh-process memory of one arm: RSS high-water over one step (two ways), then PeakBytes over a second step."""
    inp = make_inputs(BATCH, SEQ, VOCAB, H_STUDENT, H_TEACHER)
    fn = arm_loss(name)
    reset = reset_high_water()
    base_rss, base_ru, base_hwm = proc_status("VmRSS"), max_rss(), proc_status("VmHWM")
    loss = step(fn, inp)
    after_ru, after_hwm = max_rss(), proc_status("VmHWM")
    inp.clear()
    with PeakBytes(*inp.tensors) as mode:
        out = fn(inp)
        out.backward()
    return {
        "arm": name,
        "loss": loss,
        # ru_maxrss after the step minus before it (inputs allocated); valid when the before value is this process's
        # RSS then (gap ≈ 0), not an earlier or inherited high-water mark.
        "ru_maxrss_peak_bytes": after_ru - base_ru,
        "ru_maxrss_baseline_gap_bytes": base_ru - base_rss,
        # VmHWM reset to the RSS at the baseline, then read after the step: the step's own high-water mark.
        "vmhwm_peak_bytes": after_hwm - base_rss,
        "vmhwm_reset": reset,
        "vmhwm_baseline_gap_bytes": base_hwm - base_rss,
        "rss_baseline_bytes": base_rss,
        "peakbytes_bytes": mode.peak,
        "peakbytes_live_after_bytes": mode.live,  # the .grad tensors left behind
    }


def run_arm_subprocess(name: str, threads: int) -> dict[str, Any]:
    """``measure_arm`` in a fresh interpreter (a clean RSS high-water mark)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--arm", name, "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=os.environ.copy())
    if done.returncode != 0:
        raise RuntimeError(f"{name}: subprocess failed\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class _Probe(torch.autograd.Function):
    """Allocates 300 MB inside forward and 200 MB inside backward, both freed before returning."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        """Touch a 300 MB temporary."""
        big = torch.ones(75_000_000)
        return (x * big[0]).sum()

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        """Touch a 200 MB temporary."""
        big = torch.ones(50_000_000)
        return torch.ones(2) * g * big[0]


def probe_peakbytes() -> dict[str, Any]:
    """What PeakBytes sees inside a custom autograd Function (forward 300 MB, backward 200 MB temporaries)."""
    x = torch.ones(2, requires_grad=True)
    with PeakBytes(x) as fwd:
        y = _Probe.apply(x)
    with PeakBytes(x, y) as bwd:
        y.backward()
    return {
        "forward_temporary_bytes": 300_000_000,
        "forward_peak_seen_bytes": fwd.peak,
        "backward_temporary_bytes": 200_000_000,
        "backward_peak_seen_bytes": bwd.peak,
        "sees_inside_function": fwd.peak >= 300_000_000 and bwd.peak >= 200_000_000,
    }


def grad_diff(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor]) -> dict[str, float]:
    """Max abs differences of (h_s.grad, W_s.grad) pairs, and the reference's max abs values."""
    return {
        "grad_h_max_abs_diff": float((a[0] - b[0]).abs().max()),
        "grad_w_max_abs_diff": float((a[1] - b[1]).abs().max()),
        "grad_h_ref_max_abs": float(b[0].abs().max()),
        "grad_w_ref_max_abs": float(b[1].abs().max()),
    }


LOSS_RTOL = 1e-4
GRAD_RTOL = 1e-4  # max abs diff ≤ GRAD_RTOL × the reference gradient's max abs value


def agrees(loss: float, ref_loss: float, diff: dict[str, float]) -> dict[str, Any]:
    """Loss relative difference and whether both gradients are within tolerance."""
    rel = abs(loss - ref_loss) / abs(ref_loss)
    grads_ok = (
        diff["grad_h_max_abs_diff"] <= GRAD_RTOL * diff["grad_h_ref_max_abs"]
        and diff["grad_w_max_abs_diff"] <= GRAD_RTOL * diff["grad_w_ref_max_abs"]
    )
    return {"loss_rel_diff": rel, **diff, "loss_ok": rel <= LOSS_RTOL, "grads_ok": grads_ok}


def timing_and_agreement(names: list[str], repeats: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Interleaved timing in this process; the warm-up round doubles as the agreement check."""
    inp = make_inputs(BATCH, SEQ, VOCAB, H_STUDENT, H_TEACHER)
    fns = {name: arm_loss(name) for name in names}
    refs: dict[str, tuple[float, tuple[Tensor, Tensor]]] = {}
    agreement: dict[str, Any] = {}
    times: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats + 1):
        order = names[r % len(names) :] + names[: r % len(names)]
        round_times = {}
        for name in order:
            t0 = time.perf_counter()
            loss = step(fns[name], inp)
            round_times[name] = time.perf_counter() - t0
            if r == 0:  # warm-up: keep the references' results, compare the rest
                assert inp.h_s.grad is not None and inp.w_s.grad is not None
                grads = (inp.h_s.grad.clone(), inp.w_s.grad.clone())
                kind, impl = name.split("/")
                if impl in ("naive", "trl"):
                    refs[f"{kind}/{impl}"] = (loss, grads)
                agreement[name] = {"loss": loss, "_grads": grads}
            print(f"round {r} {name}: {round_times[name]:.2f} s", flush=True)
        if r > 0:
            for name in names:
                times[name].append(round_times[name])
                ratios[name].append(round_times[name] / round_times[f"{name.split('/')[0]}/naive"])
    for name, rec in agreement.items():
        grads = rec.pop("_grads")
        kind = name.split("/")[0]
        for ref in ("naive", "trl"):
            key = f"{kind}/{ref}"
            if key in refs and key != name:
                rec[f"vs_{ref}"] = agrees(rec["loss"], refs[key][0], grad_diff(grads, refs[key][1]))
    timing = {
        name: {
            "median_s": statistics.median(ts),
            "min_s": min(ts),
            "max_s": max(ts),
            "all_s": ts,
            "ratio_to_naive_median_of_rounds": statistics.median(ratios[name]),
        }
        for name, ts in times.items()
    }
    return timing, agreement


def small_check() -> dict[str, Any]:
    """kdforge vs TRL (and naive) at V=1000, N=300, H=64: loss values to 1e-6 and gradients, chunks not dividing N."""
    out: dict[str, Any] = {"vocab": 1000, "tokens": 300, "batch": 3, "hidden": 64, "dtype": "float32"}
    out |= {"loss_rtol": 1e-6, "grad_rtol": 1e-5}
    inp = make_inputs(3, 100, 1000, 64, 64, seed=1)
    for kind, beta in LOSSES.items():
        ref_name = "trl" if TRL_LOSS is not None else "naive"
        ref_fn = partial(trl_loss, beta=beta) if TRL_LOSS is not None else partial(naive_loss, beta=beta)
        ref = step(ref_fn, inp)
        assert inp.h_s.grad is not None and inp.w_s.grad is not None
        ref_grads = (inp.h_s.grad.clone(), inp.w_s.grad.clone())
        rows: dict[str, Any] = {"reference": ref_name, "reference_loss": ref}
        arms = {"naive": partial(naive_loss, beta=beta)} if TRL_LOSS is not None else {}
        arms |= {f"kdforge_c{c}": partial(kdforge_loss, beta=beta, chunk=c) for c in (64, 128, 300, 512)}
        for name, fn in arms.items():
            loss = step(fn, inp)
            assert inp.h_s.grad is not None and inp.w_s.grad is not None
            diff = grad_diff((inp.h_s.grad, inp.w_s.grad), ref_grads)
            abs_diff = abs(loss - ref)
            rows[name] = {
                "loss": loss,
                "abs_diff": abs_diff,
                "rel_diff": abs_diff / abs(ref),
                "ok": abs_diff <= 1e-6 * abs(ref),
                **diff,
                "grads_ok": diff["grad_h_max_abs_diff"] <= 1e-5 * diff["grad_h_ref_max_abs"]
                and diff["grad_w_max_abs_diff"] <= 1e-5 * diff["grad_w_ref_max_abs"],
            }
        out[kind] = rows
    return out


def _autograd_grad(row_fn: Callable[..., Tensor], z: Tensor, log_p: Tensor) -> Tensor:
    """The gradient of Σ row_fn(z, log_p) at ``z`` by autograd."""
    return torch.autograd.grad(row_fn(z, log_p).sum(), z)[0]


def _closed_grad(grad_fn: Callable[..., tuple[Tensor, Tensor]], z: Tensor, log_p: Tensor) -> Tensor:
    """The gradient a closed-form row function returns."""
    return grad_fn(z.detach(), log_p)[1]


def chunk_accounting(chunk: int = 512, repeats: int = 3) -> dict[str, Any]:
    """Where kdforge's chunked peak goes, in chunk tensors (chunk × V float32): engine over 1 vs 2 chunks, rows alone.

    The engine's peak over two chunks minus over one is what a chunk leaves alive into the next; the row function
    alone (its value and the gradient at the chunk's logits) is kdforge's ``token_math`` row form next to
    ``plain_rows``, the formula of the naive arm, with their median times over ``repeats`` interleaved runs.
    """
    unit = chunk * VOCAB * 4
    out: dict[str, Any] = {"chunk": chunk, "vocab": VOCAB, "unit_bytes": unit}
    for kind, beta in LOSSES.items():
        rec: dict[str, Any] = {}
        for n_chunks in (1, 2):
            inp = make_inputs(1, chunk * n_chunks, VOCAB, H_STUDENT, H_TEACHER, seed=2)
            for impl, fn in (("kdforge", partial(kdforge_loss, beta=beta, chunk=chunk)), ("naive", None)):
                fn = fn or partial(naive_loss, beta=beta)
                inp.clear()
                with PeakBytes(*inp.tensors) as mode:
                    fn(inp).backward()
                rec[f"{impl}_step_{n_chunks}_chunk_rows_units"] = mode.peak / unit
        inp = make_inputs(1, chunk, VOCAB, H_STUDENT, H_TEACHER, seed=2)
        with torch.no_grad():
            z = (inp.h_s @ inp.w_s.t()).requires_grad_()
            log_p = F.log_softmax(inp.h_t @ inp.w_t.t(), dim=-1)
        kd_rows = partial(tm.jsd_rows, beta=beta, T=1.0) if beta > 0 else partial(tm.forward_kl_rows, T=1.0)
        closed = partial(tm.jsd_rows_grad, beta=beta, T=1.0) if beta > 0 else partial(tm.forward_kl_rows_grad, T=1.0)

        grads = {
            "kdforge_closed_form": partial(_closed_grad, closed, z, log_p),  # what the engine runs for this loss
            "kdforge_token_math": partial(_autograd_grad, kd_rows, z, log_p),  # the same row form through autograd
            "plain_rows": partial(_autograd_grad, partial(plain_rows, beta=beta), z, log_p),
        }
        times: dict[str, list[float]] = {name: [] for name in grads}
        for r in range(repeats + 1):
            for name, grad in grads.items():
                t0 = time.perf_counter()
                grad()
                if r:
                    times[name].append(time.perf_counter() - t0)
        for name, grad in grads.items():
            with PeakBytes(z, log_p) as mode:
                g = grad()
            del g
            rec[f"rows_{name}_peak_units"] = mode.peak / unit  # includes the gradient (1 unit)
            rec[f"rows_{name}_median_s"] = statistics.median(times[name])
        out[kind] = rec
        print(f"chunk accounting {kind}: {rec}", flush=True)
    return out


def machine() -> dict[str, Any]:
    """Where the figures were measured."""
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "note": "2 CPU cores shared with other engineers' jobs: times are noisy; compare ratios of interleaved arms",
    }


def summarise(names: list[str], memory: dict[str, Any], timing: dict[str, Any]) -> dict[str, Any]:
    """Per-arm ratios against the naive and TRL arms of the same loss, and the issue's targets for kdforge."""
    out: dict[str, Any] = {}
    for name in names:
        kind, impl = name.split("/")
        measures = {"rss": "vmhwm_peak_bytes", "ru_maxrss": "ru_maxrss_peak_bytes", "peakbytes": "peakbytes_bytes"}
        rec: dict[str, Any] = {f"{m}_peak_mb": memory[name][field] / MB for m, field in measures.items()}
        rec["median_s"] = timing[name]["median_s"]
        for ref in ("naive", "trl"):
            key = f"{kind}/{ref}"
            if key not in memory:
                continue
            for m, field in measures.items():
                rec[f"{m}_peak_vs_{ref}"] = memory[name][field] / memory[key][field]
            rec[f"time_vs_{ref}"] = timing[name]["median_s"] / timing[key]["median_s"]
        rec["time_vs_naive_median_of_round_ratios"] = timing[name]["ratio_to_naive_median_of_rounds"]
        if impl.startswith("kdforge"):
            rec["target_peak_le_quarter_naive"] = {m: rec[f"{m}_peak_vs_naive"] <= 0.25 for m in measures}
            rec["target_time_le_1.3x_naive"] = rec["time_vs_naive"] <= 1.3
        out[name] = rec
    return out


def main() -> None:
    """Run the probe, the small check, the per-arm memory subprocesses and the interleaved timing; write the JSON."""
    global CHUNKS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds after the warm-up round")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--arm", help="internal: measure one arm's memory in this (fresh) process, print JSON")
    parser.add_argument("--chunks", type=int, nargs="+", default=list(CHUNKS), help="kdforge chunk sizes measured")
    args = parser.parse_args()
    CHUNKS = tuple(args.chunks)
    torch.set_num_threads(args.threads)
    if args.arm:
        print(json.dumps(measure_arm(args.arm)))
        return
    names = arm_names()
    started = time.time()
    memory = {}
    for name in names:  # first, while this process is small: a child's ru_maxrss starts at this one's high-water
        memory[name] = m = run_arm_subprocess(name, args.threads)
        shown = {k: round(m[k] / MB) for k in ("vmhwm_peak_bytes", "ru_maxrss_peak_bytes", "peakbytes_bytes")}
        print(f"memory {name}: MB {shown}, ru_maxrss gap {m['ru_maxrss_baseline_gap_bytes'] / MB:.0f} MB", flush=True)
    probe = probe_peakbytes()
    print("PeakBytes probe:", probe, flush=True)
    small = small_check()
    print("small check:", json.dumps(small, indent=1), flush=True)
    accounting = chunk_accounting()
    timing, agreement = timing_and_agreement(names, args.repeats)
    payload = {
        "command": " ".join(
            [
                "HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH=src",
                sys.executable,
                "benchmarks/llm_loss_memory.py",
                *sys.argv[1:],
            ]
        ),
        "date": time.strftime("%Y-%m-%d"),
        "wall_s": time.time() - started,
        "machine": machine(),
        "trl": {"version": TRL_VERSION, "source": TRL_SOURCE, "installed_in": sys.prefix},
        "sizes": {
            "batch": BATCH,
            "seq": SEQ,
            "tokens": BATCH * SEQ,
            "vocab": VOCAB,
            "hidden_student": H_STUDENT,
            "hidden_teacher": H_TEACHER,
            "hidden_note": "576 = SmolLM2-135M's hidden size, used for both student and teacher",
            "dtype": "float32",
            "chunks": list(CHUNKS),
            "logits_bytes_one_model": BATCH * SEQ * VOCAB * 4,
            "losses": {"jsd": "generalized JSD, beta=0.5, T=1", "forward_kl": "KL(p_t || p_s), TRL beta=0, T=1"},
        },
        "method": {
            "step": "forward + backward from the student's hidden states and head weight (LM-head matmuls included)",
            "rss": "fresh subprocess per arm, first step: VmHWM (reset by /proc/self/clear_refs once the inputs are "
            "allocated) minus VmRSS then; and ru_maxrss after minus before the step (the brief's measure; valid when "
            "ru_maxrss_baseline_gap_bytes ≈ 0, the subprocesses being started before this process grows)",
            "peakbytes": "kdforge.evaluate.memory.PeakBytes over a second step in the same subprocess; inputs excluded",
            "time": f"one process, arms interleaved (order rotated), 1 warm-up round + {args.repeats} timed rounds",
            "agreement": f"warm-up round: loss rel diff ≤ {LOSS_RTOL}, grad max abs diff ≤ {GRAD_RTOL} × max |grad|",
        },
        "peakbytes_probe": probe,
        "small_check": small,
        "chunk_accounting": accounting,
        "memory": memory,
        "timing": timing,
        "agreement": agreement,
        "summary": summarise(names, memory, timing),
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload["summary"], indent=1))
    print("wrote", RESULT)


if __name__ == "__main__":
    main()
