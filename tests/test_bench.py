"""`kdforge bench`: suites over seeds, resumable cells, mean ± std summaries, and the README generated from JSON."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest

from kdforge.bench import SUITES, run_suite, validate_suite
from kdforge.bench.cells import curve_metrics
from kdforge.bench.readme import END, START, render_results, update_readme
from kdforge.bench.results import format_stat, mean_std
from kdforge.errors import ConfigError

from conftest import ROOT, run_cli

RESULTS = ROOT / "benchmarks" / "results"


def _fmnist_or_skip() -> None:
    from kdforge.data.fashion_mnist import locate

    try:
        locate(None)
    except Exception:
        pytest.skip("Fashion-MNIST files are not installed (run `make data`)")


def tiny(teacher_cache: str) -> list[str]:
    """Overrides that make a fashion-mnist cell a few seconds long: the 8x8 digits, a 30-step teacher, 2 epochs."""
    return [
        "data={name: digits, batch_size: 64, params: {val_fraction: 0.2}}",
        f"teacher.cache_dir={teacher_cache}",
        "teacher.model.params={widths: [8, 16]}",
        "teacher.train.max_steps=30",
        "train.epochs=2",
    ]


# -- the README -------------------------------------------------------------------------------------------------


def test_committed_readme_is_what_the_committed_results_render():
    text = (ROOT / "README.md").read_text()
    block = text[text.index(START) : text.index(END) + len(END)]
    assert block == render_results(RESULTS)


def test_regenerating_on_unchanged_results_gives_an_identical_file(tmp_path: Path):
    shutil.copytree(RESULTS, tmp_path / "results")
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    before = readme.read_bytes()
    for _ in range(2):
        res = run_cli("bench", "--results", str(tmp_path / "results"), "--readme", str(readme))
        assert res.returncode == 0, res.stderr
        assert "results unchanged" in res.stdout
        assert readme.read_bytes() == before


def test_a_changed_result_rewrites_only_the_results_block(tmp_path: Path):
    shutil.copytree(RESULTS, tmp_path / "results")
    readme = tmp_path / "README.md"
    readme.write_text("# title\n\nintro\n\n" + START + "\nold\n" + END + "\n\nafter\n")
    assert update_readme(readme, tmp_path / "results") is True
    text = readme.read_text()
    assert text.startswith("# title\n\nintro\n\n" + START) and text.endswith(END + "\n\nafter\n")
    assert "\nold\n" not in text
    assert update_readme(readme, tmp_path / "results") is False


@pytest.mark.parametrize(
    ("content", "message"),
    [("no markers here\n", "has no '<!-- results:start -->'"), (None, "does not exist")],
)
def test_readme_errors_name_the_file(tmp_path: Path, content: str | None, message: str):
    readme = tmp_path / "README.md"
    if content is not None:
        readme.write_text(content)
    res = run_cli("bench", "--results", str(RESULTS), "--readme", str(readme))
    assert res.returncode == 2
    assert message in res.stderr and str(readme) in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


def test_a_damaged_results_file_is_named(tmp_path: Path):
    shutil.copytree(RESULTS, tmp_path / "results")
    (tmp_path / "results" / "overhead.json").write_text("{broken")
    with pytest.raises(ConfigError, match=r"overhead\.json' is not valid JSON"):
        render_results(tmp_path / "results")


# -- the math of a summary ----------------------------------------------------------------------------------------


def test_curve_metrics_pick_best_and_last_epochs():
    history = [
        {"epoch": 1.0, "val": {"accuracy": 0.5}, "test": {"accuracy": 0.60}},
        {"epoch": 2.0, "val": {"accuracy": 0.7}, "test": {"accuracy": 0.66}},
        {"epoch": 3.0, "val": {"accuracy": 0.6}, "test": {"accuracy": 0.70}},
        {"epoch": 4.0, "val": {"accuracy": 0.65}, "test": {"accuracy": 0.68}},
    ]
    m = curve_metrics(history, "accuracy", higher_is_better=True)
    assert m == {"test_last": 0.68, "test_best": 0.70, "best_epoch": 3.0, "last_epoch": 4.0, "test_at_best_val": 0.66}
    ppl = [{"epoch": e, "test": {"perplexity": p}} for e, p in ((0.5, 90.0), (1.0, 70.0), (1.5, 75.0))]
    m = curve_metrics(ppl, "perplexity", higher_is_better=False)
    assert (m["test_best"], m["best_epoch"], m["test_last"]) == (70.0, 1.0, 75.0)
    assert np.isnan(m["test_at_best_val"])
    with pytest.raises(ConfigError, match="no 'test' 'accuracy'"):
        curve_metrics([{"epoch": 1.0, "val": {"accuracy": 0.5}}], "accuracy", True)


def test_mean_std_matches_statistics_and_skips_missing_values():
    values = [0.81, 0.84, 0.79]
    stat = mean_std([*values, float("nan")])
    assert stat["n"] == 3
    assert stat["mean"] == pytest.approx(sum(values) / 3, rel=1e-12)
    assert stat["std"] == pytest.approx(float(np.std(values, ddof=1)), rel=1e-12)
    assert mean_std([0.5]) == {"mean": 0.5, "std": 0.0, "n": 1}
    assert mean_std([]) == {"mean": None, "std": None, "n": 0}
    assert format_stat({"mean": 0.8123, "std": 0.0111, "n": 3}, percent=True, digits=2) == "81.23 ± 1.11"
    assert format_stat({"mean": 2.5, "std": 0.0, "n": 1}, percent=False, digits=1) == "2.5"
    assert format_stat(None, percent=True, digits=2) == "–"


# -- suites ----------------------------------------------------------------------------------------------------------


def test_every_suite_is_registered_with_cells():
    assert {"fashion-mnist", "text", "llm", "overhead", "cifar100"} <= set(SUITES.names())
    for _, suite in SUITES.items():
        names = [c.name for c in suite.cells()]
        assert names and len(names) == len(set(names))


def test_cifar100_protocol_validates_without_data_or_gpu():
    suite = SUITES.get("cifar100")
    assert validate_suite(suite, list(range(5)), []) == 12 * 5
    cells = {c.name: c for c in suite.cells()}
    assert set(cells) == {
        f"{p}/{m}"
        for p in ("resnet32x4->resnet8x4", "wrn_40_2->wrn_16_2", "vgg13->vgg8")
        for m in ("vanilla", "kd", "crd", "dkd")
    }
    tree = cells["resnet32x4->resnet8x4/dkd"].recipe(0)
    assert tree["train"]["epochs"] == 240 and tree["data"]["batch_size"] == 64
    assert tree["train"]["optimizer"] == {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
    assert tree["train"]["schedule"]["milestones"] == [150, 180, 210]
    assert tree["objectives"]["dkd"] == {"alpha": 1.0, "beta": 8.0, "T": 4.0, "warmup_epochs": 20}
    assert cells["vgg13->vgg8/crd"].recipe(1)["objectives"]["crd"]["nce_k"] == 16384
    res = run_cli("bench", "cifar100", "--validate", "--seeds", "5")
    assert res.returncode == 0, res.stderr
    assert "60 cell runs resolve" in res.stdout


def test_text_and_llm_suites_validate():
    for name in ("text", "llm", "fashion-mnist"):
        assert validate_suite(SUITES.get(name), [0], []) == len(SUITES.get(name).cells())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nosuch"], "SUITE: unknown benchmark suite 'nosuch'"),
        (["fashion-mnist", "--seeds", "0"], "--seeds must be at least 1"),
        (["fashion-mnist", "--cells", "cnn->vit"], "--cells ['cnn->vit']: no cell of suite 'fashion-mnist' matches"),
        (["fashion-mnist", "--set", "train.epochz=3", "--validate"], "cell 'cnn->cnn_small/scratch' (seed 0):"),
    ],
)
def test_bad_bench_input_exits_2_with_one_line(tmp_path: Path, args: list[str], message: str):
    res = run_cli("bench", *args, "--results", str(tmp_path / "results"), "--no-readme")
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "results").exists()


def test_suite_runs_resumes_and_summarises(tmp_path: Path, teacher_cache: str):
    results = tmp_path / "results"
    cells = ["cnn->mlp256/scratch", "cnn->mlp256/kd"]
    args = ["fashion-mnist", "--seeds", "2", "--results", str(results), "--no-readme"]
    for c in cells:
        args += ["--cells", c]
    for o in tiny(teacher_cache):
        args += ["--set", o]
    res = run_cli("bench", *args, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "4 cell run(s) done, 0 already finished" in res.stdout
    records = {}
    (folder,) = results.glob("fashion-mnist+*")
    for cell in cells:
        for seed in (0, 1):
            path = folder / cell / f"seed-{seed}.json"
            record = json.loads(path.read_text())
            assert record["seed"] == seed and record["recipe"]["seed"] == seed
            assert record["recipe"]["train"]["epochs"] == 2
            assert [h["epoch"] for h in record["history"]] == [1.0, 2.0]
            records[(cell, seed)] = record
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["overrides"] == tiny(teacher_cache)
    assert [e["cell"] for e in summary["cells"]] == cells
    for entry in summary["cells"]:
        lasts = [records[(entry["cell"], s)]["metrics"]["test_last"] for s in (0, 1)]
        assert entry["metrics"]["test_last"]["mean"] == pytest.approx(statistics.fmean(lasts), rel=1e-12)
        assert entry["metrics"]["test_last"]["std"] == pytest.approx(statistics.stdev(lasts), rel=1e-12)
        bests = [records[(entry["cell"], s)]["metrics"]["test_best"] for s in (0, 1)]
        assert entry["metrics"]["test_best"]["mean"] == pytest.approx(statistics.fmean(bests), rel=1e-12)
        assert all(b >= last for b, last in zip(bests, lasts, strict=True))
    # The summary table fits the README's columns: one row per cell, mean ± std printed.
    assert "±" in res.stdout and "cnn->mlp256" in res.stdout

    # --summary-only runs nothing: a third seed is not trained, the summary still covers the two on disk.
    res = run_cli("bench", *[a if a != "2" else "3" for a in args], "--summary-only", timeout=600)
    assert res.returncode == 0, res.stderr
    assert "ran nothing (--summary-only)" in res.stdout
    assert not list(results.glob("fashion-mnist+*/*/*/seed-2.json"))

    # Runs with --set overrides live beside the suite's own results, never in place of them.
    folder = next(results.glob("fashion-mnist+*"))
    assert not (results / "fashion-mnist").exists()

    # The README block gains the suite's table only from the suite's own folder: an override run is a smoke test.
    readme = tmp_path / "README.md"
    readme.write_text(f"{START}\n{END}\n")
    assert update_readme(readme, results) is False
    shutil.copytree(folder, results / "fashion-mnist")
    assert update_readme(readme, results)
    text = readme.read_text()
    assert "### Suite `fashion-mnist`" in text and "| cnn->mlp256 | scratch | 2 |" in text
    shutil.rmtree(results / "fashion-mnist")

    # Resumable: a second invocation skips every finished cell; a damaged cell file is measured again.
    (folder / cells[1] / "seed-1.json").write_text('{"half": ')
    res = run_cli("bench", *args, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "1 cell run(s) done, 3 already finished" in res.stdout
    # Another budget is another set of results: nothing finished is overwritten or mixed into the mean.
    changed = [a if a != "train.epochs=2" else "train.epochs=1" for a in args]
    res = run_cli("bench", *[a if a != "2" else "1" for a in changed], timeout=600)
    assert res.returncode == 0, res.stderr
    assert "2 cell run(s) done, 0 already finished" in res.stdout
    assert len(list(results.glob("fashion-mnist+*"))) == 2
    assert json.loads((folder / cells[1] / "seed-1.json").read_text())["recipe"]["train"]["epochs"] == 2


def test_run_suite_rejects_no_seeds(tmp_path: Path):
    with pytest.raises(ConfigError, match="--seeds"):
        run_suite("overhead", [], tmp_path)


def test_overhead_probe_measures_ratios():
    _fmnist_or_skip()
    from kdforge.bench.overhead import measure, saved_bytes

    out = measure(("mlp", {"hidden": (32,)}), seed=0, steps=3, warmup=1, batch_size=32)
    m = out["metrics"]
    assert set(m) >= {"kd_over_ce_plus_teacher", "precomputed_over_ce", "activation_memory_kd_over_ce"}
    assert all(v > 0 for v in m.values())
    # The KD step keeps at least what the CE step keeps for backward.
    assert out["saved_bytes"]["kd"] >= out["saved_bytes"]["ce"] > 0
    import torch

    x = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(8, 3, requires_grad=True)
    # x @ w saves x and w for backward (4*8 + 8*3 floats).
    assert saved_bytes(lambda: (x @ w).sum()) == (4 * 8 + 8 * 3) * 4


def test_kept_run_folders_resume_their_own_recipe_and_clear_any_other(tmp_path: Path, teacher_cache: str):
    work, results = tmp_path / "work", tmp_path / "results"
    only = ["cnn->mlp256/scratch"]
    first = run_suite("fashion-mnist", [0], results, tiny(teacher_cache), only, work)
    assert first.ran == ["cnn->mlp256/scratch seed 0"]
    (record_path,) = results.glob("fashion-mnist+*/cnn->mlp256/scratch/seed-0.json")
    record = json.loads(record_path.read_text())
    run_folder = work / "fashion-mnist" / "cnn->mlp256/scratch" / "seed-0"
    lines = (run_folder / "metrics.jsonl").read_text()
    # The cell's record is lost but its run folder is kept: the finished run is picked up, not trained again.
    record_path.unlink()
    again = run_suite("fashion-mnist", [0], results, tiny(teacher_cache), only, work)
    assert again.ran == first.ran
    assert json.loads(record_path.read_text())["metrics"] == record["metrics"]
    assert (run_folder / "metrics.jsonl").read_text() == lines
    # A kept folder of another definition is cleared, never appended to.
    other = [o if o != "train.epochs=2" else "train.epochs=1" for o in tiny(teacher_cache)]
    run_suite("fashion-mnist", [0], results, other, only, work)
    epochs = [json.loads(line)["epoch"] for line in (run_folder / "metrics.jsonl").read_text().splitlines()]
    assert max(epochs) == 1.0
