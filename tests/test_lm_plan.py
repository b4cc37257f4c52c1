"""`kdforge plan`: the memory estimate of a causal-LM recipe against what one real training run holds on CPU.

The estimate is compared with a measurement for the part the measurement covers: what training adds to the loaded
models (gradients, optimizer state, activations, teacher transients, loss buffers at the largest phase), measured as
the process's peak RSS (VmHWM, reset right before them) over two optimizer steps minus the RSS then, in a fresh process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from kdforge.evaluate.memory import PeakBytes
from kdforge.lm.plan import Arch, estimate, inference_activations, training_activations
from kdforge.runner import resolve

transformers = pytest.importorskip("transformers", reason="causal LMs need transformers (`make setup`)")

VOCAB = 49_152  # SmolLM2's: large enough that the chunked loss's (chunk × vocabulary) buffers dominate
SECTIONS = ("teacher weights", "student weights + gradients + optimizer state", "activations", "loss buffers per chunk")


def _llama(vocab: int, hidden: int, inter: int, layers: int, heads: int, kv: int, tie: bool = True) -> Any:
    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=512,
        tie_word_embeddings=tie,
    )
    return transformers.LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama teacher folder (3.3M parameters) and a recipe: 3.2M-parameter student, 4 × 128 tokens, chunk 256."""
    root = tmp_path_factory.mktemp("plan")
    torch.manual_seed(0)
    _llama(VOCAB, 64, 128, 2, 4, 2).save_pretrained(root / "teacher")
    student = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
    student.update(num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, vocab_size=VOCAB)
    tree = {
        "name": "plan-test",
        "data": {"name": "austen_lm", "batch_size": 4, "params": {"max_len": 128}},
        "teacher": {
            "kind": "live",
            "model": {"name": "hf", "params": {"path": str(root / "teacher"), "task": "causal_lm"}},
        },
        "student": {"name": "hf", "params": {"task": "causal_lm", "config": student}},
        "objectives": {"kl": {"objective": "forward_kl", "weight": 0.5}, "ce": 0.5},
        "train": {"max_steps": 2, "chunk_size": 256, "optimizer": {"name": "adamw", "lr": 0.001}},
        "output_dir": str(root / "runs"),
    }
    path = root / "recipe.json"  # JSON is YAML: `kdforge plan` reads it as it is
    path.write_text(json.dumps(tree))
    return path


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> None:
    """Start a new high-water mark here: loading the models may have set a higher one than the steps will."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak() -> int:
    """The process's resident high-water mark since the last reset (VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) * 1024


def measure(recipe_path: str) -> dict[str, int]:
    """Two optimizer steps of the recipe on random tokens; the peak RSS they add over the loaded models (bytes)."""
    from kdforge.data.austen_lm import lm_dataset
    from kdforge.data.base import DataBundle
    from kdforge.engine.distiller import Distiller
    from kdforge.engine.optim import build_optimizer
    from kdforge.strategies.provision import build, loaders, provide_teacher

    recipe = resolve(json.loads(Path(recipe_path).read_text()))
    tokens = recipe.data.params["max_len"]
    # Random token blocks stand in for the recipe's text: memory depends on the shapes, not on the tokens.
    blocks = torch.randint(0, VOCAB, (2 * recipe.data.batch_size, tokens), generator=torch.Generator().manual_seed(0))
    data = lm_dataset(blocks, "train")
    bundle = DataBundle(data, None, data, VOCAB, (tokens,), [], "random_lm", "random")
    teacher, _ = provide_teacher(recipe, bundle)
    student = build(recipe.student, bundle, "student")
    distiller = Distiller(student, teacher, recipe.objectives, chunk_size=recipe.train.chunk_size).train()
    optimizer = build_optimizer(distiller.parameters_to_train(), recipe.train.optimizer)
    batch = next(iter(loaders(recipe, bundle)[0]))
    _reset_peak()
    high_before = _peak()
    base = _rss()
    # Two steps: the second runs its forward and loss with the optimizer state of the first alive (steady state).
    for _ in range(2):
        out = distiller(batch)
        (out.loss * out.tokens).backward()  # as the Trainer does for token losses
        del out
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    high = _peak()
    return {"base": base, "high_before": high_before, "high": high}


def _start(*args: str) -> subprocess.Popen[str]:
    """Start a process now and collect it later: the in-process work of a test overlaps its start-up (imports)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    stdout, stderr = proc.communicate(timeout=300)
    return proc.returncode, stdout, stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm, status and clear_refs")
def test_estimate_matches_measured_peak(recipe_file: Path) -> None:
    proc = _start(sys.executable, __file__, str(recipe_file))
    plan = estimate(resolve(json.loads(recipe_file.read_text())))
    code, stdout, stderr = _finish(proc)
    assert code == 0, stderr[-2000:]
    got = json.loads(stdout.strip().splitlines()[-1])
    # The steps must set the process's high-water mark, or ru_maxrss says nothing about them.
    assert got["high"] > got["high_before"]
    measured = got["high"] - got["base"]
    # Compared: what training adds to the loaded weights (optimizer state + the largest phase: here the student's
    # forward with both chunked losses). The weights themselves are in the baseline, so not compared.
    estimated = plan.training
    assert abs(estimated - measured) <= 0.25 * measured, (estimated / 2**20, measured / 2**20, plan.phases())
    # The chunked loss over a 49,152-token vocabulary is what this recipe's memory is about.
    assert plan.loss_peak > plan.student_activations + plan.teacher_activations


@pytest.mark.parametrize("size", [(64, 256, 2, 4, 2, 4, 128), (96, 256, 3, 6, 2, 2, 256)])
def test_activation_constants(size: tuple[int, ...]) -> None:
    """ACT_TRAIN and ACT_INFER against the live bytes of real Llama forwards (training and inference mode)."""
    hidden, inter, layers, heads, kv, rows, tokens = size
    model = _llama(512, hidden, inter, layers, heads, kv).train()
    arch = Arch(0, 0, hidden, inter, layers, kv * hidden // heads, 512, False)
    ids = torch.randint(0, 512, (rows, tokens))
    # The weights are passed as existing storages, so that views of them (w.t()) are not counted as new memory.
    with PeakBytes(*model.parameters()) as mode:
        out = model(input_ids=ids, output_hidden_states=True, logits_to_keep=1)
        kept = mode.live
    del out
    with PeakBytes(*model.parameters()) as mode, torch.inference_mode():
        model(input_ids=ids, output_hidden_states=True, logits_to_keep=1)
    n = rows * tokens
    assert abs(training_activations(arch, n) - kept) <= 0.25 * kept
    assert abs(inference_activations(arch, n, 4) - mode.peak) <= 0.25 * mode.peak


def _cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """Run the console script's entry point in this process (its imports are already paid); its exit status."""
    from kdforge.cli import main

    monkeypatch.setattr(sys, "argv", ["kdforge", *args])
    try:
        main()
    except SystemExit as stop:
        return int(stop.code or 0)
    return 0


def test_cli_plan(recipe_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    assert _cli(monkeypatch, "plan", str(recipe_file), "train.chunk_size=128") == 0
    shown = capsys.readouterr().out
    for section in (*SECTIONS, "total (peak per process)", "never wrapped in DDP"):
        assert section in shown, section
    assert "128 tokens × 49152 vocabulary" in shown  # the override reached the plan

    assert _cli(monkeypatch, "plan", str(recipe_file), "--json") == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["total"] == plan["teacher_weights"] + plan["student_weights"] + plan["training"]

    bad = json.loads(recipe_file.read_text())
    bad["student"] = {"name": "mlp"}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert _cli(monkeypatch, "plan", str(tmp_path / "bad.json")) == 2
    stderr = capsys.readouterr().err
    assert stderr.strip().count("\n") == 0 and stderr.startswith("error:") and "causal-LM" in stderr


if __name__ == "__main__":  # the measured run, in a fresh process (see test_estimate_matches_measured_peak)
    print(json.dumps(measure(sys.argv[1])))


def test_plan_counts_the_teacher_format_and_its_own_device(recipe_file: Path) -> None:
    tree = json.loads(recipe_file.read_text())
    plans = {}
    for fmt, device in (("float32", None), ("bfloat16", None), ("int8", None), ("float32", "cpu")):
        variant = json.loads(json.dumps(tree))
        variant["teacher"].update(dtype=fmt, device=device)
        plans[fmt, device] = estimate(resolve(variant))
    full = plans["float32", None]
    assert plans["bfloat16", None].teacher_weights == full.teacher_weights // 2
    # int8: the Linear layers in 1 byte, the tied embedding/head (VOCAB × 64) in float32.
    table = VOCAB * 64
    assert plans["int8", None].teacher_weights == (full.teacher_weights // 4 - table) + 4 * table
    own = plans["float32", "cpu"]  # a teacher on a device of its own: not in the student device's peak
    assert own.weights == full.weights - full.teacher_weights
    assert own.total <= full.total - full.teacher_weights
    assert own.teacher_device_total == full.teacher_weights + full.teacher_activations
    assert "teacher device cpu" in own.table()
