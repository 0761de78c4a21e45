"""serve/vllm_engine.py's plumbing against a stand-in `vllm` module (vLLM itself needs a CUDA GPU): adapters
become LoRA requests of one engine, new tokens stream through the shared rows (stop strings abort the
request), limits and response_format reach vLLM's sampling parameters, and the API serves it unchanged.
The real vLLM is exercised by tests/integration/test_vllm_backend.py where a GPU is present."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import openai
import pytest

from tasktune.serve.api import BackgroundServer, create_app

HELLO = [{"role": "user", "content": "Hello there"}]


class FakeLLMEngine:
    """Answers every request with the tokens of "reply from NAME to N tokens" (NAME: the LoRA request's name or
    base; N: the prompt's length), or the first label of a choice constraint, then end of turn; one token per step."""

    created: list[FakeLLMEngine] = []

    def __init__(self, args):
        from transformers import AutoTokenizer

        self.args = args
        self.tokenizer = AutoTokenizer.from_pretrained(args.model)
        self.requests: dict[str, dict] = {}
        self.aborted: list[str] = []
        FakeLLMEngine.created.append(self)

    @classmethod
    def from_engine_args(cls, args):
        return cls(args)

    def add_request(self, request_id, prompt, params, lora_request=None):
        choice = getattr(params.kwargs.get("structured_outputs"), "kwargs", {}).get("choice")
        name = lora_request.lora_name if lora_request else "base"
        text = choice[0] if choice else f"reply from {name} to {len(prompt['prompt_token_ids'])} tokens"
        script = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        script.append(self.tokenizer.convert_tokens_to_ids("<|im_end|>"))
        self.requests[request_id] = {"script": script, "out": [], "params": params, "lora": lora_request}

    def step(self):
        outputs = []
        for request_id, r in list(self.requests.items()):
            r["out"].append(r["script"][len(r["out"])])
            done_script = len(r["out"]) == len(r["script"])
            at_limit = len(r["out"]) >= r["params"].kwargs["max_tokens"]
            reason = "stop" if done_script else "length" if at_limit else None
            outputs.append(SimpleNamespace(request_id=request_id, finished=reason is not None,
                                           outputs=[SimpleNamespace(token_ids=list(r["out"]), finish_reason=reason)]))
            if reason:
                del self.requests[request_id]
        return outputs

    def abort_request(self, request_ids):
        for request_id in request_ids:
            self.aborted.append(request_id)
            self.requests.pop(request_id, None)


class Params:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


@pytest.fixture(scope="module")
def fake_vllm():
    vllm = types.ModuleType("vllm")
    vllm.EngineArgs = lambda **kwargs: SimpleNamespace(**kwargs)
    vllm.LLMEngine = FakeLLMEngine
    vllm.SamplingParams = Params
    lora, request, sampling = (types.ModuleType(f"vllm.{n}") for n in ("lora", "lora.request", "sampling_params"))
    request.LoRARequest = lambda name, index, path: SimpleNamespace(lora_name=name, lora_int_id=index, lora_path=path)
    sampling.StructuredOutputsParams = Params
    with pytest.MonkeyPatch.context() as patch:
        for name, module in (("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", request),
                             ("vllm.sampling_params", sampling)):
            patch.setitem(sys.modules, name, module)
        yield vllm


@pytest.fixture(scope="module")
def engine(fake_vllm, tiny_llama_dir, tiny_adapter_dir):
    from tasktune.serve.vllm_engine import VllmEngine

    engine = VllmEngine(str(tiny_llama_dir), {"a": str(tiny_adapter_dir)}, max_batch=4)
    yield engine
    engine.close()


def prompt_length(engine) -> int:
    return len(engine.render_chat(HELLO))


def test_adapters_are_lora_requests_of_one_engine(engine, tiny_llama_dir, tiny_adapter_dir):
    fake = FakeLLMEngine.created[-1]
    assert fake.args.model == str(tiny_llama_dir) and fake.args.max_num_seqs == 4
    assert fake.args.enable_lora and fake.args.max_loras == 1 and fake.args.max_lora_rank == 8  # the tiny adapter: r 4
    assert engine.models == [str(tiny_llama_dir), "a"]
    n = prompt_length(engine)
    base, tuned = engine.chat(HELLO), engine.chat(HELLO, model="a")
    assert base.text == f"reply from base to {n} tokens" and tuned.text == f"reply from a to {n} tokens"
    assert base.finish_reason == "stop" and base.prompt_tokens == n
    assert base.completion_tokens == len(fake.tokenizer(base.text, add_special_tokens=False)["input_ids"])
    assert engine.stats["completed"] == 2 and engine.queue_depth() == (0, 0)


def test_streaming_stop_strings_and_limits(engine):
    fake = FakeLLMEngine.created[-1]
    whole = engine.chat(HELLO).text
    assert "".join(engine.stream_chat(HELLO)) == whole
    aborted = len(fake.aborted)
    cut = engine.chat(HELLO, stop=[" to "])
    assert cut.text == "reply from base" and cut.finish_reason == "stop"
    assert len(fake.aborted) == aborted + 1  # the stop string ended the request inside vLLM too
    short = engine.chat(HELLO, max_new_tokens=2)
    assert short.finish_reason == "length" and short.completion_tokens == 2


def test_response_format_becomes_structured_outputs(engine):
    chosen = engine.chat(HELLO, response_format={"type": "choice", "choices": ["positive", "negative"]})
    assert chosen.text == "positive"


def test_the_api_serves_the_vllm_engine(engine):
    with BackgroundServer(create_app(engine)) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=60)
        reply = client.chat.completions.create(model="a", messages=HELLO, max_tokens=16, temperature=0)
    assert reply.choices[0].message.content == f"reply from a to {prompt_length(engine)} tokens"
    assert reply.usage.prompt_tokens == prompt_length(engine)


def test_backend_vllm_says_why_it_cannot_run(capsys):
    from tasktune.cli import main
    from tasktune.serve.vllm_engine import unavailable

    reason = unavailable()
    if reason is None:
        pytest.skip("vLLM and a GPU are present: the refusal does not apply")
    assert main(["api", "--backend", "vllm"]) == 2
    assert reason in capsys.readouterr().err
