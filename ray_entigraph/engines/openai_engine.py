"""OpenAI-compatible HTTP engine: a vLLM / SGLang / llama.cpp server's `/v1`, or a hosted API.

The one home of `httpx`, imported inside the functions that use it: `engines.constrains_json` imports this
module on the driver, which must stay cheap. `generate` is synchronous (a Ray Data actor calls it) and runs
one asyncio event loop per call: the requests go out concurrently, at most `max_concurrency` in flight, each
retried on its own on 429, 5xx, timeouts and dropped connections (exponential backoff with full jitter,
`Retry-After` honoured). A request that cannot succeed comes back as a failed result with its reason; `generate` never
raises for one request.

Every request carries the header `X-Request-Key: <request key>`. Servers ignore it; a proxy or a test can
count answers per request with it (the `user` body field would do too, but it is meant for end users and
hosted APIs log it).

The pure pieces (backoff, Retry-After parsing, request bodies, response parsing, error reasons) are
module-level functions so they can be tested without a server.

The batch API path (`use_batch_api`: `/files` + `/batches`) follows OpenAI's documented protocol and was
tested against a stand-in server written in the unit tests, not against a provider. A unit of work's id is a
hash of its sorted request keys and of their bodies (`batch_unit_id`). Once its batch is created, a record
(batch id, input file id, created time, number of requests, base_url) is written to
`<output_dir>/_batches/<unit id>.json`; a later call with the same requests (a re-run after the job was killed)
re-attaches to the recorded batch instead of uploading and paying again, unless that batch ended failed, expired
or cancelled or the server no longer knows it (404): then the unit is submitted anew and the record overwritten.
The record is deleted once the results are downloaded. Polling stops `batch_deadline_s` after the batch's
`created_at` (a re-attached batch keeps its deadline): every request then fails with a reason naming the
batch, and the record stays, so a re-run re-attaches. An engine built without an output_dir records nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import email.utils
import functools
import hashlib
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ray_entigraph import storage
from ray_entigraph.config import LOOPBACK_HOSTS
from ray_entigraph.engines.base import GenerationRequest, GenerationResult
from ray_entigraph.engines.hf import load_tokenizer
from ray_entigraph.engines.ratelimit import AdaptiveConcurrency, gate_for
from ray_entigraph.errors import EngineError

if TYPE_CHECKING:
    import httpx

    from ray_entigraph.config import EntiGraphConfig, OpenAIConfig

logger = logging.getLogger(__name__)

REQUEST_KEY_HEADER = "X-Request-Key"
CHAT_PATH = "/chat/completions"
BATCH_ENDPOINT = "/v1/chat/completions"  # the batch API names endpoints with their /v1 prefix
BATCH_TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
BATCH_RESUBMIT = frozenset({"failed", "expired", "cancelled"})  # a recorded batch in one of these is submitted anew
BATCH_RECORDS = "_batches"  # under output_dir: one record per unit of work whose batch was created
_MAX_MESSAGE_CHARS = 500
# Fields that only some servers accept, and how to stop sending them (hosted APIs reject unknown fields).
_FIELD_FIXES = {
    "continue_final_message": "set engine.openai.prefill=instruct",
    "add_generation_prompt": "set engine.openai.prefill=instruct",
    "repetition_penalty": "set engine.openai.send_repetition_penalty=false",
}


@functools.cache
def retryable_errors() -> tuple[type[BaseException], ...]:
    """Transport failures worth another try: the request may not have reached the server, or its answer was
    lost. (A function, so that importing this module does not import httpx.)"""
    import httpx

    return (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError, TimeoutError)


# -- pure helpers ---------------------------------------------------------------------------------------
def is_local_url(base_url: str) -> bool:
    """True when the server runs on this machine (no key needed to talk to it)."""
    return (urlsplit(base_url).hostname or "") in LOOPBACK_HOSTS


def is_retryable_status(status: int) -> bool:
    """429 (rate limit), 408 (request timeout) and every 5xx are transient; other 4xx are the request's fault."""
    return status in (408, 429) or status >= 500


def backoff_delay(
    attempt: int, base_s: float, max_s: float, rng: random.Random, retry_after_s: float | None = None
) -> float:
    """Seconds to wait before retry number `attempt + 1` (attempt counts from 0).

    Full jitter: uniform in [0, min(max_s, base_s * 2**attempt)], so clients that failed together do not
    retry together. A server's Retry-After is a floor (capped at max_s: a server asking for an hour does
    not stall the actor for an hour).
    """
    cap = min(max_s, base_s * 2.0 ** min(attempt, 60))
    delay = rng.uniform(0.0, cap)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, max_s))
    return delay


def parse_retry_after(headers, now: float | None = None) -> float | None:
    """Seconds a server asks us to wait: `retry-after-ms`, or `Retry-After` as seconds or an HTTP date.

    Returns None when there is no usable header; a date in the past gives 0.
    """
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms)
            if value >= 0:
                return value / 1000.0
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
        return value if value >= 0 else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:  # HTTP dates are GMT; a date without a zone is not one
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def instruct_prefill_line(prefix: str) -> str:
    """The instruction that stands in for an assistant prefill on servers that cannot continue a message."""
    return (
        "\n\nBegin your answer with exactly the text between the markers <<< and >>> (without the markers), "
        f"then continue it:\n<<<{prefix}>>>"
    )


def build_chat_body(
    request: GenerationRequest,
    *,
    model: str,
    prefill: str = "continue",
    send_repetition_penalty: bool = True,
    extra_body: dict | None = None,
) -> dict:
    """The JSON body of a `/chat/completions` request.

    The response prefix is sent as an assistant message the server continues (`prefill="continue"`, vLLM
    and SGLang semantics) or as an instruction appended to the last user message (`"instruct"`).
    `extra_body` is merged last, so it may override any field; a None value there removes the field
    (e.g. `{"max_tokens": None, "max_completion_tokens": 256}` for APIs that refuse `max_tokens`).
    """
    s = request.sampling
    messages = [dict(m) for m in request.messages]  # never mutate the caller's request
    body: dict = {
        "model": model,
        "messages": messages,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "max_tokens": s.max_new_tokens,
        "seed": request.seed,
        "stream": False,
    }
    if s.frequency_penalty:
        body["frequency_penalty"] = s.frequency_penalty
    if s.presence_penalty:
        body["presence_penalty"] = s.presence_penalty
    if send_repetition_penalty:
        body["repetition_penalty"] = s.repetition_penalty
    prefix = request.response_prefix
    if prefix and prefill == "continue":
        messages.append({"role": "assistant", "content": prefix})
        body["continue_final_message"] = True
        body["add_generation_prompt"] = False
    elif prefix and prefill == "instruct":
        if messages and messages[-1].get("role") == "user":
            messages[-1]["content"] = messages[-1]["content"] + instruct_prefill_line(prefix)
        else:
            messages.append({"role": "user", "content": instruct_prefill_line(prefix).lstrip()})
    elif prefix:
        raise ValueError(f"prefill must be 'continue' or 'instruct', not {prefill!r}")
    if request.json_schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "extraction", "schema": request.json_schema, "strict": True},
        }
    for key, value in (extra_body or {}).items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def server_message(payload) -> str:
    """The human-readable error message in a server's answer (OpenAI, vLLM and FastAPI shapes), shortened."""
    message = None
    if isinstance(payload, dict):
        err = payload.get("error")
        if isinstance(err, dict):
            message = err.get("message")
        elif isinstance(err, str):
            message = err
        message = message or payload.get("message") or payload.get("detail")
    if message is None:
        message = payload
    text = message if isinstance(message, str) else json.dumps(message, default=str)
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE_CHARS else text[:_MAX_MESSAGE_CHARS] + "..."


def _payload_of(response: httpx.Response):
    try:
        return response.json()
    except ValueError:
        return response.text


def status_error_reason(status: int, payload, *, api_key_env: str | None = None, what: str = CHAT_PATH) -> str:
    """Why a request failed with HTTP `status`: the status, the server's message, and a fix where one is known."""
    reason = f"HTTP {status} from {what}: {server_message(payload) or '(no message)'}"
    if status in (401, 403):
        name = api_key_env or "(none: engine.openai.api_key_env is null)"
        reason += (f". Fix: set the environment variable named by engine.openai.api_key_env ({name}) to a valid "
                   "key for this server, on every node.")
    elif status == 404:
        reason += ". Fix: check engine.openai.base_url (it usually ends in /v1) and engine.openai.served_model."
    elif status in (400, 422):
        fix = next((fix for field, fix in _FIELD_FIXES.items() if field in reason), None)
        if fix:
            reason += f". Fix, if the server does not know that field: {fix}."
    return reason


def describe_exception(exc: BaseException) -> str:
    """`Type: message` of a transport error; httpx messages carry no headers, so no key can leak here."""
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}"


def remove_response_prefix(content: str, prefix: str, *, required: bool) -> str | None:
    """The continuation after `prefix` in an answer that may repeat it.

    A server that continues an assistant message returns the continuation only (vLLM does); one that echoes
    the prefix gets it removed here. With `required` (prefill by instruction) an answer that does not start
    with the prefix gives None: the model ignored the instruction and the text would not continue the prefix.
    """
    if content.startswith(prefix):
        return content[len(prefix):]
    stripped_prefix = prefix.strip()
    if not stripped_prefix:  # a whitespace prefix: nothing to check
        return content
    if content.lstrip().startswith(stripped_prefix):
        return content.lstrip()[len(stripped_prefix):]
    return None if required else content


def parse_chat_response(payload, request: GenerationRequest, *, prefill: str = "continue") -> GenerationResult:
    """A `GenerationResult` from a `/chat/completions` answer (text stripped like the transformers engine)."""
    if not isinstance(payload, dict) or not payload.get("choices"):
        return GenerationResult.failed(request.key, f"answer has no choices: {server_message(payload)}")
    choice = payload["choices"][0] or {}
    message = choice.get("message") or {}
    content = message.get("content") or ""
    usage = payload.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    num_prompt_tokens = int(usage.get("prompt_tokens") or 0)
    num_cached_tokens = int(details.get("cached_tokens") or 0)
    num_generated_tokens = int(usage.get("completion_tokens") or 0)
    prefix = request.response_prefix
    if prefix:
        continuation = remove_response_prefix(content, prefix, required=prefill == "instruct")
        if continuation is None:
            failed = GenerationResult.failed(
                request.key,
                "prefill=instruct: the answer does not start with the response prefix "
                f"(it starts {content[:80]!r}); the model ignored the instruction",
            )
            failed.num_prompt_tokens = num_prompt_tokens
            failed.num_generated_tokens = num_generated_tokens
            return failed
        text = continuation.rstrip()  # the leading space is part of the continuation ("Guild" + " is")
    else:
        text = content.strip()
    finish_reason = "length" if choice.get("finish_reason") == "length" else "stop"
    return GenerationResult(key=request.key, text=text, finish_reason=finish_reason,
                            num_prompt_tokens=num_prompt_tokens, num_cached_tokens=num_cached_tokens,
                            num_generated_tokens=num_generated_tokens)


def parse_batch_line(
    line: dict, request: GenerationRequest, *, prefill: str, api_key_env: str | None
) -> GenerationResult:
    """A `GenerationResult` from one line of a batch's output or error file."""
    error = line.get("error")
    response = line.get("response") or {}
    if error:
        return GenerationResult.failed(request.key, f"batch API error: {server_message({'error': error})}")
    status = int(response.get("status_code") or 0)
    body = response.get("body")
    if status != 200:
        return GenerationResult.failed(request.key, status_error_reason(status, body, api_key_env=api_key_env,
                                                                        what=f"batch {BATCH_ENDPOINT}"))
    return parse_chat_response(body, request, prefill=prefill)


def batch_request_line(key: str, body: dict) -> str:
    """One JSONL line of a batch input file."""
    return json.dumps({"custom_id": key, "method": "POST", "url": BATCH_ENDPOINT, "body": body})


def batch_unit_id(bodies: dict[str, dict]) -> str:
    """The id of a unit of work sent as one batch (its request bodies by key): a hash of the sorted keys and of
    the bodies, so the same requests give the same id, in any order."""
    keys = sorted(bodies)
    bodies_hash = hashlib.sha256(json.dumps([bodies[k] for k in keys], sort_keys=True, default=str).encode())
    blob = json.dumps({"keys": keys, "bodies": bodies_hash.hexdigest()}).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def _run_coroutine(coro):
    """Run a coroutine to completion from synchronous code, also when this thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@dataclass
class _Reply:
    """What came of one HTTP call after its retries: the response, or the reason it failed."""

    response: httpx.Response | None
    num_retries: int
    error: str | None = None
    status: int | None = None  # the HTTP status of a refused (non-retryable) call


# -- the engine -----------------------------------------------------------------------------------------
class OpenAIEngine:
    """Engine protocol over an OpenAI-compatible `/chat/completions` API (or its batch API)."""

    supports_json_schema = True

    def __init__(self, openai: "OpenAIConfig", model_name: str, *, cache_dir: str | None = None,
                 output_dir: str | None = None):
        """`openai` is `config.engine.openai`, kept as `self.openai`; `model_name` (`config.model.name`) is the
        served model unless `openai.served_model` names another, and the tokenizer unless `openai.tokenizer`
        does; `cache_dir` is where a bundled tokenizer is converted; `output_dir` (the run's) is where batch
        ids are recorded (None: not recorded, a re-run cannot re-attach)."""
        self.openai = openai
        self.output_dir = output_dir
        self.model_name = openai.served_model or model_name
        self.base_url = openai.base_url.rstrip("/")
        self._tokenizer_name = openai.tokenizer or model_name
        self._cache_dir = cache_dir
        self._tokenizer = None
        self._tokenizer_loaded = False
        self._rng = random.Random()
        self._api_key = self._read_api_key()
        self._custom_headers()  # every variable named by headers_from_env is set, or the engine does not start
        # httpx logs every request at INFO: one line per request floods actor logs. Quiet it unless the
        # user configured that logger.
        self._gate = None  # the shared rate limit (engines/ratelimit.py), found on first use
        self._gate_resolved = False
        self._sleep = asyncio.sleep  # injectable: the rate-limit tests run on a clock of their own
        httpx_logger = logging.getLogger("httpx")
        if httpx_logger.level == logging.NOTSET:
            httpx_logger.setLevel(logging.WARNING)

    @classmethod
    def from_config(cls, config: "EntiGraphConfig") -> "OpenAIEngine":
        """The engine of `config.engine.openai`; the served model defaults to `config.model.name`."""
        return cls(config.engine.openai, config.model.name, cache_dir=config.model.cache_dir,
                   output_dir=config.output_dir)

    @classmethod
    def supports_json_schema_for(cls, config: "EntiGraphConfig") -> bool:
        return True  # sent as `response_format`; a server without it answers 400 with the reason

    def __repr__(self) -> str:
        key = f"from ${self.openai.api_key_env}" if self._api_key else "none"
        return (f"OpenAIEngine(model={self.model_name!r}, base_url={self.base_url!r}, api_key=<{key}>, "
                f"max_concurrency={self.openai.max_concurrency}, batch_api={self.openai.use_batch_api})")

    def __getstate__(self):
        # Never ship the key inside a pickle (Ray may pickle objects); the receiver reads its own env.
        state = dict(self.__dict__)
        state["_api_key"] = None
        state["_tokenizer"], state["_tokenizer_loaded"] = None, False
        state["_gate"], state["_gate_resolved"], state["_sleep"] = None, False, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._sleep = asyncio.sleep
        if self.openai.api_key_env:
            self._api_key = os.environ.get(self.openai.api_key_env) or None

    # -- protocol ---------------------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        if not self._tokenizer_loaded:
            self._tokenizer = self._load_tokenizer()
            self._tokenizer_loaded = True
        if self._tokenizer is None:
            return len(text) // 4 + 1
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        if not requests:
            return []
        run = self._generate_batch_api if self.openai.use_batch_api else self._generate_live
        return _run_coroutine(run(list(requests)))

    # -- set-up -----------------------------------------------------------------------------------------
    def _read_api_key(self) -> str | None:
        if not self.openai.api_key_env:
            return None
        key = os.environ.get(self.openai.api_key_env)
        if key:
            return key
        if is_local_url(self.base_url):
            logger.warning("Environment variable %s is not set: sending no API key to the local server %s.",
                           self.openai.api_key_env, self.base_url)
            return None
        name = self.openai.api_key_env
        raise EngineError(
            f"engine.openai.api_key_env names the environment variable {name!r}, which is not set, "
            f"and {self.base_url} is not a local server. Fix: export {name}=<your key> on every "
            "node (in its environment when Ray starts), or set engine.openai.api_key_env=null for a server "
            "without authentication."
        )

    def _custom_headers(self) -> dict[str, str]:
        """headers_from_env, read from this process's environment now (never kept in the engine or a pickle)."""
        missing = [var for var in self.openai.headers_from_env.values() if not os.environ.get(var)]
        if missing:
            raise EngineError(f"engine.openai.headers_from_env names environment variables that are not set: "
                              f"{', '.join(missing)}. Fix: export them on every node (in its environment when Ray "
                              "starts), or remove those headers.")
        return {h: os.environ[var] for h, var in self.openai.headers_from_env.items()}

    def _load_tokenizer(self):
        name = self._tokenizer_name
        if name:
            try:
                return load_tokenizer(name, self._cache_dir)
            except Exception as exc:  # noqa: BLE001 - any load failure falls back to the estimate
                logger.warning("Tokenizer %r did not load (%s); counting about 4 characters per token. Set "
                               "engine.openai.tokenizer to a Hugging Face tokenizer for exact counts.", name, exc)
        return None

    def _client(self) -> httpx.AsyncClient:
        import httpx

        headers = {"User-Agent": "ray-entigraph", **self._custom_headers()}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        n = self.openai.max_concurrency
        return httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(self.openai.request_timeout_s),
            limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
        )

    def _redact(self, text: str) -> str:
        """Belt and braces: a server that quotes our headers back must not put the key into a result."""
        for secret in [self._api_key, *(os.environ.get(v) for v in self.openai.headers_from_env.values())]:
            if secret and secret in text:
                text = text.replace(secret, "<redacted>")
        return text

    def _body(self, request: GenerationRequest) -> dict:
        o = self.openai
        return build_chat_body(request, model=self.model_name, prefill=o.prefill,
                               send_repetition_penalty=o.send_repetition_penalty, extra_body=o.extra_body)

    # -- HTTP with retries ------------------------------------------------------------------------------
    def gate(self):
        """The shared rate limit of this endpoint (None without requests_per_minute or tokens_per_minute)."""
        if not self._gate_resolved:
            o = self.openai
            self._gate = gate_for(self.base_url, self.model_name, o.requests_per_minute, o.tokens_per_minute)
            self._gate_resolved = True
        return self._gate

    async def _call(self, client: httpx.AsyncClient, method: str, path: str, *, semaphore=None,
                    headers: dict | None = None, what: str | None = None, tokens: int = 0, **kwargs) -> _Reply:
        """One HTTP call, retried on transient failures. Never raises for an HTTP or transport error. With a
        rate limit, each try first waits for its start time in the shared schedule (`tokens` it counts)."""
        import httpx

        o = self.openai
        url = self.base_url + path
        what = what or path
        error = "no try made"
        gate = self.gate() if path == CHAT_PATH else None
        adaptive = semaphore if isinstance(semaphore, AdaptiveConcurrency) else None
        for attempt in range(o.max_retries + 1):
            retry_after = None
            try:
                async with semaphore or contextlib.nullcontext():
                    if gate is not None:
                        wait = await gate.reserve(tokens)
                        if wait > 0:
                            await self._sleep(wait)
                    response = await asyncio.wait_for(
                        client.request(method, url, headers=headers, **kwargs), o.request_timeout_s)
                    if gate is not None:
                        gate.observe(response.headers)
            except retryable_errors() as exc:
                error = self._redact(describe_exception(exc))
            except httpx.HTTPError as exc:
                return _Reply(None, attempt, self._redact(f"{what}: {describe_exception(exc)}"))
            else:
                if response.is_success:
                    if adaptive is not None:
                        adaptive.succeeded()
                    return _Reply(response, attempt)
                error = self._redact(status_error_reason(response.status_code, _payload_of(response),
                                                         api_key_env=o.api_key_env, what=what))
                if not is_retryable_status(response.status_code):
                    return _Reply(None, attempt, error, response.status_code)
                retry_after = parse_retry_after(response.headers)
                if response.status_code == 429:
                    if adaptive is not None:
                        adaptive.rate_limited()
                    if gate is not None:  # every actor holds off, not only this one
                        gate.hold(retry_after if retry_after is not None else o.backoff_base_s)
            if attempt == o.max_retries:
                break
            delay = backoff_delay(attempt, o.backoff_base_s, o.backoff_max_s, self._rng, retry_after)
            logger.debug("%s %s failed (%s); retry %d/%d in %.2fs", method, what, error, attempt + 1,
                         o.max_retries, delay)
            await asyncio.sleep(delay)
        tries = o.max_retries + 1
        tries_text = f"{tries} try" if tries == 1 else f"{tries} tries"
        return _Reply(None, o.max_retries, f"gave up after {tries_text}; last error: {error}")

    # -- live requests ----------------------------------------------------------------------------------
    async def _generate_live(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        o = self.openai
        semaphore = AdaptiveConcurrency(o.max_concurrency) if o.adaptive_concurrency else asyncio.Semaphore(
            o.max_concurrency)
        async with self._client() as client:
            results = await asyncio.gather(*(self._complete(client, semaphore, r) for r in requests))
        num_retries = sum(r.num_retries for r in results)
        if num_retries:
            logger.info("%d requests: %d retries, %d failed", len(results), num_retries,
                        sum(r.error is not None for r in results))
        return list(results)

    async def _complete(self, client, semaphore, request: GenerationRequest) -> GenerationResult:
        try:
            headers = {REQUEST_KEY_HEADER: request.key} if request.key.isascii() and request.key.isprintable() else None
            reply = await self._call(client, "POST", CHAT_PATH, semaphore=semaphore, headers=headers,
                                     json=self._body(request), tokens=self._request_tokens(request))
            if reply.response is None:
                result = GenerationResult.failed(request.key, reply.error or "unknown error")
                result.transient = reply.status is None and (reply.error or "").startswith("gave up")
            else:
                result = parse_chat_response(_payload_of(reply.response), request, prefill=self.openai.prefill)
            result.num_retries = reply.num_retries
        except Exception as exc:  # noqa: BLE001 - one bad request never fails its neighbours
            reason = self._redact(describe_exception(exc))
            logger.warning("request %s failed: %s", request.key, reason)
            result = GenerationResult.failed(request.key, reason)
        if result.error:
            result.error = self._redact(result.error)
        return result

    def _request_tokens(self, request: GenerationRequest) -> int:
        """What a request counts against tokens_per_minute: its prompt (by the tokenizer where there is one)
        plus max_new_tokens. Zero without a token limit (no tokenizer is loaded for nothing)."""
        if not self.openai.tokens_per_minute:
            return 0
        prompt = "\n".join(str(m.get("content", "")) for m in request.messages) + request.response_prefix
        return self.count_tokens(prompt) + request.sampling.max_new_tokens

    # -- batch API --------------------------------------------------------------------------------------
    async def _generate_batch_api(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        unique: dict[str, GenerationRequest] = {}
        for request in requests:  # custom_id must be unique: the first request of a key stands for all
            unique.setdefault(request.key, request)
        try:
            async with self._client() as client:
                answers, reason = await self._run_batch(client, unique)
        except Exception as exc:  # noqa: BLE001 - e.g. a malformed answer of the batch API: fail the unit
            answers, reason = {}, self._redact(f"batch API: {describe_exception(exc)}")
            logger.warning("%s", reason)
        by_key = {}
        for key, request in unique.items():
            line = answers.get(key)
            if line is None:
                result = GenerationResult.failed(key, reason)
                result.transient = "re-attaches" in reason  # the batch may still answer: a re-run asks it again
            else:
                try:
                    result = parse_batch_line(line, request, prefill=self.openai.prefill,
                                              api_key_env=self.openai.api_key_env)
                except Exception as exc:  # noqa: BLE001 - a malformed line fails its request only
                    result = GenerationResult.failed(key, f"malformed batch output line: {describe_exception(exc)}")
            if result.error:
                result.error = self._redact(result.error)
            by_key[key] = result
        return [by_key[r.key] for r in requests]

    async def _run_batch(self, client, requests: dict[str, GenerationRequest]) -> tuple[dict[str, dict], str]:
        """Re-attach to this unit's recorded batch, or upload and create one; poll it until it ends or its deadline
        passes; download its answers. Returns the answer lines by custom_id, and the reason that applies to a
        request without one."""
        o = self.openai
        bodies = {k: self._body(r) for k, r in requests.items()}
        unit = batch_unit_id(bodies)
        record = storage.join(self.output_dir, BATCH_RECORDS, f"{unit}.json") if self.output_dir else None
        batch, reason = await self._reattach(client, record) if record else (None, "")
        if batch is None and not reason:
            batch, reason = await self._submit(client, bodies)
            if batch is not None and record and not self._record(record, batch, len(bodies)):
                record = None
        if batch is None:
            return {}, reason
        batch_id = batch["id"]
        again = (f"its record {record} is kept, so a re-run re-attaches to it instead of paying again" if record else
                 "the batch may still run at the provider (cancel it there if this unit of work is retried)")
        # a monotonic deadline, measured from the batch's creation: a re-attached batch keeps its own
        started = time.monotonic()
        deadline = started + o.batch_deadline_s - max(0.0, time.time() - batch["created_at"])
        last_progress = None
        while batch.get("status") not in BATCH_TERMINAL:
            left = deadline - time.monotonic()
            if left <= 0:
                return {}, (f"batch API: batch {batch_id} did not end within engine.openai.batch_deadline_s="
                            f"{o.batch_deadline_s:g}s of its creation (last status '{batch.get('status')}'); {again}")
            await asyncio.sleep(min(o.batch_poll_s, left))
            polled = await self._call(client, "GET", f"/batches/{batch_id}", what=f"batch poll /batches/{batch_id}")
            if polled.response is None:
                return {}, f"batch API: polling batch {batch_id} failed: {polled.error}; {again}"
            batch = {**polled.response.json(), "created_at": batch["created_at"]}
            counts = batch.get("request_counts") or {}
            progress = (batch.get("status"), counts.get("completed"), counts.get("failed"))
            if progress != last_progress:
                logger.info("batch %s: %s, %s/%s completed, %s failed, %.0fs", batch_id, progress[0],
                            counts.get("completed", "?"), counts.get("total", len(requests)),
                            counts.get("failed", 0), time.monotonic() - started)
                last_progress = progress
        status = batch["status"]
        answers: dict[str, dict] = {}
        lost: list[str] = []
        keep = False  # a download that failed for a transient reason: the record lets a re-run download it again
        for field in ("output_file_id", "error_file_id"):
            file_ref = batch.get(field)
            if not file_ref:
                continue
            content = await self._call(client, "GET", f"/files/{file_ref}/content", what=f"batch {field} content")
            if content.response is None:
                logger.warning("batch %s: downloading %s failed: %s", batch_id, field, content.error)
                lost.append(f"downloading {field} {file_ref} failed: {content.error}")
                keep = keep or content.status != 404
                continue
            for text in content.response.text.splitlines():
                try:
                    line = json.loads(text) if text.strip() else None
                except ValueError:
                    logger.warning("batch %s: skipping a malformed line of %s: %.200s", batch_id, field, text)
                    continue
                if isinstance(line, dict) and line.get("custom_id") in requests:
                    answers.setdefault(line["custom_id"], line)
        reason = f"batch API: batch {batch_id} ended '{status}' without an answer for this request"
        errors = (batch.get("errors") or {}).get("data") or []
        if errors:
            reason += "; batch errors: " + "; ".join(server_message({"error": e}) for e in errors[:3])
        if lost:
            reason += "; " + "; ".join(lost) + (f"; {again}" if keep else "")
        if record and not keep:
            self._forget(record)
        logger.info("batch %s: %s, %d of %d requests answered", batch_id, status,
                    sum(k in answers for k in requests), len(requests))
        return answers, reason

    async def _reattach(self, client, record: str) -> tuple[dict | None, str]:
        """The batch recorded for this unit, unless it ended failed/expired/cancelled or is gone: (batch, "");
        (None, "") when there is none to re-attach to (submit anew); (None, reason) when the server could not
        be asked (the unit fails, the record stays for the next try)."""
        if not storage.exists(record):
            return None, ""
        try:
            saved = json.loads(storage.read_text(record))
            batch_id = saved["batch_id"]
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("batch record %s is unreadable (%s); submitting the batch anew", record, exc)
            return None, ""
        if saved.get("base_url") != self.base_url:
            logger.warning("batch %s (recorded in %s) was sent to %s, not %s; submitting the batch anew", batch_id,
                           record, saved.get("base_url"), self.base_url)
            return None, ""
        polled = await self._call(client, "GET", f"/batches/{batch_id}", what=f"batch poll /batches/{batch_id}")
        if polled.response is None and polled.status == 404:
            logger.warning("batch %s (recorded in %s) is unknown to %s; submitting the batch anew", batch_id, record,
                           self.base_url)
            return None, ""
        if polled.response is None:
            return None, (f"batch API: re-attaching to batch {batch_id} (recorded in {record}) failed: {polled.error}; "
                          "the record is kept, so a re-run tries again")
        batch = polled.response.json()
        if batch.get("status") in BATCH_RESUBMIT:
            logger.warning("batch %s (recorded in %s) ended '%s'; submitting the batch anew", batch_id, record,
                           batch.get("status"))
            return None, ""
        if not isinstance(batch.get("created_at"), (int, float)):
            batch["created_at"] = float(saved.get("created_at") or time.time())
        logger.info("batch %s: re-attached (%s, %s requests, created %.0fs ago)", batch_id, batch.get("status"),
                    saved.get("num_requests"), time.time() - batch["created_at"])
        return batch, ""

    async def _submit(self, client, bodies: dict[str, dict]) -> tuple[dict | None, str]:
        """Upload the requests and create their batch: (batch, ""), or (None, reason)."""
        data = "\n".join(batch_request_line(k, body) for k, body in bodies.items()).encode() + b"\n"
        up = await self._call(client, "POST", "/files", what="batch upload /files",
                              files={"file": ("requests.jsonl", data, "application/jsonl")}, data={"purpose": "batch"})
        if up.response is None:
            return None, f"batch API: uploading the requests failed: {up.error}"
        file_id = up.response.json()["id"]
        created = await self._call(client, "POST", "/batches", what="batch create /batches", json={
            "input_file_id": file_id, "endpoint": BATCH_ENDPOINT,
            "completion_window": self.openai.batch_completion_window,
        })
        if created.response is None:
            return None, f"batch API: creating the batch failed: {created.error}"
        batch = created.response.json()
        if not isinstance(batch.get("created_at"), (int, float)):
            batch["created_at"] = time.time()
        batch.setdefault("input_file_id", file_id)
        logger.info("batch %s: submitted %d requests (input file %s, window %s)", batch["id"], len(bodies),
                    file_id, self.openai.batch_completion_window)
        return batch, ""

    def _record(self, record: str, batch: dict, num_requests: int) -> bool:
        """Write the record of a created batch, so that a re-run re-attaches to it; False when that failed."""
        saved = {"batch_id": batch["id"], "input_file_id": batch["input_file_id"], "created_at": batch["created_at"],
                 "num_requests": num_requests, "base_url": self.base_url}
        try:
            storage.write_text(record, json.dumps(saved, indent=1) + "\n")
            return True
        except Exception as exc:  # noqa: BLE001 - the batch runs anyway; only a re-run's re-attach is lost
            logger.warning("batch %s: writing its record %s failed (%s); a re-run would submit it again",
                           batch["id"], record, describe_exception(exc))
            return False

    @staticmethod
    def _forget(record: str) -> None:
        """Delete a batch record whose results are downloaded."""
        try:
            fs, path = storage.filesystem(record)
            fs.rm_file(path)
        except Exception as exc:  # noqa: BLE001 - a stale record costs one GET on a re-run, nothing more
            logger.warning("deleting the batch record %s failed: %s", record, describe_exception(exc))
