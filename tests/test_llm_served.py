"""The served backend and the annotate job on fault paths, against a scripted stub server (tests/fault_server.py).

Real behaviour (logprobs, label scoring, caching, concurrency) is tested against real servers in test_llm_annotate.py.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from fault_server import FaultServer
from kdforge.errors import ConfigError
from kdforge.llm.annotate import annotate, load_recipe
from kdforge.llm.backend import GenParams
from kdforge.llm.cache import RequestCache
from kdforge.llm.served import RequestFailed, ServedBackend, ServedConfig, ServerError, retry_after

LABELS = {"earn": "earnings", "acq": "acquisition", "crude": "oil"}
SECRET = "sk-kdforge-test-7f3a9c1e5b"


def backend(urls: str | list[str], cache: RequestCache | None = None, **kw: object) -> ServedBackend:
    """A served backend with fast retries."""
    cfg = ServedConfig(kind="served", base_urls=urls, model="stub-model", backoff=0.01, max_backoff=0.05, **kw)
    return ServedBackend(cfg, cache)


def ask(b: ServedBackend, text: str = "hello") -> str:
    """One greedy chat completion's text."""
    return b.complete(text, GenParams(max_tokens=4)).text


def test_retry_after_parsing() -> None:
    assert retry_after("3") == 3.0
    assert retry_after("0.25") == 0.25
    assert retry_after(None) is None
    assert retry_after("soon") is None
    assert 0 <= retry_after("Wed, 21 Oct 2015 07:28:00 GMT") <= 0.0  # a date in the past: go now


def test_429_honours_retry_after_then_succeeds() -> None:
    with FaultServer([("status", 429, {"Retry-After": "0.4"}), ("ok", "earnings")]) as srv:
        b = backend(srv.url)
        started = time.monotonic()
        assert ask(b) == "earnings"
        assert time.monotonic() - started >= 0.4  # waited as asked, not the 0.01 s backoff
        assert len(srv.calls()) == 2 and b.usage.retries == 1
        b.close()


@pytest.mark.parametrize("fault", [("status", 500), ("status", 503), ("malformed",), ("truncated",), ("drop",)])
def test_transient_faults_are_retried(fault: tuple) -> None:
    with FaultServer([fault, fault, ("ok", "acquisition")]) as srv:
        b = backend(srv.url)
        assert ask(b) == "acquisition"
        assert len(srv.calls()) == 3
        b.close()


def test_timeout_is_retried() -> None:
    with FaultServer([("sleep", 1.5), ("ok", "oil")]) as srv:
        b = backend(srv.url, timeout=0.3)
        assert ask(b) == "oil"
        assert b.usage.retries == 1
        b.close()


def test_retries_exhausted_fail_the_request_only() -> None:
    with FaultServer(default=("status", 500)) as srv:
        b = backend(srv.url, max_retries=2)
        with pytest.raises(RequestFailed, match=r"HTTP 500 .*after 3 attempts"):
            ask(b)
        assert len(srv.calls()) == 3 and b.usage.failed == 1
        b.close()


def test_failures_in_a_row_stop_the_job() -> None:
    with FaultServer(default=("status", 500)) as srv:
        b = backend(srv.url, max_retries=0, max_failures_in_row=3)
        for _ in range(2):
            with pytest.raises(RequestFailed):
                ask(b)
        with pytest.raises(ServerError, match=r"3 requests in a row failed .* \(after 3 requests\)"):
            ask(b)
        b.close()


def test_wrong_api_key_stops_with_one_line_without_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDFORGE_TEST_KEY", SECRET)
    with FaultServer([("status", 401, {}, {"error": {"message": f"Incorrect API key provided: {SECRET}"}})]) as srv:
        b = backend(srv.url, api_key_env="KDFORGE_TEST_KEY")
        with pytest.raises(ServerError) as info:
            ask(b)
        message = str(info.value)
        assert srv.url in message and "HTTP 401" in message and "after 1 requests" in message
        assert "$KDFORGE_TEST_KEY" in message and SECRET not in message and "\n" not in message
        assert srv.requests[-1].headers["authorization"] == f"Bearer {SECRET}"
        b.close()


def test_missing_key_variable_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KDFORGE_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="KDFORGE_TEST_KEY"):
        backend("http://127.0.0.1:9/v1", api_key_env="KDFORGE_TEST_KEY")


def test_unknown_model_stops() -> None:
    with FaultServer([("status", 404)]) as srv:
        b = backend(srv.url)
        with pytest.raises(ServerError, match=r"does not know model 'stub-model'"):
            ask(b)
        b.close()


def test_prompt_over_context_is_failed_without_retry() -> None:
    with FaultServer([("status", 400)]) as srv:
        b = backend(srv.url)
        with pytest.raises(RequestFailed, match="context length"):
            ask(b)
        assert len(srv.calls()) == 1
        b.close()


def test_unreachable_server_stops_naming_it() -> None:
    with FaultServer() as srv:
        url = srv.url
    b = backend(url, max_retries=1)  # the port is closed now
    with pytest.raises(ServerError, match=rf"server {url}: cannot be reached: .*\(after 2 requests\)"):
        ask(b)
    b.close()


def test_requests_spread_over_servers_and_a_dead_one_is_avoided() -> None:
    with FaultServer() as one, FaultServer() as two:
        b = backend([one.url, two.url], concurrency=4)
        b.map(lambda i: ask(b, f"text {i}"), list(range(20)))
        assert len(one.calls()) + len(two.calls()) == 20
        assert min(len(one.calls()), len(two.calls())) >= 5
        b.close()
    with FaultServer() as alive:
        dead = backend([alive.url], concurrency=1).cfg.base_urls[0].replace(str(alive.port), "9")
        b = backend([dead, alive.url], concurrency=2)
        b.map(lambda i: ask(b, f"x {i}"), list(range(10)))
        assert len(alive.calls()) == 10
        b.close()


def test_cache_sends_each_request_once(tmp_path: Path) -> None:
    cache = RequestCache(tmp_path / "c.sqlite")
    with FaultServer() as srv:
        b = backend(srv.url, cache)
        assert ask(b, "same") == ask(b, "same")
        assert len(srv.calls()) == 1 and b.usage.cached == 1
        b.close()
    cache.close()


def _job(tmp_path: Path, url: str, texts: list[str], **annotate: object) -> dict:
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": "earn"}) + "\n" for t in texts))
    return {
        "name": "faults",
        "teacher": {
            "kind": "served",
            "base_urls": [url],
            "model": "stub-model",
            "backoff": 0.01,
            "max_retries": 1,
            "api_key_env": "KDFORGE_TEST_KEY",
        },
        "annotate": {"input": {"path": str(data), "gold_column": "label"}, "labels": LABELS, **annotate},
        "output_dir": str(tmp_path / "out"),
        "cache": str(tmp_path / "cache.sqlite"),
    }


def test_annotate_records_unknown_failed_and_empty_never_guessing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KDFORGE_TEST_KEY", SECRET)
    script = [("ok", "Earnings."), ("ok", "sports"), ("ok", "oil or acquisition"), ("status", 400)]
    with FaultServer(script) as srv:
        tree = _job(tmp_path, srv.url, ["a", "b", "c", "d", ""], method="answer", batch=1)
        summary = annotate(load_recipe(tree), show=False)
    rows = [json.loads(line) for line in (tmp_path / "out/faults/annotations.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["ok", "unknown", "unknown", "failed", "empty"]
    assert rows[0]["label"] == "earn" and rows[0]["probs"] == [1.0, 0.0, 0.0]
    assert rows[1]["label"] is None and rows[2]["label"] is None
    assert "context length" in rows[3]["reason"]
    assert summary["counts"] == {"ok": 1, "unknown": 2, "failed": 1, "empty": 1}
    assert summary["agreement"]["n"] == 5 and summary["agreement"]["accuracy"] == pytest.approx(0.2)
    # The key went to the server, and nowhere on disk.
    assert all(r.headers.get("authorization") == f"Bearer {SECRET}" for r in srv.calls())
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and not [p for p in written if SECRET.encode() in p.read_bytes()]


def test_annotate_cli_stops_on_a_wrong_key_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    import yaml

    monkeypatch.setenv("KDFORGE_TEST_KEY", SECRET)
    with FaultServer(default=("status", 401)) as srv:
        url = srv.url
        recipe = tmp_path / "job.yaml"
        recipe.write_text(yaml.safe_dump(_job(tmp_path, srv.url, ["a", "b"], method="answer")))
        done = subprocess.run(
            [sys.executable, "-m", "kdforge.cli", "annotate", str(recipe)], capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    # Both texts' requests may be in flight when the first 401 comes back: 1 or 2 requests were sent.
    assert len(lines) == 1 and "HTTP 401" in lines[0] and url in lines[0]
    assert re.search(r"\(after [12] requests\)$", lines[0]), lines[0]
    assert SECRET not in done.stderr + done.stdout and "Traceback" not in done.stderr


def test_a_key_with_a_trailing_carriage_return_is_cleaned_and_never_leaks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KDFORGE_TEST_KEY", SECRET + "\r")  # a .env file saved with CRLF line ends
    echo = {"error": {"message": "x" * 190 + f" upstream rejected Bearer {SECRET}"}}  # a proxy echoing the header
    with FaultServer([("status", 500, {}, echo)] * 2 + [("ok", "earnings")]) as srv:
        tree = _job(tmp_path, srv.url, ["a"], method="answer")
        tree["teacher"]["max_retries"] = 1
        annotate(load_recipe(tree), show=False)
        assert srv.calls()[0].headers["authorization"] == f"Bearer {SECRET}"
    rows = [json.loads(x) for x in (tmp_path / "out/faults/annotations.jsonl").read_text().splitlines()]
    assert rows[0]["status"] == "failed" and "***" in rows[0]["reason"]
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not [p for p in written if SECRET[:12].encode() in p.read_bytes()]


def test_a_key_that_cannot_be_a_header_is_refused_without_showing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDFORGE_TEST_KEY", "sk-has a space")
    with pytest.raises(ConfigError) as info:
        backend("http://127.0.0.1:9/v1", api_key_env="KDFORGE_TEST_KEY")
    assert "KDFORGE_TEST_KEY" in str(info.value) and "has a space" not in str(info.value)


def test_credentials_in_a_base_url_are_refused() -> None:
    with pytest.raises(ValueError, match="must not carry credentials"):
        ServedConfig(kind="served", base_urls=["http://user:pw@127.0.0.1:8080/v1"], model="m")


def test_other_client_errors_fail_at_once_naming_the_status() -> None:
    with FaultServer([("status", 402, {}, {"error": {"message": "payment required"}})]) as srv:
        b = backend(srv.url)
        with pytest.raises(RequestFailed, match="HTTP 402: payment required"):
            ask(b)
        assert len(srv.calls()) == 1
        b.close()


def test_a_body_of_the_wrong_shape_is_retried_not_cached(tmp_path: Path) -> None:
    cache = RequestCache(tmp_path / "c.sqlite")
    bad = ("status", 200, {}, {"choices": ["not an object"], "usage": {"prompt_tokens": "n/a"}})
    with FaultServer([bad, ("ok", "oil")]) as srv:
        b = backend(srv.url, cache)
        assert ask(b) == "oil" and b.usage.retries == 1
        b.close()
    assert len(cache) == 1
    cache.close()


def test_calibrating_one_hot_answers_is_refused(tmp_path: Path) -> None:
    with FaultServer() as srv:
        tree = _job(tmp_path, srv.url, ["a"], method="answer", calibrate=True)
        tree["teacher"].pop("api_key_env")
        with pytest.raises(ConfigError, match="calibrate: method 'answer'"):
            annotate(load_recipe(tree), show=False)


def test_long_retry_after_is_capped_and_close_ends_waits() -> None:
    import threading

    with FaultServer([("status", 429, {"Retry-After": "3600"})]) as srv:
        b = backend(srv.url, max_retry_after=0.2)
        started = time.monotonic()
        assert ask(b) == "ok"
        assert time.monotonic() - started < 5
        b.close()
    with FaultServer([("status", 429, {"Retry-After": "30"})]) as srv:
        b = backend(srv.url)
        errors: list[BaseException] = []

        def asking() -> None:
            try:
                ask(b)
            except RequestFailed as err:
                errors.append(err)

        worker = threading.Thread(target=asking)
        worker.start()
        time.sleep(0.5)
        started = time.monotonic()
        b.close()  # Ctrl-C path: the 30 s wait ends now
        worker.join(timeout=5)
        assert not worker.is_alive() and time.monotonic() - started < 5
        assert "stopping" in str(errors[0])


def test_generation_on_the_request_threads_does_not_deadlock() -> None:
    from kdforge.llm.backend import generate_each

    with FaultServer() as srv:
        b = backend(srv.url, concurrency=2)
        done = generate_each(b, [f"prompt {i}" for i in range(8)], GenParams(max_tokens=4, n=1), first_seed=0)
        assert [d[0].text for d in done] == ["ok"] * 8
        assert sorted(r.body["seed"] for r in srv.calls()) == list(range(8))  # one seed per candidate
        b.close()
