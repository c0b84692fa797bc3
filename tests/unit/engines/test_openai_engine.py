"""The OpenAI-compatible engine without vLLM: pure helpers, and retries against small HTTP servers written
here (a scripted /chat/completions server and a stand-in for the batch API), on 127.0.0.1.

The servers update their counts before they answer, so that a count a test reads after `generate` returns
is final; no assertion races a server thread, and none depends on how fast this machine is (a wait that
must not happen is made far longer than any bound the test checks)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import email.utils
import json
import logging
import pickle
import random
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ray_entigraph.config import OpenAIConfig
from ray_entigraph.engines.base import GenerationRequest, SamplingParams
from ray_entigraph.engines.openai_engine import (
    OpenAIEngine,
    backoff_delay,
    batch_unit_id,
    build_chat_body,
    is_local_url,
    is_retryable_status,
    parse_chat_response,
    parse_retry_after,
    status_error_reason,
)
from ray_entigraph.errors import EngineError

pytestmark = pytest.mark.timeout(60)

SAMPLING = SamplingParams(temperature=0.5, top_p=0.8, max_new_tokens=32, repetition_penalty=1.2)
MESSAGES = [{"role": "system", "content": "You write."}, {"role": "user", "content": "Tell me about Kestavel."}]
SECRET = "sk-test-0123456789-do-not-leak"


def request(key="k", prefix="", schema=None, messages=MESSAGES):
    return GenerationRequest(key=key, messages=messages, sampling=SAMPLING, seed=7, response_prefix=prefix,
                             json_schema=schema)


def completion(content, *, finish="stop", prompt=11, completion_tokens=5, cached=3):
    usage = {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
             "total_tokens": prompt + completion_tokens}
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return {"id": "cmpl-1", "object": "chat.completion", "model": "m", "usage": usage,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}]}


# -- pure helpers ---------------------------------------------------------------------------------------
def test_backoff_is_full_jitter_within_bounds():
    rng = random.Random(0)
    for attempt in range(12):
        cap = min(5.0, 0.1 * 2**attempt)
        samples = [backoff_delay(attempt, 0.1, 5.0, rng) for _ in range(300)]
        assert all(0.0 <= s <= cap for s in samples)
        assert max(samples) > 0.8 * cap and min(samples) < 0.2 * cap  # spread over the whole range
    # Retry-After is a floor, capped at the longest wait
    assert all(2.0 <= backoff_delay(0, 0.1, 5.0, rng, retry_after_s=2.0) <= 5.0 for _ in range(100))
    assert backoff_delay(0, 0.1, 5.0, rng, retry_after_s=3600.0) == 5.0
    assert backoff_delay(1000, 1.0, 60.0, rng) <= 60.0  # no overflow on a huge attempt number


def test_parse_retry_after_seconds_date_and_garbage():
    now = time.time()
    assert parse_retry_after({"retry-after": "0"}) == 0.0
    assert parse_retry_after({"retry-after": " 7 "}) == 7.0
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    future = email.utils.formatdate(now + 30, usegmt=True)
    assert 28.0 <= parse_retry_after({"retry-after": future}, now=now) <= 31.0
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after({"retry-after": past}, now=now) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({"retry-after": "-3"}) is None
    assert parse_retry_after({}) is None


def test_retryable_statuses_and_local_hosts():
    assert all(is_retryable_status(s) for s in (408, 429, 500, 502, 503, 504, 599))
    assert not any(is_retryable_status(s) for s in (400, 401, 403, 404, 409, 422))
    assert is_local_url("http://127.0.0.1:8000/v1") and is_local_url("http://localhost/v1")
    assert not is_local_url("https://api.openai.com/v1")


def test_body_without_prefix_sends_nothing_extra():
    body = build_chat_body(request(), model="m")
    assert body["messages"] == MESSAGES
    assert body["model"] == "m" and body["stream"] is False and body["seed"] == 7
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["repetition_penalty"]) == (0.5, 0.8, 32, 1.2)
    assert not {"continue_final_message", "add_generation_prompt", "response_format"} & set(body)
    assert "repetition_penalty" not in build_chat_body(request(), model="m", send_repetition_penalty=False)


def test_body_continue_prefill_appends_an_assistant_message():
    req = request(prefix="## Kestavel\n\nKestavel")
    body = build_chat_body(req, model="m", prefill="continue")
    assert body["messages"][:-1] == MESSAGES
    assert body["messages"][-1] == {"role": "assistant", "content": "## Kestavel\n\nKestavel"}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert req.messages == MESSAGES and len(MESSAGES) == 2  # the request is not mutated


def test_body_instruct_prefill_asks_for_the_prefix():
    body = build_chat_body(request(prefix="In 1820, Kestavel"), model="m", prefill="instruct")
    assert len(body["messages"]) == 2 and body["messages"][0] == MESSAGES[0]
    user = body["messages"][-1]
    assert user["role"] == "user" and user["content"].startswith(MESSAGES[1]["content"])
    assert "<<<In 1820, Kestavel>>>" in user["content"] and "exactly" in user["content"]
    assert not {"continue_final_message", "add_generation_prompt"} & set(body)
    assert MESSAGES[1]["content"] == "Tell me about Kestavel."
    # a conversation that does not end with the user gets its own instruction message
    ends_with_system = [{"role": "system", "content": "Write."}]
    body = build_chat_body(request(prefix="P", messages=ends_with_system), model="m", prefill="instruct")
    assert body["messages"][-1]["role"] == "user" and "<<<P>>>" in body["messages"][-1]["content"]


def test_body_json_schema_and_extra_body():
    schema = {"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}
    body = build_chat_body(request(schema=schema), model="m",
                           extra_body={"top_k": 20, "max_tokens": None, "max_completion_tokens": 64})
    assert body["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "extraction", "schema": schema, "strict": True}}
    assert body["top_k"] == 20 and body["max_completion_tokens"] == 64 and "max_tokens" not in body


def test_parse_response_usage_finish_and_stripping():
    res = parse_chat_response(completion("  An answer.\n", cached=4), request())
    assert (res.text, res.num_prompt_tokens, res.num_cached_tokens, res.num_generated_tokens) == (
        "An answer.", 11, 4, 5)
    assert res.finish_reason == "stop" and res.error is None
    assert parse_chat_response(completion("x", cached=None), request()).num_cached_tokens == 0
    assert parse_chat_response(completion("x", finish="length"), request()).finish_reason == "length"
    assert parse_chat_response(completion("x", finish="content_filter"), request()).finish_reason == "stop"
    # after a prefix the leading space is the continuation's
    assert parse_chat_response(completion(" is an island. \n"), request(prefix="Kestavel")).text == " is an island."
    # a server that echoes the prefix: removed
    assert parse_chat_response(completion("Kestavel is big."), request(prefix="Kestavel")).text == " is big."
    bad = parse_chat_response({"error": {"message": "model overloaded"}}, request())
    assert bad.error and "model overloaded" in bad.error and bad.finish_reason == "error"


def test_parse_response_instruct_prefill():
    req = request(prefix="## Kestavel\n\nKestavel")
    ok = parse_chat_response(completion("## Kestavel\n\nKestavel lies north."), req, prefill="instruct")
    assert ok.text == " lies north."
    lenient = parse_chat_response(completion("\n## Kestavel\n\nKestavel lies north."), req, prefill="instruct")
    assert lenient.text == " lies north."
    ignored = parse_chat_response(completion("Sure! Here it is."), req, prefill="instruct")
    assert ignored.error and "does not start with the response prefix" in ignored.error
    assert ignored.num_generated_tokens == 5  # what was billed is still counted


def test_status_error_reasons_name_status_message_and_fix():
    vllm_style = {"object": "error", "message": "This model's maximum context length is 2048 tokens.", "code": 400}
    reason = status_error_reason(400, vllm_style)
    assert reason.startswith("HTTP 400") and "maximum context length is 2048" in reason
    openai_style = {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}
    reason = status_error_reason(401, openai_style, api_key_env="MY_KEY")
    assert "HTTP 401" in reason and "Incorrect API key" in reason and "MY_KEY" in reason
    assert "engine.openai.api_key_env" in reason
    assert "engine.openai.base_url" in status_error_reason(404, {"detail": "Not Found"})
    assert len(status_error_reason(422, "x" * 5000)) < 700
    unknown = {"error": {"message": "Unrecognized request argument supplied: continue_final_message"}}
    assert "engine.openai.prefill=instruct" in status_error_reason(400, unknown)
    unknown_penalty = {"error": {"message": "Unknown parameter: 'repetition_penalty'."}}
    assert "send_repetition_penalty=false" in status_error_reason(400, unknown_penalty)
    assert "Fix" not in status_error_reason(400, vllm_style)


# -- a scripted /chat/completions server ----------------------------------------------------------------
class ScriptedServer:
    """Answers POST /v1/chat/completions by a script per request key (header X-Request-Key): a list of
    actions played in order, the last one repeated. Actions: ("ok",), ("status", code, headers, payload),
    ("drop",) close without answering, ("hang", s) wait (until the server closes, at most s) then close,
    ("slow", s) wait then answer, ("gate", n, s) answer once n requests were in flight at one time (or after
    s), ("quote_auth", code) an error whose message quotes our Authorization header.

    Every count (attempts, answers, requests in flight) is updated before the answer is written: once the
    client has an answer, the counts include it."""

    def __init__(self, scripts: dict[str, list[tuple]] | None = None, clock=None):
        self.scripts = {k: list(v) for k, v in (scripts or {}).items()}
        self.clock, self.arrivals = clock, []  # with a clock: the time each request arrived (rate-limit tests)
        self.attempts: Counter = Counter()
        self.answered: Counter = Counter()  # successful (200) answers per key
        self.auth_headers: list[str | None] = []
        self.gateway_headers: list[str | None] = []
        self.bodies: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)  # notified when max_in_flight grows
        self.closing = threading.Event()  # releases hanging handlers when the server closes
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/v1/chat/completions":
                    return server.send(self, 404, {}, {"detail": "Not Found"})
                body = json.loads(raw)
                key = self.headers.get("X-Request-Key")
                with server.lock:
                    server.attempts[key] += 1
                    if server.clock is not None:
                        server.arrivals.append(server.clock())
                    server.auth_headers.append(self.headers.get("Authorization"))
                    server.gateway_headers.append(self.headers.get("X-Gateway-Token"))
                    server.bodies.append(body)
                    script = server.scripts.get(key, [("ok",)])
                    action = script.pop(0) if len(script) > 1 else script[0]
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    server.changed.notify_all()
                answer = None
                try:
                    answer = server.play(self, action, key, body)
                finally:
                    # counted before answering: the client may assert on the counts as soon as it has the answer
                    with server.lock:
                        server.in_flight -= 1
                        if answer is not None and answer[0] == 200:
                            server.answered[key] += 1
                if answer is None:
                    self.close_connection = True  # the connection closes with no answer
                else:
                    server.send(self, *answer)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def play(self, handler, action, key, body) -> tuple[int, dict, object] | None:
        """Wait as the action says, then return the answer (status, headers, payload), or None for none."""
        kind = action[0]
        if kind == "hang":
            self.closing.wait(action[1])
        elif kind == "slow":
            time.sleep(action[1])
        elif kind == "gate":
            with self.changed:
                self.changed.wait_for(lambda: self.max_in_flight >= action[1], timeout=action[2])
        if kind in ("drop", "hang"):
            return None
        if kind in ("ok", "slow", "gate"):
            content = " continues." if body.get("continue_final_message") else f"answer to {key}"
            return 200, {}, completion(content)
        if kind == "status":
            return action[1], action[2], action[3]
        if kind == "quote_auth":
            return action[1], {}, {"error": {"message": f"rejected header {handler.headers.get('Authorization')}"}}
        raise ValueError(f"unknown action {action!r}")

    @staticmethod
    def send(handler, code, headers, payload):
        data = json.dumps(payload).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(data)

    def close(self):
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def scripted():
    servers = []

    def start(scripts=None):
        servers.append(ScriptedServer(scripts))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def engine_for(url, output_dir=None, **settings):
    """An engine on `url` with fast retries; `settings` are engine.openai fields."""
    settings = {"api_key_env": None, "backoff_base_s": 0.01, "backoff_max_s": 0.05, "max_retries": 3,
                "request_timeout_s": 10.0, **settings}
    return OpenAIEngine(OpenAIConfig(base_url=url, **settings), "served-model", output_dir=output_dir)


def test_retries_each_request_completes_exactly_once(scripted):
    server = scripted({
        "k429": [("status", 429, {"Retry-After": "0"}, {"error": {"message": "slow down"}}), ("ok",)],
        "k500": [("status", 500, {}, {"error": {"message": "boom"}}), ("ok",)],
        "kdrop": [("drop",), ("ok",)],
        "k400": [("status", 400, {}, {"object": "error", "message": "max_tokens is too large"}), ("ok",)],
        "k503": [("status", 503, {}, {"error": {"message": "overloaded"}})],  # forever
        "kok": [("ok",)],
    })
    keys = ["k429", "k500", "kdrop", "k400", "k503", "kok"]
    results = engine_for(server.url).generate([request(k) for k in keys])
    assert [r.key for r in results] == keys
    by = {r.key: r for r in results}
    for k in ("k429", "k500", "kdrop", "kok"):
        assert by[k].error is None and by[k].text == f"answer to {k}", by[k]
        assert server.answered[k] == 1
        assert (by[k].num_prompt_tokens, by[k].num_cached_tokens, by[k].num_generated_tokens) == (11, 3, 5)
    assert {k: by[k].num_retries for k in keys} == {"k429": 1, "k500": 1, "kdrop": 1, "k400": 0, "k503": 3, "kok": 0}
    assert server.attempts == Counter({"k429": 2, "k500": 2, "kdrop": 2, "k400": 1, "k503": 4, "kok": 1})
    assert "HTTP 400" in by["k400"].error and "max_tokens is too large" in by["k400"].error
    assert by["k400"].finish_reason == "error" and server.answered["k400"] == 0
    assert "gave up after 4 tries" in by["k503"].error and "HTTP 503" in by["k503"].error
    assert "overloaded" in by["k503"].error
    assert all(b["model"] == "served-model" and b["max_tokens"] == 32 for b in server.bodies)


def test_retry_after_is_waited_for(scripted):
    server = scripted({"k": [("status", 429, {"Retry-After": "1"}, {}), ("ok",)]})
    started = time.monotonic()
    [res] = engine_for(server.url, backoff_max_s=5.0).generate([request("k")])
    assert res.error is None and res.num_retries == 1
    assert time.monotonic() - started >= 0.95


def test_timeout_is_retried(scripted):
    # The first try hangs for 30 s unless the server closes first: only the client's 0.5 s timeout can end it
    # within the 15 s bound, however slow this machine is.
    server = scripted({"k": [("hang", 30.0), ("ok",)]})
    started = time.monotonic()
    [res] = engine_for(server.url, request_timeout_s=0.5).generate([request("k")])
    assert res.error is None and res.num_retries == 1 and server.answered["k"] == 1
    assert server.attempts["k"] == 2
    assert time.monotonic() - started < 15.0


def test_connection_refused_gives_up_with_the_number_of_tries():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there
    [res] = engine_for(f"http://127.0.0.1:{port}/v1", max_retries=2).generate([request("k")])
    assert res.finish_reason == "error" and res.num_retries == 2
    assert "gave up after 3 tries" in res.error and "ConnectError" in res.error


def test_concurrency_is_bounded(scripted):
    # Each request is held until 3 were in flight at once (or 5 s passed): the engine must reach 3 and never
    # exceed it. (A sleep instead would make reaching 3 a matter of timing.)
    server = scripted({f"k{i}": [("gate", 3, 5.0)] for i in range(10)})
    results = engine_for(server.url, max_concurrency=3).generate([request(f"k{i}") for i in range(10)])
    assert all(r.error is None for r in results)
    assert server.max_in_flight == 3 and sum(server.answered.values()) == 10


def test_continue_prefill_round_trip(scripted):
    server = scripted()
    [res] = engine_for(server.url).generate([request("k", prefix="Kestavel")])
    assert res.text == " continues."
    assert server.bodies[0]["messages"][-1] == {"role": "assistant", "content": "Kestavel"}


def test_generate_works_inside_a_running_event_loop(scripted):
    server = scripted()
    engine = engine_for(server.url)

    async def caller():
        return engine.generate([request("a"), request("b")])

    assert [r.text for r in asyncio.run(caller())] == ["answer to a", "answer to b"]


# -- the API key ----------------------------------------------------------------------------------------
def test_api_key_is_sent_but_never_shown(scripted, monkeypatch, caplog):
    monkeypatch.setenv("RE_TEST_KEY", SECRET)
    server = scripted({"k400": [("quote_auth", 400)], "k401": [("quote_auth", 401)],
                       "k503": [("quote_auth", 503)]})  # retried: its message goes through the retry log too
    engine = engine_for(server.url, api_key_env="RE_TEST_KEY", max_retries=1)
    caplog.set_level(logging.DEBUG)
    results = engine.generate([request("k400"), request("k401"), request("k503")])
    assert set(server.auth_headers) == {f"Bearer {SECRET}"}
    assert all(r.error for r in results)
    for r in results:
        assert SECRET not in r.error
    assert "<redacted>" in results[0].error and "<redacted>" in results[2].error
    assert "gave up after 2 tries" in results[2].error and "retry 1/1" in caplog.text
    assert "RE_TEST_KEY" in results[1].error and "Fix" in results[1].error
    assert SECRET not in repr(engine) and "RE_TEST_KEY" in repr(engine)
    assert SECRET.encode() not in pickle.dumps(engine)
    assert SECRET not in caplog.text


def test_custom_headers_come_from_the_environment_and_are_never_shown(scripted, monkeypatch):
    monkeypatch.setenv("RE_GATEWAY", SECRET)
    server = scripted({"k": [("status", 400, {}, {"error": {"message": f"bad token {SECRET}"}})]})
    engine = engine_for(server.url, headers_from_env={"X-Gateway-Token": "RE_GATEWAY"})
    (result,) = engine.generate([request("k")])
    assert server.gateway_headers == [SECRET] and SECRET not in result.error and "<redacted>" in result.error
    assert SECRET not in repr(engine) and SECRET.encode() not in pickle.dumps(engine)
    monkeypatch.delenv("RE_GATEWAY")
    with pytest.raises(EngineError, match="RE_GATEWAY"):
        engine_for(server.url, headers_from_env={"X-Gateway-Token": "RE_GATEWAY"})
    for bad in ({"X-Cloud": "AWS_SECRET_ACCESS_KEY"}, {"Authorization": "RE_GATEWAY"}, {"Bad Header": "RE_GATEWAY"}):
        with pytest.raises(ValueError, match="headers_from_env"):
            OpenAIConfig(base_url=server.url, api_key_env=None, headers_from_env=bad)
    with pytest.raises(ValueError, match="plain HTTP to another machine"):
        OpenAIConfig(base_url="http://10.0.0.5:8000/v1", api_key_env=None, headers_from_env={"X-G": "RE_GATEWAY"})


def test_missing_key_remote_is_an_error_local_sends_none(scripted, monkeypatch, caplog):
    monkeypatch.delenv("RE_MISSING_KEY", raising=False)
    with pytest.raises(EngineError, match="RE_MISSING_KEY") as err:
        OpenAIEngine(OpenAIConfig(base_url="https://api.example.com/v1", api_key_env="RE_MISSING_KEY"), "m")
    assert "api_key_env=null" in str(err.value)
    server = scripted()
    with caplog.at_level(logging.WARNING):
        engine = engine_for(server.url, api_key_env="RE_MISSING_KEY")
    assert "RE_MISSING_KEY" in caplog.text and "no API key" in caplog.text
    [res] = engine.generate([request("k")])
    assert res.error is None and server.auth_headers == [None]


# -- config, tokens ---------------------------------------------------------------------------------------
def test_from_config(tmp_path):
    from ray_entigraph.config import load_config
    from ray_entigraph.engines import make_engine

    config = load_config(None, [
        f"output_dir={tmp_path}", "engine.kind=openai", "engine.openai.base_url=http://127.0.0.1:9/v1/",
        "engine.openai.api_key_env=null", "engine.openai.served_model=srv", "engine.openai.max_concurrency=3",
        "engine.openai.prefill=instruct", "engine.openai.extra_body={top_k: 5}",
    ])
    engine = make_engine(config)
    assert isinstance(engine, OpenAIEngine) and engine.supports_json_schema
    assert engine.openai == config.engine.openai  # the engine reads its settings from its config section
    assert engine.output_dir == config.output_dir  # where batch ids are recorded
    assert (engine.model_name, engine.base_url, engine.openai.max_concurrency, engine.openai.prefill) == (
        "srv", "http://127.0.0.1:9/v1", 3, "instruct")
    assert engine.openai.extra_body == {"top_k": 5}
    default = make_engine(load_config(None, [f"output_dir={tmp_path}", "engine.kind=openai",
                                             "engine.openai.api_key_env=null"]))
    assert default.model_name == config.model.name


def test_count_tokens_falls_back_to_characters(tmp_path):
    engine = OpenAIEngine(OpenAIConfig(api_key_env=None, tokenizer=str(tmp_path / "no-such-tokenizer")), "m")
    assert engine.count_tokens("x" * 40) == 11
    # without engine.openai.tokenizer the model's name is tried (here a folder that does not exist)
    by_model = OpenAIEngine(OpenAIConfig(api_key_env=None), str(tmp_path / "no-such-model"))
    assert by_model.count_tokens("abcd") == 2


# -- the batch API (a stand-in server, not a provider) -----------------------------------------------------
class BatchServer:
    """A stand-in for the batch API: /files (upload), /batches (create, poll), /files/{id}/content. Each
    input line gets a canned completion, except keys in `error_keys` (a 400 in the error file) and
    `missing_keys` (no answer at all). A batch completes on its third poll, unless `hold` keeps it in_progress;
    `answered` counts the answers it wrote per key, an unknown batch id answers 404."""

    def __init__(self, error_keys=(), missing_keys=()):
        self.files: dict[str, str] = {}
        self.batches: dict[str, dict] = {}
        self.uploads: list[dict] = []
        self.polls = 0
        self.hold = False
        self.answered: Counter = Counter()
        self.created: list[str] = []  # batch ids, in order of creation
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/v1/files":
                    head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
                    msg = email.message_from_bytes(head + raw, policy=email.policy.HTTP)
                    fields = {p.get_param("name", header="content-disposition"): p.get_content()
                              for p in msg.iter_parts()}
                    content = fields["file"].decode() if isinstance(fields["file"], bytes) else fields["file"]
                    server.uploads.append({"purpose": fields["purpose"].strip(), "content": content})
                    file_id = f"file-{len(server.files)}"
                    server.files[file_id] = content
                    return self.reply({"id": file_id, "object": "file", "purpose": "batch"})
                if self.path == "/v1/batches":
                    req = json.loads(raw)
                    batch = {"id": f"batch-{len(server.created)}", "object": "batch", "status": "validating",
                             "created_at": int(time.time()),
                             "input_file_id": req["input_file_id"], "endpoint": req["endpoint"],
                             "completion_window": req["completion_window"],
                             "request_counts": {"total": 0, "completed": 0, "failed": 0}}
                    server.batches[batch["id"]] = batch
                    server.created.append(batch["id"])
                    return self.reply(batch)
                self.reply({"error": {"message": "no such route"}}, 404)

            def do_GET(self):
                parts = self.path.strip("/").split("/")
                if parts[1] == "batches" and parts[2] not in server.batches:
                    return self.reply({"error": {"message": f"No batch found with id '{parts[2]}'"}}, 404)
                if parts[1] == "batches":
                    server.polls += 1
                    return self.reply(server.advance(server.batches[parts[2]]))
                if parts[1] == "files" and parts[-1] == "content":
                    data = server.files[parts[2]].encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    return self.wfile.write(data)
                self.reply({"error": {"message": "no such route"}}, 404)

            def reply(self, payload, code=200):
                ScriptedServer.send(self, code, {}, payload)

        self.error_keys, self.missing_keys = set(error_keys), set(missing_keys)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def advance(self, batch):
        lines = [json.loads(x) for x in self.files[batch["input_file_id"]].splitlines() if x.strip()]
        batch["request_counts"]["total"] = len(lines)
        if batch["status"] == "validating":
            batch["status"] = "in_progress"
        elif batch["status"] == "in_progress" and self.polls >= 3 and not self.hold:
            out, err = [], []
            for line in lines:
                key = line["custom_id"]
                if key in self.missing_keys:
                    continue
                if key in self.error_keys:
                    err.append({"id": "r", "custom_id": key, "error": None, "response": {
                        "status_code": 400, "body": {"error": {"message": f"bad request {key}"}}}})
                else:
                    body = completion(f"batch answer to {key} with {line['body']['model']}")
                    out.append({"id": "r", "custom_id": key, "error": None,
                                "response": {"status_code": 200, "body": body}})
                    self.answered[key] += 1
            self.files["file-out"] = "\n".join(json.dumps(x) for x in out) + "\n"
            self.files["file-err"] = "\n".join(json.dumps(x) for x in err) + "\n"
            batch.update(status="completed", output_file_id="file-out", error_file_id="file-err",
                         request_counts={"total": len(lines), "completed": len(out), "failed": len(err)})
        return batch

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_batch_api_round_trip():
    server = BatchServer(error_keys={"bad"}, missing_keys={"lost"})
    try:
        engine = engine_for(server.url, use_batch_api=True, batch_poll_s=0.05, batch_completion_window="24h")
        keys = ["a", "bad", "b", "lost", "a"]  # a duplicate key is sent once
        results = engine.generate([request(k, prefix="P" if k == "b" else "") for k in keys])
    finally:
        server.close()
    assert [r.key for r in results] == keys
    [upload] = server.uploads
    assert upload["purpose"] == "batch"
    lines = [json.loads(x) for x in upload["content"].splitlines()]
    assert [x["custom_id"] for x in lines] == ["a", "bad", "b", "lost"]
    assert all(x["method"] == "POST" and x["url"] == "/v1/chat/completions" and x["body"]["model"] == "served-model"
               for x in lines)
    assert lines[2]["body"]["continue_final_message"] is True
    [batch] = server.batches.values()
    assert batch["endpoint"] == "/v1/chat/completions" and batch["completion_window"] == "24h"
    a, bad, b, lost, a2 = results
    assert a.text == "batch answer to a with served-model" and a.num_prompt_tokens == 11 and a.num_cached_tokens == 3
    assert a2.text == a.text and b.error is None
    assert "HTTP 400" in bad.error and "bad request bad" in bad.error
    assert "batch-0" in lost.error and "completed" in lost.error and "without an answer" in lost.error
    assert server.polls >= 3


def test_batch_api_upload_failure_fails_every_request(scripted):
    server = scripted()  # answers 404 for /files: no batch API there
    [res] = engine_for(server.url, use_batch_api=True).generate([request("k")])
    assert res.error and "uploading the requests failed" in res.error and "HTTP 404" in res.error


def test_batch_unit_id_is_the_same_for_the_same_requests():
    bodies = {"a": {"model": "m", "seed": 1}, "b": {"model": "m", "seed": 2}}
    assert batch_unit_id(bodies) == batch_unit_id(dict(reversed(bodies.items())))
    assert batch_unit_id(bodies) != batch_unit_id({**bodies, "b": {"model": "m", "seed": 3}})
    assert batch_unit_id(bodies) != batch_unit_id({"a": bodies["a"]})


def batch_records(output_dir):
    return sorted((output_dir / "_batches").glob("*.json"))


@pytest.mark.timeout(30)
def test_batch_api_killed_job_reattaches_on_rerun(tmp_path):
    keys = ["a", "b", "c"]
    server = BatchServer()
    server.hold = True  # the batch stays in_progress until the job is "killed"
    try:
        first = engine_for(server.url, str(tmp_path), use_batch_api=True, batch_poll_s=0.05)

        async def killed():
            task = asyncio.create_task(first._generate_batch_api([request(k) for k in keys]))
            while not batch_records(tmp_path) and not task.done():  # created and recorded: kill it
                await asyncio.sleep(0.01)
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(killed())
        [record] = batch_records(tmp_path)
        saved = json.loads(record.read_text())
        assert (saved["batch_id"], saved["input_file_id"], saved["num_requests"], saved["base_url"]) == (
            "batch-0", "file-0", 3, server.url)
        assert saved["created_at"] == server.batches["batch-0"]["created_at"]
        server.hold = False
        rerun = engine_for(server.url, str(tmp_path), use_batch_api=True, batch_poll_s=0.05)
        results = rerun.generate([request(k) for k in reversed(keys)])  # the same requests in another order
    finally:
        server.close()
    assert len(server.uploads) == 1 and server.created == ["batch-0"]  # paid once
    assert [r.text for r in results] == [f"batch answer to {k} with served-model" for k in reversed(keys)]
    assert server.answered == Counter(keys)
    assert batch_records(tmp_path) == []  # forgotten once downloaded


@pytest.mark.timeout(30)
def test_batch_api_deadline_fails_every_request_and_keeps_the_record(tmp_path):
    server = BatchServer()
    server.hold = True  # never completes (a deadline of 26 h would outlast the test's timeout)
    try:
        engine = engine_for(server.url, str(tmp_path), use_batch_api=True, batch_poll_s=0.05, batch_deadline_s=1.0)
        started = time.monotonic()
        results = engine.generate([request("a"), request("b")])
        elapsed = time.monotonic() - started
        [record] = batch_records(tmp_path)
        # the reason's promise: a re-run (here with a longer deadline) re-attaches instead of paying again
        server.hold = False
        rerun = engine_for(server.url, str(tmp_path), use_batch_api=True, batch_poll_s=0.05, batch_deadline_s=60.0)
        again = rerun.generate([request("a"), request("b")])
    finally:
        server.close()
    assert elapsed < 6.0
    for res in results:
        assert res.finish_reason == "error" and "batch-0" in res.error
        # a loaded machine may reach the deadline before the stand-in's first poll moves it past "validating"
        assert "last status 'in_progress'" in res.error or "last status 'validating'" in res.error
        assert "batch_deadline_s=1s" in res.error and str(record) in res.error and "re-attaches" in res.error
    assert [r.error for r in again] == [None, None] and len(server.uploads) == 1 and server.created == ["batch-0"]
    assert server.answered == Counter(["a", "b"]) and batch_records(tmp_path) == []


@pytest.mark.timeout(30)
@pytest.mark.parametrize("fate", ["failed", "expired", "cancelled", "gone"])
def test_batch_api_record_of_a_dead_batch_leads_to_a_new_submission(tmp_path, fate, caplog):
    server = BatchServer()
    server.hold = True
    try:
        short = engine_for(server.url, str(tmp_path), use_batch_api=True, batch_poll_s=0.05, batch_deadline_s=0.2)
        [res] = short.generate([request("a")])
        assert "batch-0" in res.error and len(batch_records(tmp_path)) == 1
        if fate == "gone":  # the server no longer knows it: 404
            del server.batches["batch-0"]
        else:
            server.batches["batch-0"]["status"] = fate
        server.hold = False
        with caplog.at_level(logging.WARNING):
            [res] = engine_for(server.url, str(tmp_path), use_batch_api=True, batch_poll_s=0.05).generate(
                [request("a")])
    finally:
        server.close()
    assert res.error is None and res.text == "batch answer to a with served-model"
    assert len(server.uploads) == 2 and server.uploads[0]["content"] == server.uploads[1]["content"]
    assert server.created == ["batch-0", "batch-1"] and server.answered == Counter(["a"])
    assert batch_records(tmp_path) == []
    assert ("is unknown to" if fate == "gone" else f"ended '{fate}'") in caplog.text and "anew" in caplog.text
