"""The API under bad and hostile requests: 4xx in OpenAI's error format, never a 5xx, the server stays healthy."""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasktune.serve.api import MAX_BODY_BYTES, BackgroundServer, create_app
from tasktune.serve.engine import Engine

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HELLO = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def engine(tiny_llama_dir):
    engine = Engine(str(tiny_llama_dir), default_max_tokens=4)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def http(engine):
    with BackgroundServer(create_app(engine)) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def _is_openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    return error


def test_chunked_body_over_the_limit_is_refused_while_streaming_in(http):
    sent = []

    def chunks():
        for _ in range(8):
            sent.append(1)
            yield b"x" * (1024 * 1024)

    response = http.post(CHAT, content=chunks(), headers={"content-type": "application/json"})
    error = _is_openai_error(response, 413)
    assert error["code"] == "body_too_large"
    assert http.get("/health").status_code == 200


def test_content_length_over_the_limit_is_refused(http):
    response = http.post(CHAT, content=b" " * (MAX_BODY_BYTES + 1), headers={"content-type": "application/json"})
    _is_openai_error(response, 413)


def test_tokenisation_runs_off_the_event_loop(http, engine, monkeypatch):
    """While a prompt is being tokenised, /health still answers (the tokenizer is held on purpose)."""
    entered, release = threading.Event(), threading.Event()
    real_encode = engine.encode

    def held_encode(text, model=None):
        entered.set()
        release.wait(30)
        return real_encode(text, model)

    monkeypatch.setattr(engine, "encode", held_encode)
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault(
        "r", http.post(COMPLETIONS, json={"model": "base", "prompt": "long " * 500, "max_tokens": 1})))
    worker.start()
    try:
        assert entered.wait(30)
        assert http.get("/health").status_code == 200  # answered while encode is still running
    finally:
        release.set()
        worker.join(60)
    assert result["r"].status_code == 200


def test_json_schema_with_a_ref_that_does_not_resolve_is_a_400(http):
    schema = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}, "required": ["a"]}
    body = {"model": "base", "messages": HELLO, "max_tokens": 4,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}
    error = _is_openai_error(http.post(CHAT, json=body), 400)
    assert "$ref" in error["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_seed_beyond_64_bits_is_a_400_streaming_or_not(http, stream):
    body = {"model": "base", "messages": HELLO, "max_tokens": 2, "seed": 2**64 + 1, "stream": stream}
    error = _is_openai_error(http.post(CHAT, json=body), 400)
    assert error["param"] == "seed"


def test_lone_surrogate_in_a_completions_prompt_is_a_400(http):
    raw = '{"model": "base", "prompt": "abc \\ud800 def", "max_tokens": 2}'
    error = _is_openai_error(http.post(COMPLETIONS, content=raw, headers={"content-type": "application/json"}), 400)
    assert "surrogate" in error["message"]


def test_constraint_building_failure_is_a_400(http, engine, monkeypatch):
    def broken(*_args, **_kwargs):
        raise ValueError("the schema parser gave up")

    monkeypatch.setattr(engine, "submit", lambda *a, **k: broken() if a[2].response_format else None)
    body = {"model": "base", "messages": HELLO, "max_tokens": 2, "response_format": {"type": "json_object"}}
    error = _is_openai_error(http.post(CHAT, json=body), 400)
    assert "schema parser" in error["message"]


# ---- fuzzing -----------------------------------------------------------------------------------------------

_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                     st.floats(allow_nan=False), st.text(max_size=20))
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8),
                                                                                          inner, max_size=3),
                     max_leaves=8)
_message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "developer", "tool", 3]),
                                  "content": st.one_of(st.text(max_size=30), _json)})
_schema = st.one_of(
    _json,
    st.fixed_dictionaries({"type": st.sampled_from(["object", "string", "array", "integer", "nope"]),
                           "properties": st.dictionaries(st.text(max_size=5), st.one_of(
                               st.just({"type": "string"}), st.just({"$ref": "#/$defs/a"}),
                               st.just({"$ref": "http://example.invalid/s.json"}), _json), max_size=2),
                           "$defs": st.one_of(st.just({"a": {"type": "integer"}}), _json)}),
)
_fields = {
    "model": st.one_of(st.just("base"), st.text(max_size=10), _json),
    "messages": st.one_of(st.lists(_message, min_size=1, max_size=3), _json),
    "prompt": st.one_of(st.text(max_size=40), st.lists(st.text(max_size=10), max_size=2), _json),
    "max_tokens": st.one_of(st.integers(min_value=-3, max_value=4), st.integers(min_value=10**6, max_value=2**70),
                            _json),
    "temperature": st.one_of(st.floats(min_value=-1, max_value=3), _json),
    "top_p": st.one_of(st.floats(min_value=-1, max_value=2), _json),
    "seed": st.one_of(st.integers(min_value=-(2**70), max_value=2**70), _json),
    "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=6), _json),
    "stream": st.one_of(st.booleans(), _json),
    "n": st.one_of(st.integers(min_value=-1, max_value=3), _json),
    "response_format": st.one_of(
        _json,
        st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object", "json_schema", "choice", "x"]),
                               "json_schema": st.fixed_dictionaries({"schema": _schema}),
                               "choices": st.one_of(st.lists(st.text(max_size=6), max_size=3), _json)})),
}
_body = st.one_of(
    st.fixed_dictionaries({}, optional=_fields).map(lambda b: {**b, "max_tokens": 2} if "max_tokens" not in b
                                                    else b),
    _json,
)


def _surrogates(text: str) -> str:
    return text.replace("a", "\\ud800", 1)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(path=st.sampled_from([CHAT, COMPLETIONS]), body=_body, raw_escape=st.booleans())
def test_fuzzed_bodies_never_get_a_5xx(http, path, body, raw_escape):
    content = json.dumps(body)
    if raw_escape:
        content = _surrogates(content)  # a lone surrogate escape somewhere in the JSON text
    response = http.post(path, content=content.encode(), headers={"content-type": "application/json"})
    assert response.status_code < 500, (response.status_code, response.text[:500], content[:500])
    if response.status_code >= 400:
        assert response.json()["error"]["message"]
    elif "text/event-stream" in response.headers.get("content-type", ""):
        assert '"code":"internal_error"' not in response.text and "generation failed" not in response.text
    assert http.get("/health").status_code == 200
