"""Linear CKA (full and minibatch-accumulated) and `kdforge diagnose` end to end."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from kdforge.diagnose import abbreviate, cka_tables, diagnose
from kdforge.engine.checkpoint import save_checkpoint, save_model
from kdforge.errors import ShapeMismatchError
from kdforge.evaluate.cka import MinibatchCKA, linear_cka, unbiased_hsic
from kdforge.models import build_model
from kdforge.recipe import load_yaml
from kdforge.recipes import find
from kdforge.runner import resolve

from conftest import run_cli


def _features(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=g) @ torch.randn(12, 12, generator=g)
    y = torch.tanh(x @ torch.randn(12, 20, generator=g)) + 0.5 * torch.randn(n, 20, generator=g)
    return x, y


def _orthogonal(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def _numpy_cka(x: np.ndarray, y: np.ndarray) -> float:
    """CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), HSIC = tr(K H L H) / (n-1)², H = I - 11ᵀ/n: the paper's form."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T

    def hsic(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.trace(a @ h @ b @ h)) / (n - 1) ** 2

    return hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))


def test_linear_cka_golden_value_and_numpy_reference() -> None:
    x, y = _features()
    assert linear_cka(x, y) == pytest.approx(0.6932787782723624, rel=1e-4)
    torch.testing.assert_close(linear_cka(x, y), _numpy_cka(x.double().numpy(), y.double().numpy()), rtol=1e-9, atol=0)
    # Fewer samples than features takes the Gram route; the value is the same definition.
    wide_x, wide_y = torch.randn(10, 40), torch.randn(10, 3, 5, 5)
    expected = _numpy_cka(wide_x.double().numpy(), wide_y.double().reshape(10, -1).numpy())
    torch.testing.assert_close(linear_cka(wide_x, wide_y), expected, rtol=1e-9, atol=0)


def test_linear_cka_is_one_for_identical_rotated_and_scaled_inputs_and_invariant_to_them() -> None:
    x, y = (t.double() for t in _features())
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 7.5 * x @ _orthogonal(12, 1)) == pytest.approx(1.0, abs=1e-12)
    base = linear_cka(x, y)
    assert linear_cka(0.01 * x @ _orthogonal(12, 2), y) == pytest.approx(base, abs=1e-12)
    assert linear_cka(x, 300.0 * y @ _orthogonal(20, 3)) == pytest.approx(base, abs=1e-12)
    assert linear_cka(x + 5.0, y - 2.0) == pytest.approx(base, abs=1e-12)  # centred: a shift changes nothing
    assert np.isnan(linear_cka(x, torch.ones(64, 3)))
    with pytest.raises(ShapeMismatchError, match="same number"):
        linear_cka(x, y[:10])


def test_unbiased_hsic_equals_the_u_statistic_over_distinct_quadruples() -> None:
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, 2, generator=g, dtype=torch.float64)
    k, l_ = (a @ a.T).numpy(), (b @ b.T).numpy()
    n = 6
    # Song et al. 2012: HSIC₁ = (n)₄⁻¹ Σ over ordered distinct (i, j, q, r) of k_ij l_ij + k_ij l_qr − 2 k_ij l_iq.
    total = sum(
        k[i, j] * l_[i, j] + k[i, j] * l_[q, r] - 2 * k[i, j] * l_[i, q]
        for i, j, q, r in itertools.permutations(range(n), 4)
    )
    expected = total / (n * (n - 1) * (n - 2) * (n - 3))
    torch.testing.assert_close(float(unbiased_hsic(a @ a.T, b @ b.T)), expected, rtol=1e-10, atol=1e-12)


def test_minibatch_cka_is_close_to_the_full_value_and_exact_on_identical_layers() -> None:
    x, y = _features(n=1024, seed=5)
    acc = MinibatchCKA(["x", "y"], ["y", "x2"])
    for i in range(0, 1024, 128):
        acc.update([x[i : i + 128], y[i : i + 128]], [y[i : i + 128], 3 * x[i : i + 128] + 1])
    acc.update([x[:3], y[:3]], [y[:3], x[:3]])  # under 4 samples: skipped
    value = acc.value()
    assert acc.batches == 8 and acc.samples == 1024 and acc.skipped == 1
    assert value[0, 0].item() == pytest.approx(linear_cka(x, y), abs=0.02)
    assert value[0, 1].item() == pytest.approx(1.0, abs=1e-12) and value[1, 0].item() == pytest.approx(1.0, abs=1e-12)
    constant = MinibatchCKA(["x"], ["c"])
    constant.update([x[:8]], [torch.ones(8, 2)])
    assert torch.isnan(constant.value()).all()


def test_tables_fit_80_columns_and_abbreviate_long_paths() -> None:
    students = [f"backbone.encoder.layers.{i}.mlp.fc2" for i in range(12)]
    record = {
        "teacher_layers": ["features.denseblock4.denselayer16", "classifier:input"],
        "student_layers": students,
        "cka": [[0.5] * 12, [None] * 12],
        "samples": 128,
        "batches": 2,
    }
    console = Console(width=200, record=True)
    tables = cka_tables(record)
    for table in tables:
        console.print(table)
    lines = console.export_text().splitlines()
    assert len(tables) >= 2 and max(len(line) for line in lines) <= 80
    assert sum(len(t.columns) - 1 for t in tables) == 12
    cut = abbreviate(students, 9)
    assert len(set(cut)) == 12 and all(len(c) <= 9 for c in cut)  # tails clash ('…mlp.fc2'): numbered instead
    assert abbreviate(["layer1", "a.very.long.path"], 9) == ["layer1", "…ong.path"]


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Weights for digits-kd's teacher (an MLP[128]): a teacher.checkpoint, so no test waits for a teacher to train."""
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_model(build_model("mlp", 10, (1, 8, 8), hidden=[128]), path)
    return str(path)


def _overrides(tmp: Path, teacher: str) -> list[str]:
    return [f"output_dir={tmp / 'runs'}", f"teacher.checkpoint={teacher}"]


def test_diagnose_cli_end_to_end(tmp_path: Path, teacher_file: str) -> None:
    pytest.importorskip("matplotlib", reason="the heat map needs matplotlib (the llm extra)")
    args = list(_overrides(tmp_path, teacher_file))
    res = run_cli("diagnose", "digits-kd", *args, "student.params.hidden=[16, 8]", "--batches", "2")
    assert res.returncode == 0, res.stderr
    (folder,) = list((tmp_path / "runs" / "diagnose").iterdir())
    assert (folder / "cka.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((folder / "cka.json").read_text())
    assert record["teacher_layers"] == ["2", "3:input"] and record["student_layers"] == ["2", "4", "5:input"]
    assert np.array(record["cka"]).shape == (2, 3) and record["batches"] == 2 and record["samples"] == 128
    assert all(0.0 <= v <= 1.0 + 1e-9 for row in record["cka"] for v in row)
    table = [line for line in res.stdout.splitlines() if line[:1] in "┏┃┡│└"]
    assert len(table) == 2 + 2 + 1 + 1 and max(len(line) for line in table) <= 80  # header, 2 rows, borders


def _main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    from kdforge.cli import main

    monkeypatch.setattr(sys, "argv", ["kdforge", "diagnose", *args])
    with pytest.raises(SystemExit) as stop:
        main()
    return int(stop.value.code), capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["digits-kd", "--batches", "0"], "error: --batches 0: expected a positive number of training batches"),
        (["digits-kdd"], "error: recipe 'digits-kdd' is neither a file nor a built-in recipe"),
        (["digits-kd", "--teacher-layers", "2,layer9"], "error: --teacher-layers: Sequential has no module 'layer9'"),
        (["--run", "/nonexistent/run"], "error: --run '/nonexistent/run' is not a run folder"),
        (["digits-kd", "teacher=null", "objectives={ce: 1}"], "error: teacher: the recipe has none"),
    ],
)
def test_diagnose_errors_exit_2_with_one_line(monkeypatch, capsys, tmp_path, teacher_file, args, message) -> None:
    extra = list(_overrides(tmp_path, teacher_file)) if args[0] == "digits-kd" else []
    code, err = _main(monkeypatch, capsys, *args[:1], *extra, *args[1:])  # the case's own overrides come last
    assert code == 2 and err.startswith(message) and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_run_folder_weights_are_the_student_diagnosed(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the heat map needs matplotlib (the llm extra)")
    # The teacher's own weights saved as a run's student: every CKA of the two identical networks is 1.
    torch.manual_seed(123)  # not the recipe's seed: the fresh student below must differ from it
    model = build_model("mlp", 10, (1, 8, 8), hidden=[24])
    save_model(model, tmp_path / "teacher.safetensors")
    overrides = [
        f"teacher.checkpoint={tmp_path / 'teacher.safetensors'}",
        "teacher.model.params.hidden=[24]",
        "student.params.hidden=[24]",
        f"output_dir={tmp_path / 'runs'}",
    ]
    recipe = resolve(load_yaml(find("digits-kd")), overrides)
    run = tmp_path / "runs" / "digits-kd-1"
    run.mkdir(parents=True)
    (run / "recipe.yaml").write_text((find("digits-kd")).read_text())
    save_checkpoint(run / "checkpoints" / "last", model, {"step": 1})
    trained = diagnose(recipe, batches=2, run_dir=run, out=tmp_path / "a")
    assert np.allclose(trained["cka"], 1.0, atol=1e-6)
    fresh = diagnose(recipe, batches=2, out=tmp_path / "b")
    assert max(max(row) for row in fresh["cka"]) < 0.99
