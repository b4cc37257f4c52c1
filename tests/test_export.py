"""`kdforge export`: only the student is written; the artifact read back from disk matches PyTorch; ONNX is timed."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from kdforge.errors import ConfigError
from kdforge.export import export_run, load_safetensors
from kdforge.export.formats import FORMATS, StudentSpec, student_state
from kdforge.export.inputs import student_inputs, torch_outputs
from kdforge.export.latency import compare_latency
from kdforge.export.parity import ParityError, check_parity, max_abs_diff
from kdforge.models import build_model
from kdforge.models.hf import tokenizer_folder
from kdforge.runner import resolve, run

from conftest import run_cli, small_text_recipe

PARITY = re.compile(r"parity: max \|Δ\| = (\S+) on (\d+) test rows")


def test_only_the_student_state_is_exported():
    student = nn.Sequential(nn.Linear(4, 2))
    assert set(student_state(student)) == {"0.weight", "0.bias"}
    wrapped = nn.ModuleDict({"student": student, "connector": nn.Linear(2, 2)})
    with pytest.raises(RuntimeError, match="connector"):
        student_state(nn.ModuleDict({"connector": wrapped}))


def test_parity_figure_and_refusal():
    a = torch.zeros(3, 4)
    assert max_abs_diff(a, a + 5e-5) == pytest.approx(5e-5)
    check_parity(5e-5, "model.onnx", 3)
    with pytest.raises(ParityError, match=r"max \|Δ\| = 0.001 on 3 test rows"):
        check_parity(1e-3, "model.onnx", 3)
    with pytest.raises(ParityError):
        check_parity(float("nan"), "model.onnx", 3)
    with pytest.raises(ParityError, match="shape"):
        max_abs_diff(a, torch.zeros(3, 5))


TINY_BERT = {"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}


def _tiny_hf(length: int = 12) -> nn.Module:
    torch.manual_seed(0)
    return build_model("hf", 8, (length,), config={**TINY_BERT, "intermediate_size": 32}).eval()


def test_inputs_carry_the_mask_each_student_used():
    ids = torch.tensor([[5, 6, 0, 0], [7, 8, 9, 0]])
    bag = build_model("text_bag", 3, (4,))
    # Without a mask in the batch: kdforge's text models used "not pad id 0", HF models attended to every position.
    assert torch.equal(student_inputs(bag, {"input": ids})["attention_mask"], (ids != 0).long())
    assert torch.equal(student_inputs(_tiny_hf(4), {"input": ids})["attention_mask"], torch.ones_like(ids))
    given = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    assert torch.equal(student_inputs(bag, {"input": ids, "attention_mask": given})["attention_mask"], given)
    assert set(student_inputs(build_model("mlp", 3, (4,)), {"input": torch.randn(2, 4)})) == {"input"}


def test_latency_table_times_every_runner_at_batch_1_and_256():
    inputs = {"input": torch.randn(5, 3)}
    table = compare_latency({"a": lambda x: x["input"].sum(), "b": lambda x: x["input"] * 2}, inputs)
    assert set(table) == {"batch_1", "batch_256"}
    assert all(set(row) == {"a", "b"} and min(row.values()) > 0 for row in table.values())


def test_export_of_a_missing_run_or_unknown_format_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        export_run(tmp_path / "nope", "onnx")
    with pytest.raises(ConfigError, match=r"--format: unknown export format 'xyz'.*hf, onnx, safetensors"):
        export_run(tmp_path, "xyz")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch digits MLP run trained through the CLI."""
    out = tmp_path_factory.mktemp("runs")
    res = run_cli("run", "digits-kd", "objectives={ce: 1.0}", "teacher=null", "train.epochs=1", f"output_dir={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    (run_dir,) = list(out.iterdir())
    return run_dir


def _parity(stdout: str) -> float:
    match = PARITY.search(stdout)
    assert match, stdout
    return float(match.group(1))


@pytest.mark.slow
def test_digits_run_exported_to_onnx_and_safetensors(digits_run: Path):
    res = run_cli("export", str(digits_run), "--format", "onnx")
    assert res.returncode == 0, res.stderr[-3000:]
    assert _parity(res.stdout) <= 1e-4
    assert re.search(r"latency batch 1: onnxruntime [\d.]+ ms, pytorch [\d.]+ ms", res.stdout), res.stdout
    assert re.search(r"latency batch 256: onnxruntime [\d.]+ ms, pytorch [\d.]+ ms", res.stdout), res.stdout
    record = json.loads((digits_run / "export" / "onnx" / "export.json").read_text())
    assert record["parity"]["max_abs_diff"] <= 1e-4 and record["inputs"] == ["input"]
    assert set(record["latency_ms"]) == {"batch_1", "batch_256"} and record["size_bytes"] > 0

    res = run_cli("export", str(digits_run), "--format", "safetensors", "--checkpoint", "last")
    assert res.returncode == 0, res.stderr[-3000:]
    assert _parity(res.stdout) == 0.0
    folder = digits_run / "export" / "safetensors"
    weights = load_file(str(folder / "model.safetensors"))
    assert not [k for k in weights if k.startswith(("connector", "teacher"))]
    assert weights.keys() == load_file(str(digits_run / "checkpoints" / "last" / "model.safetensors")).keys()
    model = load_safetensors(folder)
    assert json.loads((folder / "model.json").read_text())["model"] == "mlp"
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def _cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """Run `kdforge ARGS` in this process (the console script's own entry point): exit code, stderr."""
    from kdforge import cli

    monkeypatch.setattr(sys, "argv", ["kdforge", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["RUN", "--format", "hf"], "--format hf: student 'mlp' is not a Hugging Face model"),
        (["RUN", "--format", "xyz"], "--format: unknown export format 'xyz'"),
        (["RUN/nope", "--format", "onnx"], "nope' does not exist; expected a run folder"),
    ],
)
def test_bad_export_requests_exit_2_with_one_line(digits_run: Path, monkeypatch, capsys, args, message):
    code, err = _cli(monkeypatch, capsys, "export", *(a.replace("RUN", str(digits_run)) for a in args))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_a_parity_failure_exits_1_and_writes_nothing(digits_run: Path, monkeypatch, capsys):
    from kdforge.export import run as export_module

    monkeypatch.setattr(export_module, "max_abs_diff", lambda reference, candidate: 0.5)
    target = digits_run / "broken"
    code, err = _cli(monkeypatch, capsys, "export", str(digits_run), "--format", "safetensors", "--out", str(target))
    assert code == 1 and "parity check failed: model.safetensors differs" in err, err
    assert len(err.strip().splitlines()) == 1 and not target.exists()


def test_hf_format_writes_a_folder_transformers_loads_back(tmp_path: Path):
    transformers = pytest.importorskip("transformers")
    student = _tiny_hf()
    ids = torch.randint(1000, 2000, (4, 12))
    ids[2:, 6:] = 0
    inputs = student_inputs(student, {"input": ids, "attention_mask": (ids != 0).long()})
    spec = StudentSpec("hf", {"config": TINY_BERT}, 8, (12,), tokenizer_folder("minilm"))
    artifact = FORMATS.get("hf")(student, spec, tmp_path, inputs)
    assert artifact.path == tmp_path
    reference = torch_outputs(student, inputs)
    assert max_abs_diff(reference, artifact.run(inputs)) == 0.0
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path))
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids, attention_mask=inputs["attention_mask"]).logits, reference)
    if spec.tokenizer is not None:
        assert (tmp_path / "tokenizer_config.json").is_file()
    with pytest.raises(ConfigError, match="--format hf: student 'mlp' is not a Hugging Face model"):
        FORMATS.get("hf")(build_model("mlp", 8, (12,)), StudentSpec("mlp", {}, 8, (12,)), tmp_path / "x", inputs)


def test_onnx_has_dynamic_batch_and_sequence_axes_and_a_fallback_exporter(tmp_path: Path, monkeypatch):
    pytest.importorskip("onnxruntime")
    student = _tiny_hf()
    ids = torch.randint(1000, 2000, (4, 12))
    ids[2:, 6:] = 0
    inputs = student_inputs(student, {"input": ids, "attention_mask": (ids != 0).long()})
    artifact = FORMATS.get("onnx")(student, StudentSpec("hf", {}, 8, (12,)), tmp_path, inputs)
    assert artifact.info["exporter"] == "dynamo" and artifact.info["inputs"] == ["input", "attention_mask"]
    other = {k: v[:3, :7] for k, v in inputs.items()}  # another batch size and sequence length
    assert max_abs_diff(torch_outputs(student, other), artifact.run(other)) <= 1e-5

    from kdforge.export import formats

    real = formats._onnx_export

    def no_dynamo(module: nn.Module, example: dict, path: Path, dynamo: bool) -> None:
        if dynamo:
            raise RuntimeError("unsupported graph")
        real(module, example, path, dynamo)

    monkeypatch.setattr(formats, "_onnx_export", no_dynamo)
    mlp = build_model("mlp", 3, (4,)).eval()
    x = {"input": torch.randn(5, 4)}
    (tmp_path / "ts").mkdir()
    artifact = FORMATS.get("onnx")(mlp, StudentSpec("mlp", {}, 3, (4,)), tmp_path / "ts", x)
    assert artifact.info["exporter"].startswith("torchscript (dynamo failed: unsupported graph")
    x2 = {"input": torch.randn(2, 4)}
    assert max_abs_diff(torch_outputs(mlp, x2), artifact.run(x2)) <= 1e-5


@pytest.mark.slow
def test_text_run_exports_to_onnx(tmp_path: Path):
    recipe = small_text_recipe(tmp_path, "reuters-export", {"name": "tiny_bert", "params": {"hidden": 32, "heads": 2}})
    run_dir = Path(run(resolve(recipe))["run_dir"])
    (record,) = export_run(run_dir, "onnx")
    assert record["parity"]["max_abs_diff"] <= 1e-4 and record["inputs"] == ["input", "attention_mask"]
    assert set(record["latency_ms"]) == {"batch_1", "batch_256"}
    assert json.loads((run_dir / "export" / "onnx" / "export.json").read_text())["parity"] == record["parity"]
