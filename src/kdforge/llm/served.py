"""The ``served`` backend: any OpenAI-compatible endpoint (vLLM, llama.cpp, TGI, transformers serve, a hosted API).

Requests spread over one or several base URLs (the least busy first), at most ``concurrency`` in flight; 429, 5xx,
timeouts, malformed or truncated bodies are retried with exponential backoff and jitter, honouring ``Retry-After``.
What cannot succeed stops the job with one line naming the server and the request count: a refused API key (401/403),
a model the server does not know, every server unreachable, or a storm of failures in a row. One request that still
fails after its retries (or a prompt over the context length) is recorded as failed for its text, never guessed.
The API key is read from the environment variable or the file the recipe names (a key written in the recipe itself is
refused) and travels only in the Authorization header: cache keys, errors and summaries never see it.
"""

from __future__ import annotations

import email.utils
import json
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from kdforge.errors import ConfigError, KdforgeError
from kdforge.llm.backend import Completion, GenParams, Usage
from kdforge.llm.cache import RequestCache, request_key
from kdforge.recipe import TeacherConfig
from kdforge.secrets import LITERAL_KEY, read_key, redact

Message = dict[str, str]
Prompt = str | list[Message]


class ServerError(KdforgeError):
    """The job cannot go on: the server refuses the key, does not know the model, or cannot be reached."""


class RequestFailed(Exception):  # noqa: N818 (an outcome recorded per text, like StopIteration)
    """One request failed for good (after its retries, or at once for a prompt over the context length)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ServedConfig(TeacherConfig):
    """``teacher: {kind: served, ...}``: an OpenAI-compatible server (or several serving the same model)."""

    model_config = ConfigDict(extra="forbid")
    base_urls: list[str] = Field(min_length=1, description="e.g. [http://127.0.0.1:8080/v1]; requests spread over all")
    model: str = Field(min_length=1, description="the model name sent in each request")
    api_key_env: str | None = Field(None, description="name of the environment variable holding the API key")
    api_key_file: str | None = Field(None, description="a file holding the API key (and nothing else)")
    endpoint: Literal["chat", "completions"] = "chat"
    concurrency: int = Field(4, ge=1, le=256, description="requests in flight at once, over all servers")
    timeout: float = Field(60.0, gt=0, description="seconds per request")
    max_retries: int = Field(5, ge=0)
    backoff: float = Field(0.5, ge=0, description="first retry wait in seconds; doubles each retry, plus jitter")
    max_backoff: float = Field(30.0, ge=0)
    max_failures_in_row: int = Field(25, ge=1, description="stop the job after this many failed requests in a row")
    price_prompt: float = Field(0.0, ge=0, description="cost per million prompt tokens")
    price_completion: float = Field(0.0, ge=0, description="cost per million completion tokens")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="sent with every request, e.g. repeat_penalty")
    score_prefix: str = Field("", description="text put before every scored prompt, e.g. a BOS token the server omits")
    score_mode: Literal["echo", "next_token"] = Field(
        "echo",
        description="label scoring: one echoed request per label (exact), or the next-token top log-probabilities "
        "walked token by token (no echo: fast on servers whose echo is slow, exact while each token is in the top)",
    )
    max_retry_after: float = Field(120.0, ge=0, description="a server's Retry-After is honoured up to this many s")
    cache_namespace: str = Field("", description="part of every cache key: set it when a server's model changes")
    score_top: int = Field(1000, ge=1, le=20000, description="next_token: how many top log-probabilities to ask for")

    @model_validator(mode="before")
    @classmethod
    def _no_literal_key(cls, value: Any) -> Any:
        # The recipe is saved with every run (and sent to trackers): a key written in it would be saved too.
        if isinstance(value, dict):
            extra = value.get("extra_body")
            places = [(k, "") for k in value] + [(k, "extra_body.") for k in (extra if isinstance(extra, dict) else ())]
            for key, where in places:
                if isinstance(key, str) and LITERAL_KEY.match(key):
                    raise PydanticCustomError(
                        "literal_key",
                        "{key} would hold the key itself, and the recipe is saved with every run: put the key in an "
                        "environment variable named by api_key_env, or in a file named by api_key_file",
                        {"key": where + key},
                    )
            if value.get("api_key_env") and value.get("api_key_file"):
                raise PydanticCustomError(
                    "two_keys", "api_key_env and api_key_file both given: name one source of the key", {}
                )
        return value

    @field_validator("base_urls", mode="before")
    @classmethod
    def _one_url(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("base_urls")
    @classmethod
    def _http(cls, value: list[str]) -> list[str]:
        for url in value:
            # A URL is printed in errors and summaries: credentials belong in api_key_env/file, never in the URL
            # (checked first, so that this message, which does not show the URL, is the one a bad one gets).
            if "@" in url.split("//", 1)[-1].split("/", 1)[0] or "?" in url:
                raise ValueError("a base URL must not carry credentials or a query (use api_key_env or api_key_file)")
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http(s) URL")
        return [url.rstrip("/") for url in value]


def retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _message(body: Any) -> str:
    """The error text a server put in its JSON body (OpenAI style ``{"error": {"message"}}`` or ``{"detail"}``).

    Not cut here: a key echoed by a proxy must be redacted whole before any cut (``_failed`` and ``_stop`` redact,
    then ``short`` cuts).
    """
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        return " ".join(str(err).split())
    return " ".join(str(body).split())


def bad_shape(data: Any) -> str | None:
    """Why a 200 body is not a completion (None when it is): checked before it is counted or cached."""
    if not isinstance(data, dict):
        return "not an object"
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return "no choices"
    usage = data.get("usage")
    if usage is not None and not isinstance(usage, dict):
        return "usage is not an object"
    for key in ("prompt_tokens", "completion_tokens"):
        value = (usage or {}).get(key)
        if value is not None and not isinstance(value, int):
            return f"usage.{key} is not an integer"
    logprobs = choices[0].get("logprobs")
    if logprobs is not None and not isinstance(logprobs, dict):
        return "logprobs is not an object"
    return None


_CONTEXT_WORDS = ("context length", "context window", "context_length", "maximum context", "too many tokens", "n_ctx")


class ServedBackend:
    """An OpenAI-compatible teacher with a request cache, spread over ``cfg.base_urls``."""

    def __init__(self, cfg: ServedConfig, cache: RequestCache | None = None):
        try:
            import httpx  # the `llm` extra; imported here so kdforge imports without it
        except ImportError:
            raise ConfigError("teacher.kind=served needs httpx: pip install 'kdforge[llm]'") from None

        self.cfg = cfg
        self.cache = cache
        self.usage = Usage(per_server={url: 0 for url in cfg.base_urls})
        self.fingerprint = f"served:{cfg.model}" + (f"@{cfg.cache_namespace}" if cfg.cache_namespace else "")
        # A Secret: a traceback's locals or a repr of this backend show '***'; only the header carries the value.
        self._key = read_key(cfg.api_key_env, cfg.api_key_file)
        headers = {"Authorization": f"Bearer {self._key.reveal()}"} if self._key else {}
        limits = httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency)
        self._http = httpx.Client(headers=headers, limits=limits, timeout=httpx.Timeout(cfg.timeout, connect=10.0))
        self._httpx = httpx
        self._lock = threading.Lock()
        self._inflight = [0] * len(cfg.base_urls)
        self._down = [False] * len(cfg.base_urls)
        self._in_row = 0
        self._echo_checked = False
        self._steps: dict[str, dict[str, float] | None] = {}
        self._thread_prefix = f"kdforge-served-{id(self):x}"
        self._pool = ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix=self._thread_prefix)
        self._rng = random.Random()
        self._closing = threading.Event()  # set by close(): backoff waits end at once, no new attempt starts
        # Held around each cache call and taken by close(): once close() returns no request thread is inside the
        # cache, so the caller may close it (SQLite closed under a running statement crashes the process).
        self._cache_lock = threading.Lock()

    # -- one request -------------------------------------------------------------------------------------------
    def _pick(self) -> int:
        with self._lock:
            up = [i for i, down in enumerate(self._down) if not down] or list(range(len(self._down)))
            i = min(up, key=lambda j: (self._inflight[j], self.usage.per_server[self.cfg.base_urls[j]]))
            self._inflight[i] += 1
            return i

    def _wait(self, attempt: int, asked: float | None) -> None:
        base = min(self.cfg.max_backoff, self.cfg.backoff * (2**attempt)) * (0.5 + self._rng.random())
        delay = base if asked is None else min(asked, self.cfg.max_retry_after) + self._rng.random() * 0.1
        self._closing.wait(delay)

    def redact(self, text: str) -> str:
        """``text`` without the API key in any form a message could carry it (plain, repr, bytes, base64)."""
        return redact(text)

    def _stop(self, url: str, what: str) -> ServerError:
        what = self.redact(what)
        return ServerError(f"server {url}: {what[:300]} (after {self.usage.requests} requests)")

    def _failed(self, reason: str, counts_in_row: bool = True) -> RequestFailed:
        reason = self.redact(reason)[:300]
        with self._lock:
            self.usage.failed += 1
            self._in_row += counts_in_row  # a long text is the text's problem, not a sign of a failing server
            in_row = self._in_row
        if in_row >= self.cfg.max_failures_in_row:
            raise self._stop(
                ", ".join(self.cfg.base_urls), f"{in_row} requests in a row failed (last: {reason}); stopping"
            )
        return RequestFailed(reason)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` (``model`` added) to ``path`` of the least busy server, retrying what may pass next time."""
        body = {"model": self.cfg.model, **self.cfg.extra_body, **body}
        reason = "no attempt"
        for attempt in range(self.cfg.max_retries + 1):
            if self._closing.is_set():
                raise RequestFailed("the job is stopping")
            i = self._pick()
            url = self.cfg.base_urls[i]
            asked: float | None = None
            try:
                with self._lock:
                    self.usage.requests += 1
                    self.usage.per_server[url] += 1
                    if attempt:
                        self.usage.retries += 1
                response = self._http.post(url + path, json=body)
                raw = response.content  # reading the body may itself time out or break off
            except self._httpx.TimeoutException:
                reason = f"timed out after {self.cfg.timeout:g} s"
            except self._httpx.TransportError as err:
                reason = f"unreachable ({type(err).__name__}: {' '.join(self.redact(str(err)).split())[:120]})"
                with self._lock:
                    self._down[i] = isinstance(err, self._httpx.ConnectError)
                    every_down = all(self._down)
                # Every server refusing connections through all retries: the job cannot go on (a typo in the URL,
                # a server that is not started or died); a single refusal may be a restart, so it is retried.
                if every_down and attempt == self.cfg.max_retries:
                    raise self._stop(url, f"cannot be reached: {reason}") from None
            else:
                with self._lock:
                    self._down[i] = False
                status = response.status_code
                try:
                    data = json.loads(raw)
                except ValueError:
                    data = None
                if status in (401, 403):
                    hint = (
                        f"; check ${self.cfg.api_key_env}" if self.cfg.api_key_env
                        else f"; check {self.cfg.api_key_file}" if self.cfg.api_key_file
                        else "; set teacher.api_key_env or teacher.api_key_file"
                    )  # fmt: skip
                    raise self._stop(url, f"HTTP {status} {_message(data or raw.decode(errors='replace'))}{hint}")
                if status == 404:
                    text = _message(data or raw.decode(errors="replace"))
                    if "model" in text.lower():
                        raise self._stop(url, f"does not know model {self.cfg.model!r} (HTTP 404: {text})")
                    raise self._stop(url, f"has no endpoint {path} (HTTP 404); is the base URL right (…/v1)?")
                if status == 400 or status == 413 or status == 422:
                    text = _message(data or raw.decode(errors="replace"))
                    if any(word in text.lower() for word in _CONTEXT_WORDS):
                        raise self._failed(f"prompt over the context length ({text})", counts_in_row=False)
                    if "model" in text.lower() and ("not found" in text.lower() or "does not exist" in text.lower()):
                        raise self._stop(url, f"does not know model {self.cfg.model!r} (HTTP {status}: {text})")
                    raise self._failed(f"HTTP {status}: {text}")
                if status in (408, 429) or status >= 500:
                    reason = f"HTTP {status} {_message(data or raw.decode(errors='replace'))}".strip()
                    asked = retry_after(response.headers.get("retry-after"))
                elif status >= 400 or status < 200:
                    raise self._failed(f"HTTP {status}: {_message(data or raw.decode(errors='replace'))}")
                elif data is None:
                    reason = "malformed or truncated JSON body"
                elif (why := bad_shape(data)) is not None:
                    reason = f"a malformed body ({why})"
                else:
                    self._account(data)
                    return data
            finally:
                with self._lock:
                    self._inflight[i] -= 1
            if attempt < self.cfg.max_retries:
                self._wait(attempt, asked)
        raise self._failed(f"{reason} (after {self.cfg.max_retries + 1} attempts)")

    def _account(self, data: dict[str, Any]) -> None:
        usage = data.get("usage") or {}
        prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        with self._lock:
            self._in_row = 0
            self.usage.prompt_tokens += prompt
            self.usage.completion_tokens += completion
            self.usage.cost += (prompt * self.cfg.price_prompt + completion * self.cfg.price_completion) / 1e6

    def cached(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """``post`` through the request cache: a request made before (by any process) is not sent again."""
        key = request_key(
            {"path": path, "model": self.cfg.model, "ns": self.cfg.cache_namespace, "extra": self.cfg.extra_body,
             "body": body}
        )  # fmt: skip
        if self.cache is not None:
            with self._cache_lock:
                if self._closing.is_set():
                    raise RequestFailed("the job is stopping")
                hit = self.cache.get(key)
            if hit is not None:
                with self._lock:
                    self.usage.cached += 1
                return hit
        data = self.post(path, body)
        if self.cache is not None:
            with self._cache_lock:
                if not self._closing.is_set():  # the caller closes the cache right after close()
                    self.cache.put(key, data)
        return data

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """``fn`` over ``items`` on the request threads; a RequestFailed is returned in its item's place (its text is
        the reason), a ServerError stops all."""

        def guarded(item: Any) -> Any:
            try:
                return fn(item)
            except RequestFailed as err:
                return err

        if threading.current_thread().name.startswith(self._thread_prefix):
            # Already on a request thread (generate inside generate_each): waiting on the same pool would deadlock
            # once every thread waits, so the inner items run here, one after another.
            return [guarded(item) for item in items]
        return list(self._pool.map(guarded, items))

    # -- the Backend protocol ----------------------------------------------------------------------------------
    def score(self, prompts: list[str], continuations: list[str]) -> np.ndarray:
        """Summed log-probability of each continuation after each prompt (completions with echo; NaN = failed)."""
        self.check_echo()
        self._steps.clear()  # steps are shared within one call only (every label of a prompt); memory stays bounded
        if self.cfg.score_mode == "next_token":
            # Each prompt's first step once, before the labels ask for it at the same time.
            self.map(lambda p: self._step(p), prompts)
        pairs = [(p, c) for p in prompts for c in continuations]
        scores = self.map(lambda pair: self._score_one(*pair), pairs)
        out = np.array([np.nan if isinstance(s, RequestFailed) else s for s in scores], dtype=np.float64)
        return out.reshape(len(prompts), len(continuations))

    def _score_one(self, prompt: str, continuation: str) -> float:
        if self.cfg.score_mode == "next_token":
            return self._walk(prompt, continuation)
        body = {
            "prompt": self.cfg.score_prefix + prompt + continuation,
            "max_tokens": 1,  # 0 means "up to the context length" to llama.cpp
            "echo": True,
            "logprobs": 1,
            "temperature": 0.0,
        }
        data = self.cached("/completions", body)
        return continuation_logprob(data, prompt, continuation, self.cfg.base_urls[0])

    def _walk(self, prompt: str, continuation: str) -> float:
        """log p(continuation | prompt) token by token from each step's top log-probabilities (one request per step,
        shared by every label with the same prefix, so the prompt's first step is asked once).

        The continuation's tokens are the server's own (an echo of the prompt's last characters + continuation, which
        is short, so fast even where echo is slow). A token below the top ``score_top`` gets the lowest of them: an
        upper bound on its log-probability.
        """
        total, done = 0.0, ""
        for token in self._split(prompt, continuation):
            top = self._step(prompt + done)
            if token not in top:
                with self._lock:
                    self.usage.bounded += 1
            total += top.get(token, min(top.values()))
            done += token
        return total

    def _step(self, text: str) -> dict[str, float]:
        """The top log-probabilities of the next token after ``text`` (kept for the rest of this ``score`` call)."""
        if text not in self._steps:
            body = {"prompt": self.cfg.score_prefix + text, "max_tokens": 1, "logprobs": self.cfg.score_top,
                    "temperature": 0.0}  # fmt: skip
            self._steps[text] = parse_completion(self.cached("/completions", body)).top_logprobs
        top = self._steps[text]
        if not top:
            raise self._stop(
                self.cfg.base_urls[0],
                "/completions returned no top log-probabilities; score_mode next_token needs a server that gives them",
            )
        return top

    def _split(self, prompt: str, continuation: str) -> list[str]:
        """The server's tokens for ``continuation`` after the end of ``prompt`` (from an echo of a short context)."""
        # The prompt's last line ("Topic:") is the same for every text: one echo per label for the whole job.
        context = prompt.rsplit("\n", 1)[-1][-24:]
        body = {"prompt": self.cfg.score_prefix + context + continuation, "max_tokens": 1, "echo": True, "logprobs": 0,
                "temperature": 0.0}  # fmt: skip
        tokens = ((self.cached("/completions", body)["choices"][0] or {}).get("logprobs") or {}).get("tokens") or []
        joined, starts = "", []
        for token in tokens:
            starts.append(len(joined))
            joined += token or ""
        base = joined.find(context + continuation)
        if base < 0:
            raise RequestFailed("the echoed tokens do not spell the continuation")
        begin, end = base + len(context), base + len(context) + len(continuation)
        picked = [t for t, at in zip(tokens, starts, strict=True) if begin <= at < end]
        if "".join(picked) != continuation:
            raise RequestFailed(f"the server's tokens of {continuation!r} straddle the prompt's end")
        return picked

    def check_echo(self) -> None:
        """Refuse echoed log-probabilities that are visibly wrong before any label is scored with them.

        llama-cpp-python shifts them by one token for a model that adds no BOS token (SmolLM2): every text would then
        be labelled by garbage. The probe's continuation is near-certain, so a shifted echo is far below the bound.
        """
        if self._echo_checked or self.cfg.score_mode != "echo":
            return
        try:
            value = self._score_one(PROBE_PROMPT, PROBE_CONTINUATION)
        except RequestFailed as err:
            raise self._stop(self.cfg.base_urls[0], f"the echo check failed: {err}") from None
        if value < -4.0:
            raise self._stop(
                self.cfg.base_urls[0],
                f"its echoed log-probabilities look shifted (log p({PROBE_CONTINUATION!r} after '1, 2, …, 19,') = "
                f"{value:.1f}); llama-cpp-python shifts them for a model without a BOS token: set "
                "teacher.score_prefix to the model's BOS text (SmolLM2: '<|im_start|>')",
            )
        self._echo_checked = True

    def request_body(self, prompt: Prompt, params: GenParams, sample: int, top_logprobs: int) -> tuple[str, dict]:
        """The endpoint and JSON body for one completion; ``sample`` varies the seed of the ``sample``-th draw."""
        body: dict[str, Any] = {
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": params.seed + sample,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        chat = self.cfg.endpoint == "chat" or not isinstance(prompt, str)
        if chat:
            body["messages"] = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            if top_logprobs:
                body.update(logprobs=True, top_logprobs=top_logprobs)
            return "/chat/completions", body
        body["prompt"] = prompt
        if top_logprobs:
            body["logprobs"] = top_logprobs
        return "/completions", body

    def complete(self, prompt: Prompt, params: GenParams, sample: int = 0, top_logprobs: int = 0) -> Completion:
        """One completion (cached), with the first token's top log-probabilities when asked and given."""
        path, body = self.request_body(prompt, params, sample, top_logprobs)
        data = self.cached(path, body)
        return parse_completion(data)

    def generate(self, prompts: list[Prompt], params: GenParams) -> list[Any]:  # type: ignore[override]
        """``params.n`` completions per prompt, one request each (servers differ in supporting ``n``); a prompt whose
        request failed gets its RequestFailed (the reason) instead of a list."""
        jobs = [(p, s) for p in range(len(prompts)) for s in range(params.n)]
        done = self.map(lambda job: self.complete(prompts[job[0]], params, job[1]), jobs)
        out: list[Any] = [[] for _ in prompts]
        for (p, _), result in zip(jobs, done, strict=True):
            if isinstance(result, RequestFailed):
                out[p] = result  # the reason travels to the text's record
            elif isinstance(out[p], list):
                out[p].append(result)
        return out

    def close(self) -> None:
        """Stop: queued requests are dropped, backoff waits end, in-flight ones end with the connections."""
        self._closing.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()
        with self._cache_lock:  # waits for a cache call in progress; none starts after this
            pass


def continuation_logprob(data: dict[str, Any], prompt: str, continuation: str, url: str) -> float:
    """Sum of the echoed log-probabilities of the continuation's tokens.

    The tokens are found by their own text, not by ``text_offset``: servers differ in whether the offsets count a BOS
    token or a prefix, and whether the generated token is listed after the echo.
    """
    logprobs = (data["choices"][0] or {}).get("logprobs") or {}
    tokens, values = logprobs.get("tokens"), logprobs.get("token_logprobs")
    if not tokens or values is None:
        raise ServerError(
            f"server {url}: /completions returned no echoed token log-probabilities; label scoring needs a server "
            "that gives them (llama.cpp, vLLM); use method logprobs, vote or answer with this one"
        )
    joined, starts = "", []
    for token in tokens:
        starts.append(len(joined))
        joined += token or ""
    full = prompt + continuation
    base = joined.find(full)
    if base < 0:
        raise RequestFailed("the echoed tokens do not spell the prompt and continuation")
    begin, end = base + len(prompt), base + len(full)
    picked = [v for v, at in zip(values, starts, strict=False) if begin <= at < end]
    if not picked or any(v is None for v in picked):
        raise RequestFailed("the echoed tokens do not cover the continuation")
    return float(sum(picked))


# A continuation any language model finds near-certain: the echo check's probe.
PROBE_PROMPT, PROBE_CONTINUATION = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19,", " 20"


def parse_completion(data: dict[str, Any]) -> Completion:
    """Text, finish reason and (when present) the first generated token's top log-probabilities."""
    choice = data["choices"][0] or {}
    message = choice.get("message") or {}
    text = message.get("content") if message else choice.get("text")
    top: dict[str, float] | None = None
    logprobs = choice.get("logprobs")
    if isinstance(logprobs, dict):
        content = logprobs.get("content")
        if content:  # chat: [{token, logprob, top_logprobs: [{token, logprob}]}]
            first = content[0] or {}
            top = {t["token"]: float(t["logprob"]) for t in first.get("top_logprobs") or [] if "token" in t}
            top = top or ({first["token"]: float(first["logprob"])} if "token" in first else None)
        elif logprobs.get("top_logprobs"):  # completions: [{token: logprob}] per position
            top = {k: float(v) for k, v in (logprobs["top_logprobs"][0] or {}).items()}
    return Completion(text=text or "", top_logprobs=top or None, finish_reason=str(choice.get("finish_reason")))
