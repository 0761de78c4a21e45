"""serve/engine.py on the tiny Llama: batching, stop strings, cancellation, queue bounds, constraints."""

from __future__ import annotations

import json
import queue
import time

import pytest
from conftest import slow_steps

from tasktune.config.schema import ConfigError
from tasktune.serve.engine import (
    Engine,
    EngineClosedError,
    EngineError,
    PromptTooLongError,
    QueueFullError,
    Result,
    SamplingParams,
    UnknownModelError,
    constraint_spec,
    parse_adapter_specs,
)

HELLO = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def engine(tiny_llama_dir, tiny_adapter_dir):
    engine = Engine(str(tiny_llama_dir), {"a": str(tiny_adapter_dir)}, max_queue=8, max_batch=4)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def engine_fp32(tiny_llama_dir, tiny_adapter_dir):
    """The same engine in float32: replies computed from cached columns equal those prefilled whole (in bf16, a
    near tie of the random tiny model could go either way, as between batch sizes)."""
    engine = Engine(str(tiny_llama_dir), {"a": str(tiny_adapter_dir)}, dtype="float32", max_queue=8, max_batch=4)
    yield engine
    engine.close()


def submit(engine: Engine, messages: list[dict], model: str | None = "a", stream: bool = False,
           **params) -> queue.Queue:
    events: queue.Queue = queue.Queue()
    engine.submit(model, engine.render_chat(messages, model), SamplingParams(**params), events.put, stream)
    return events


def wait_until_running(engine: Engine, timeout: float = 10.0) -> None:
    """Wait until the worker took the one queued job (nothing waiting, one running)."""
    deadline = time.monotonic() + timeout
    while engine.queue_depth() != (0, 1):
        assert time.monotonic() < deadline, engine.queue_depth()
        time.sleep(0.005)


def final(events: queue.Queue, timeout: float = 60.0) -> tuple[list[str], Result]:
    deltas = []
    while True:
        event = events.get(timeout=timeout)
        if isinstance(event, Result):
            return deltas, event
        assert not isinstance(event, BaseException), event
        deltas.append(event)


def test_parse_adapter_specs_names_bare_dirs_after_their_folder():
    assert parse_adapter_specs(["ner=/x/y", "/runs/sst2", "/runs/qa/adapter/"]) == {
        "ner": "/x/y", "sst2": "/runs/sst2", "qa": "/runs/qa/adapter/"}
    assert parse_adapter_specs(None) == {}
    with pytest.raises(ConfigError, match="twice"):
        parse_adapter_specs(["/a/run", "/b/run"])
    with pytest.raises(ConfigError, match="NAME=DIR"):
        parse_adapter_specs(["=/x"])


def test_models_and_resolve(engine, tiny_llama_dir):
    assert engine.models == [str(tiny_llama_dir), "a"]
    assert engine.resolve("base") == engine.resolve(None) == str(tiny_llama_dir)
    with pytest.raises(UnknownModelError, match="'nope' does not exist"):
        engine.resolve("nope")


def test_adapters_decode_through_the_lean_forward_with_the_replies_of_tasktune_eval(engine, tiny_llama_dir,
                                                                                     tiny_adapter_dir):
    """The engine's peft model runs model/lean.py with each row's adapter; the reply is the one of the adapter
    folded as `tasktune eval` folds it (model/fold.py), and the base model's the plain model's."""
    import torch

    from tasktune.config.schema import ModelConfig
    from tasktune.model.fold import fold_adapter
    from tasktune.model.generate import chat_once
    from tasktune.model.load import load_model, load_tokenizer

    assert engine._decoder._lean is not None and engine._decoder._lean.adapters == {"adapter0"}
    dtype = next(engine.model.parameters()).dtype
    for name, adapter in (("a", tiny_adapter_dir), ("base", None)):
        cfg = ModelConfig(name_or_path=str(tiny_llama_dir), adapter=str(adapter) if adapter else None)
        model = load_model(cfg, dtype)
        model = fold_adapter(model)[0] if adapter else model
        with torch.inference_mode():
            expected = chat_once(model, load_tokenizer(cfg), HELLO, max_new_tokens=10)
        assert engine.chat(HELLO, name, max_new_tokens=10).text == expected, name


def test_chats_share_the_templates_opening_and_other_system_prompts_still_work(engine_fp32):
    """The decoder encodes the template's default opening once; a chat with its own system message does not
    start with it and prefills whole. Both reply as a decoder without any prefix does."""
    from tasktune.model.decode import Decoder, Request

    engine = engine_fp32

    prefix = engine.prefix_ids
    assert len(prefix) > 3 and engine._decoder.prefix_ids == prefix
    custom = [{"role": "system", "content": "You answer in French."}, *HELLO]
    assert engine.render_chat(HELLO)[:len(prefix)] == prefix and engine.render_chat(custom)[:len(prefix)] != prefix
    for messages in (HELLO, custom):
        ids = engine.render_chat(messages, "a")
        plain = Decoder(engine.model, sorted(engine.stop_ids), engine.pad_id)
        request = Request(ids, 10, adapter="adapter0")
        plain.run([request])
        expected = engine.tokenizers["a"].decode(request.generated, skip_special_tokens=True)
        assert engine.chat(messages, "a", max_new_tokens=10).text == expected


def test_a_conversations_next_turn_starts_from_the_previous_turns_cache(engine_fp32):
    """The second turn of a chat (history + reply + new message) prefills only what follows the first turn's
    cached prompt and reply, and replies as a decoder without any cache does."""
    from tasktune.model.decode import Decoder, Request

    engine = engine_fp32

    store = engine._decoder.store
    assert store.budget > 0
    history = [{"role": "user", "content": "Name a colour."}]
    first = engine.chat(history, "a", max_new_tokens=8)
    history += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And another one?"}]
    hits, reused = store.hits, store.reused
    second = engine.chat(history, "a", max_new_tokens=8)
    ids = engine.render_chat(history, "a")
    assert store.hits == hits + 1 and store.reused - reused > len(engine.render_chat(history[:1], "a"))
    plain = Decoder(engine.model, sorted(engine.stop_ids), engine.pad_id)
    request = Request(ids, 8, adapter="adapter0")
    plain.run([request])
    assert second.text == engine.tokenizers["a"].decode(request.generated, skip_special_tokens=True)


def test_stream_reassembles_to_the_whole_reply_and_counts_tokens(engine):
    result = engine.chat(HELLO, "a", max_new_tokens=8)
    pieces = list(engine.stream_chat(HELLO, "a", max_new_tokens=8))
    assert len(pieces) > 1
    assert "".join(pieces) == result.text
    assert (result.completion_tokens, result.finish_reason) == (8, "length")
    assert result.prompt_tokens == len(engine.render_chat(HELLO, "a"))


def test_waiting_requests_join_the_running_batch_with_unchanged_greedy_text(engine):
    prompts = [[{"role": "user", "content": text}] for text in ("Hi", "What is the capital of France?", "A story")]
    alone = [engine.chat(messages, "a", max_new_tokens=6).text for messages in prompts]
    batches = engine.stats["batches"]
    with slow_steps(engine.model, 0.02):
        blocker = submit(engine, HELLO, max_new_tokens=30)  # still running when the others arrive
        wait_until_running(engine)
        waiting = [submit(engine, messages, max_new_tokens=6) for messages in prompts]
        together = [final(events)[1].text for events in waiting]
        final(blocker)
    assert together == alone
    # continuous batching: the three join the blocker's batch in one admission instead of waiting for it
    assert engine.stats["largest_batch"] == 4
    assert engine.stats["batches"] == batches + 2


def test_stop_string_cuts_the_text_and_is_never_streamed(engine):
    full = engine.chat(HELLO, "a", max_new_tokens=8).text
    stop = full.strip()[3:6]
    deltas, result = final(submit(engine, HELLO, stream=True, max_new_tokens=8, stop=[stop]))
    assert result.text == full[: full.index(stop)]
    assert "".join(deltas) == result.text
    assert result.finish_reason == "stop"


def test_cancel_stops_a_running_generation(engine):
    cancelled = engine.stats["cancelled"]
    with slow_steps(engine.model, 0.02):
        events: queue.Queue = queue.Queue()
        job = engine.submit("a", engine.render_chat(HELLO, "a"), SamplingParams(max_new_tokens=500), events.put,
                            stream=True)
        assert isinstance(events.get(timeout=30), str)
        engine.cancel(job)
        _, result = final(events, timeout=10)
    assert result.finish_reason == "cancelled"
    assert result.completion_tokens < 100
    assert engine.stats["cancelled"] == cancelled + 1


def test_full_queue_refuses_and_a_cancelled_waiting_job_frees_its_place(engine, monkeypatch):
    monkeypatch.setattr(engine, "max_queue", 1)
    with slow_steps(engine.model, 0.02):
        running = submit(engine, HELLO, max_new_tokens=20)
        wait_until_running(engine)
        events: queue.Queue = queue.Queue()
        waiting = engine.submit("a", engine.render_chat(HELLO, "a"), SamplingParams(max_new_tokens=2), events.put)
        with pytest.raises(QueueFullError, match="queue is full"):
            submit(engine, HELLO, max_new_tokens=2)
        engine.cancel(waiting)
        assert final(events)[1].finish_reason == "cancelled"
        final(submit(engine, HELLO, max_new_tokens=2))
        final(running)


def test_token_limits_against_the_context(engine):
    assert engine.context_length == 2048
    with pytest.raises(PromptTooLongError, match="context is 2048"):
        engine.submit("a", [1] * 2048, SamplingParams(), print)
    with pytest.raises(PromptTooLongError, match="plus max_tokens"):
        engine.submit("a", [1] * 2000, SamplingParams(max_new_tokens=100), print)


def test_json_schema_response_format_gives_matching_json(engine):
    schema = {"type": "object", "properties": {"label": {"type": "string", "enum": ["yes", "no"]}},
              "required": ["label"], "additionalProperties": False}
    result = engine.chat(HELLO, "a", max_new_tokens=30,
                         response_format={"type": "json_schema", "json_schema": {"schema": schema}})
    assert json.loads(result.text)["label"] in ("yes", "no")
    assert result.finish_reason == "stop"
    choice = engine.chat(HELLO, None, max_new_tokens=10, response_format={"type": "choice", "choices": ["up", "down"]})
    assert choice.text in ("up", "down")


def test_constraint_spec_and_bad_schemas():
    assert constraint_spec(None) is None and constraint_spec({"type": "text"}) is None
    assert constraint_spec({"type": "json_object"}) == {"type": "json_schema", "schema": {"type": "object"}}
    with pytest.raises(EngineError, match="expected text"):
        constraint_spec({"type": "xml"})


def test_bad_schema_is_refused_at_submit(engine):
    with pytest.raises(EngineError, match="response_format"):
        submit(engine, HELLO, response_format={"type": "json_schema", "json_schema": {"schema": {"type": "bogus"}}})


def test_closed_engine_refuses_and_fails_waiting_jobs(tiny_llama_dir):
    engine = Engine(str(tiny_llama_dir), max_queue=4, max_batch=1)
    with slow_steps(engine.model, 0.02):
        running = submit(engine, HELLO, model=None, max_new_tokens=200)
        wait_until_running(engine)
        waiting = submit(engine, HELLO, model=None, max_new_tokens=2)
        engine.close()
    assert isinstance(waiting.get(timeout=10), EngineClosedError)
    assert final(running)[1].finish_reason == "cancelled"
    with pytest.raises(EngineClosedError):
        submit(engine, HELLO, model=None)
