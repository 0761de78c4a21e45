"""serve/api.py through the official openai client: a server on a free loopback port, tiny Llama, two adapters."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from conftest import make_tiny_adapter, slow_steps

from tasktune.serve.api import BackgroundServer, create_app
from tasktune.serve.engine import Engine

KEY = "test-key"
HELLO = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def adapter_b_dir(tmp_path_factory, tiny_llama_dir) -> Path:
    return make_tiny_adapter(tiny_llama_dir, tmp_path_factory.mktemp("tiny_run_b"), seed=2)


@pytest.fixture(scope="module")
def engine(tiny_llama_dir, tiny_adapter_dir, adapter_b_dir):
    # float32: greedy text of a random tiny model is compared exactly with a direct peft model below
    engine = Engine(str(tiny_llama_dir), {"a": str(tiny_adapter_dir), "b": str(adapter_b_dir)}, dtype="float32")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def server(engine):
    with BackgroundServer(create_app(engine, api_key=KEY)) as server:
        yield server


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


def greedy(client: openai.OpenAI, model: str, **kwargs):
    return client.chat.completions.create(model=model, messages=HELLO, max_tokens=8, temperature=0, **kwargs)


def test_models_lists_the_base_model_and_the_adapters(client, tiny_llama_dir):
    assert [m.id for m in client.models.list()] == [str(tiny_llama_dir), "a", "b"]
    assert client.models.retrieve("b").parent == str(tiny_llama_dir)


def test_each_model_name_gives_its_own_greedy_text_equal_to_direct_peft(client, tiny_llama_dir, tiny_adapter_dir,
                                                                        adapter_b_dir):
    from tasktune.config.schema import ModelConfig
    from tasktune.model.generate import chat_once
    from tasktune.model.load import load_model, load_tokenizer

    served = {name: greedy(client, name).choices[0].message.content for name in ("base", "a", "b")}
    assert len(set(served.values())) == 3
    for name, adapter in (("base", None), ("a", tiny_adapter_dir), ("b", adapter_b_dir)):
        cfg = ModelConfig(name_or_path=str(tiny_llama_dir), adapter=str(adapter) if adapter else None)
        direct = chat_once(load_model(cfg), load_tokenizer(cfg, "left"), HELLO, max_new_tokens=8)
        assert served[name] == direct, name
    assert greedy(client, str(tiny_llama_dir)).choices[0].message.content == served["base"]


def test_chat_completion_shape_and_usage(client, engine):
    reply = greedy(client, "a")
    assert reply.object == "chat.completion" and reply.model == "a"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "length"
    prompt_tokens = len(engine.render_chat(HELLO, "a"))
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (
        prompt_tokens, 8, prompt_tokens + 8)


def test_streamed_chunks_reassemble_to_the_greedy_text(client):
    whole = greedy(client, "b").choices[0].message.content
    chunks = list(greedy(client, "b", stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8


def test_raw_stream_is_sse_ending_with_done(server):
    body = {"model": "a", "messages": HELLO, "max_tokens": 3, "stream": True, "temperature": 0}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {KEY}"}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


def test_completions_plain_and_streamed(client):
    whole = client.completions.create(model="a", prompt="Once upon a time", max_tokens=6, temperature=0)
    assert whole.object == "text_completion" and whole.usage.completion_tokens == 6
    chunks = list(client.completions.create(model="a", prompt="Once upon a time", max_tokens=6, temperature=0,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stop_seed_and_response_format(client):
    full = greedy(client, "a").choices[0].message.content
    stop = full.strip()[2:5]
    cut = greedy(client, "a", stop=[stop])
    assert cut.choices[0].message.content == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    sampled = [client.chat.completions.create(model="a", messages=HELLO, max_tokens=8, temperature=1.0,
                                              seed=7).choices[0].message.content for _ in range(2)]
    assert sampled[0] == sampled[1]
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    reply = greedy(client, "b", max_completion_tokens=20,
                   response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert isinstance(json.loads(reply.choices[0].message.content)["ok"], bool)


def test_api_key_is_required(server, client):
    for key in (None, "wrong"):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = httpx.get(f"{server.url}/v1/models", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="a", messages=HELLO, max_tokens=2)
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"


def test_unknown_model_is_a_404_in_openai_format(client):
    with pytest.raises(openai.NotFoundError) as err:
        greedy(client, "nope")
    assert err.value.body["code"] == "model_not_found"
    assert set(err.value.body) == {"message", "type", "param", "code"}


BAD_BODIES = {
    "not json": b"{not json",
    "json list": b"[1, 2]",
    "messages not a list": {"model": "a", "messages": "hi"},
    "no messages": {"model": "a", "messages": []},
    "bad role": {"model": "a", "messages": [{"role": "robot", "content": "hi"}]},
    "negative max_tokens": {"model": "a", "messages": HELLO, "max_tokens": -5},
    "max_tokens as text": {"model": "a", "messages": HELLO, "max_tokens": "lots"},
    "n=2": {"model": "a", "messages": HELLO, "n": 2},
    "temperature 5": {"model": "a", "messages": HELLO, "temperature": 5},
    "five stops": {"model": "a", "messages": HELLO, "stop": ["a", "b", "c", "d", "e"]},
    "tools": {"model": "a", "messages": HELLO, "tools": [{"type": "function"}]},
    "prompt over context": {"model": "a", "messages": [{"role": "user", "content": "hello " * 2100}]},
    "max_tokens over context": {"model": "a", "messages": HELLO, "max_tokens": 5000},
    "schema missing": {"model": "a", "messages": HELLO, "response_format": {"type": "json_schema"}},
    "bad schema": {"model": "a", "messages": HELLO,
                   "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "bogus"}}}},
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_bad_requests_are_400_with_a_message(server, name):
    body, headers = BAD_BODIES[name], {"Authorization": f"Bearer {KEY}"}
    url = f"{server.url}/v1/chat/completions"
    if isinstance(body, bytes):
        response = httpx.post(url, content=body, headers={**headers, "Content-Type": "application/json"}, timeout=60)
    else:
        response = httpx.post(url, json=body, headers=headers, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]


def test_completion_with_two_prompts_is_400(client):
    with pytest.raises(openai.BadRequestError, match="exactly one prompt"):
        client.completions.create(model="a", prompt=["one", "two"], max_tokens=2)


def test_oversized_body_is_413(server):
    response = httpx.post(f"{server.url}/v1/chat/completions", content=b"x" * (5 * 1024 * 1024),
                          headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert response.status_code == 413 and "error" in response.json()


@pytest.fixture()
def small_server(tiny_llama_dir):
    engine = Engine(str(tiny_llama_dir), max_queue=1, max_batch=1)
    with BackgroundServer(create_app(engine)) as server:
        yield server, engine
    engine.close()


def test_overload_gets_429_never_500_and_closing_gets_503(small_server):
    server, engine = small_server
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=60)
    statuses: list[int] = []

    def one_request() -> None:
        try:
            client.chat.completions.create(model="base", messages=HELLO, max_tokens=10, temperature=0)
            statuses.append(200)
        except openai.APIStatusError as err:
            statuses.append(err.status_code)

    with slow_steps(engine.model, 0.05):
        threads = [threading.Thread(target=one_request) for _ in range(6)]
        for thread in threads:
            thread.start()
            time.sleep(0.02)
        for thread in threads:
            thread.join(60)
    assert len(statuses) == 6 and set(statuses) <= {200, 429}
    assert statuses.count(429) >= 1 and statuses.count(200) >= 2
    engine.close()
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model="base", messages=HELLO, max_tokens=2)
    assert err.value.status_code == 503
    assert httpx.get(f"{server.url}/health").status_code == 503


def test_client_disconnect_cancels_the_generation(small_server):
    server, engine = small_server
    body = {"model": "base", "messages": HELLO, "max_tokens": 400, "temperature": 0}
    with slow_steps(engine.model, 0.02):
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json={**body, "stream": True},
                          timeout=60) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
        with pytest.raises(httpx.ReadTimeout):  # a non-streaming client that gives up
            httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=1.0)
        deadline = time.monotonic() + 10
        while engine.stats["cancelled"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert engine.stats["cancelled"] == 2
    assert engine.stats["completion_tokens"] < 200


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cli_api_serves_until_interrupted(tiny_llama_dir, tiny_adapter_dir):
    port = _free_port()
    env = {**os.environ, "TASKTUNE_API_KEY": KEY}
    command = [sys.executable, "-m", "tasktune.cli", "api", "--model", str(tiny_llama_dir), "--adapter",
               f"mine={tiny_adapter_dir}", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, models = time.monotonic() + 120, None
        while models is None and time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2,
                                   headers={"Authorization": f"Bearer {KEY}"}).json()
            time.sleep(0.2)
        assert models and [m["id"] for m in models["data"]] == [str(tiny_llama_dir), "mine"]
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).status_code == 401
    finally:
        process.send_signal(2)  # SIGINT, as Ctrl-C
        output = process.communicate(timeout=30)[0]
    assert process.returncode == 0, output
