"""A stub OpenAI-compatible server for fault paths only: each request gets the next scripted behaviour.

Real behaviour is tested against real servers (``llm_servers.py``); this one exists to produce what a healthy local
server never does on demand: rate limits, 5xx, auth errors, unknown models, context overflows, hangs, broken bodies.

    with FaultServer([("status", 429, {"Retry-After": "1"}), ("ok", "yes")]) as srv:
        client = OpenAICompatible(base_url=srv.url, model=srv.model)  # any client
        ...
        assert [r.path for r in srv.requests] == ["/v1/chat/completions"] * 2

Actions (tuples; the first item names the kind):
    ("ok", text)                     a well-formed chat.completion / text_completion with ``usage``
    ("ok", text, top_logprobs)       the same with logprobs: ``top_logprobs`` maps candidate first tokens to logprobs
    ("status", code)                 an error status with OpenAI's error JSON for that code (see ERROR_BODIES)
    ("status", code, headers)        the same with extra headers, e.g. {"Retry-After": "1"}
    ("status", code, headers, body)  the same with a given JSON body (dict) or raw body (str / bytes)
    ("echo_auth", code)              an error status whose message echoes the request's Authorization header, as a
                                     misconfigured proxy or a careless server does (the key must still never leak)
    ("sleep", seconds)               wait, then answer with the default action (for client timeouts)
    ("sleep", seconds, action)       wait, then answer with ``action``
    ("malformed",)                   HTTP 200 whose body is not JSON
    ("truncated",)                   HTTP 200, Content-Length of the full JSON, half of it sent, connection closed
    ("drop",)                        close the connection without any response
When the script is used up every further request gets ``default`` (``("ok", "ok")`` unless given). ``GET /v1/models``
is always answered and consumes no action.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Action = tuple[Any, ...]

# OpenAI's error JSON for each status; 400 is OpenAI's context-overflow error. Local servers word theirs differently:
# CONTEXT_LLAMA_CPP_PYTHON / CONTEXT_LLAMA_SERVER / MODEL_PINNED_TRANSFORMERS below, sent as ("status", 400, {}, BODY).
ERROR_BODIES: dict[int, dict[str, Any]] = {
    400: {
        "error": {
            "message": "This model's maximum context length is 2048 tokens. However, your messages resulted in 3000 "
            "tokens. Please reduce the length of the messages.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    },
    401: {
        "error": {
            "message": "Incorrect API key provided: sk-test. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    },
    404: {
        "error": {
            "message": "The model `no-such-model` does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": None,
            "code": "model_not_found",
        }
    },
    429: {
        "error": {
            "message": "Rate limit reached for requests. Please try again in 1s.",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    },
    500: {"error": {"message": "The server had an error while processing your request.", "type": "server_error"}},
    502: {"error": {"message": "Bad gateway.", "type": "server_error"}},
    503: {"error": {"message": "The server is overloaded or not ready yet.", "type": "server_error"}},
}

# llama-cpp-python 0.3.36's server, prompt longer than --n_ctx, HTTP 400 (measured; /v1/completions says "in your
# prompt; ... for the completion", /v1/chat/completions "in the messages, ... in the completion"; param "messages").
CONTEXT_LLAMA_CPP_PYTHON: dict[str, Any] = {
    "error": {
        "message": "This model's maximum context length is 2048 tokens, however you requested 3002 tokens "
        "(3001 in your prompt; 1 for the completion). Please reduce your prompt; or completion length.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}
# llama.cpp's own C++ `llama-server`, same case, HTTP 400.
CONTEXT_LLAMA_SERVER: dict[str, Any] = {
    "error": {
        "code": 400,
        "message": "request (3001 tokens) exceeds the available context size (2048 tokens)",
        "type": "exceed_context_size_error",
        "n_prompt_tokens": 3001,
        "n_ctx": 2048,
    }
}
# `transformers serve MODEL` (pinned) asked for another model: HTTP 400, FastAPI's {"detail": ...}, not OpenAI's shape.
MODEL_PINNED_TRANSFORMERS: dict[str, Any] = {
    "detail": "Server is pinned to '/models/smollm2'; requested 'other-model'."
}


@dataclass
class Recorded:
    """One request the stub received."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # the parsed JSON body, the raw text when it is not JSON, None when empty
    action: Action | None  # what the stub did with it (None for /v1/models)
    time: float = field(default_factory=time.monotonic)


class FaultServer:
    """A scripted OpenAI-compatible stub on 127.0.0.1 (a free port), serving from a thread; a context manager."""

    def __init__(self, script: Iterable[Action] = (), *, default: Action = ("ok", "ok"), model: str = "stub-model"):
        self.model = model
        self.default = default
        self.requests: list[Recorded] = []
        self._script: deque[Action] = deque(script)
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- scripting and inspection ----
    def push(self, *actions: Action) -> None:
        """Append actions to the script."""
        with self._lock:
            self._script.extend(actions)

    def _next(self) -> Action:
        with self._lock:
            return self._script.popleft() if self._script else self.default

    def _record(self, rec: Recorded) -> None:
        with self._lock:
            self.requests.append(rec)

    def calls(self, path_substring: str = "/completions") -> list[Recorded]:
        """The recorded requests whose path contains ``path_substring`` (by default: the completion calls)."""
        with self._lock:
            return [r for r in self.requests if path_substring in r.path]

    @property
    def remaining(self) -> int:
        """How many scripted actions are not used yet."""
        with self._lock:
            return len(self._script)

    # ---- life cycle ----
    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """The base URL a client is given, ending in /v1."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FaultServer:
        handler = type("_Handler", (_Handler,), {"stub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fault-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def completion_body(path: str, model: str, text: str, request: Any, top_logprobs: dict[str, float] | None) -> dict:
    """A well-formed OpenAI response for ``path`` (chat or legacy completions) carrying ``text`` and ``usage``."""
    prompt_tokens = max(1, len(json.dumps(request.get("messages") or request.get("prompt") or "")) // 4)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": max(1, len(text.split())),
        "total_tokens": prompt_tokens + max(1, len(text.split())),
    }
    n = int(request.get("n") or 1) if isinstance(request, dict) else 1
    first = next(iter(top_logprobs), text[:1]) if top_logprobs else text[:1]
    created = int(time.time())
    if "chat" in path:
        logprobs = None
        if top_logprobs:
            logprobs = {
                "content": [
                    {
                        "token": first,
                        "logprob": top_logprobs.get(first, 0.0),
                        "bytes": list(first.encode()),
                        "top_logprobs": [
                            {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top_logprobs.items()
                        ],
                    }
                ]
            }
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "logprobs": logprobs,
                "finish_reason": "stop",
            }
            for i in range(n)
        ]
        return {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": choices,
            "usage": usage,
        }
    logprobs = None
    if top_logprobs:
        logprobs = {
            "tokens": [first],
            "token_logprobs": [top_logprobs.get(first, 0.0)],
            "top_logprobs": [dict(top_logprobs)],
            "text_offset": [0],
        }
    choices = [{"index": i, "text": text, "logprobs": logprobs, "finish_reason": "stop"} for i in range(n)]
    return {
        "id": "cmpl-stub",
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage,
    }


class _Handler(BaseHTTPRequestHandler):
    stub: FaultServer
    protocol_version = "HTTP/1.1"  # keep-alive like real servers; every response carries Content-Length

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode("utf-8", "replace")

    def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None, ctype="application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _headers(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self.headers.items()}

    def do_GET(self) -> None:
        self.stub._record(Recorded("GET", self.path, self._headers(), None, None))
        if self.path.rstrip("/").endswith("/models"):
            data = {"object": "list", "data": [{"id": self.stub.model, "object": "model", "owned_by": "kdforge-stub"}]}
            self._send(200, json.dumps(data).encode())
        else:
            self._send(404, json.dumps({"error": {"message": f"no route {self.path}", "type": "not_found"}}).encode())

    def do_POST(self) -> None:
        body = self._read_body()
        action = self.stub._next()
        self.stub._record(Recorded("POST", self.path, self._headers(), body, action))
        self._act(action, body if isinstance(body, dict) else {})

    def _act(self, action: Action, request: dict) -> None:
        kind = action[0]
        if kind == "ok":
            top = action[2] if len(action) > 2 else None
            data = completion_body(self.path, request.get("model") or self.stub.model, str(action[1]), request, top)
            self._send(200, json.dumps(data).encode())
        elif kind == "status":
            code = int(action[1])
            headers = action[2] if len(action) > 2 else {}
            body = action[3] if len(action) > 3 else ERROR_BODIES.get(code, {"error": {"message": f"HTTP {code}"}})
            raw = body if isinstance(body, bytes) else (body.encode() if isinstance(body, str) else json.dumps(body))
            self._send(code, raw if isinstance(raw, bytes) else raw.encode(), headers)
        elif kind == "echo_auth":
            auth = self.headers.get("Authorization") or "(none)"
            message = f"Incorrect API key provided: {auth!r}; request headers: Authorization: {auth}"
            self._send(int(action[1]), json.dumps({"error": {"message": message, "type": "auth_error"}}).encode())
        elif kind == "sleep":
            time.sleep(float(action[1]))
            try:
                self._act(action[2] if len(action) > 2 else self.stub.default, request)
            except OSError:  # the client gave up and closed the socket: that was the point
                self.close_connection = True
        elif kind == "malformed":
            self._send(200, b'{"id": "cmpl-stub", "choices": [{"text": oops not json')
        elif kind == "truncated":
            full = json.dumps(completion_body(self.path, self.stub.model, "truncated answer", request, None)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(full)))
            self.end_headers()
            self.wfile.write(full[: len(full) // 2])
            self.wfile.flush()
            self._hang_up()
        elif kind == "drop":
            self._hang_up()
        else:
            raise ValueError(f"unknown fault-server action {action!r}")

    def _hang_up(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
