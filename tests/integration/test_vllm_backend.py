"""`tasktune api --backend vllm`: the real SmolLM2 and a LoRA adapter served by vLLM answer like the torch
engine, alone and batched together. Runs where vLLM and a CUDA GPU are present (a lent device machine);
skipped elsewhere (the plumbing is tested against a stand-in in tests/unit/test_serve_vllm.py)."""

from __future__ import annotations

import queue

import pytest

from tasktune.serve.vllm_engine import unavailable

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(unavailable() is not None, reason=f"vLLM backend: {unavailable()}")]

QUESTIONS = [[{"role": "user", "content": q}] for q in
             ("What is the capital of France?", "Name three colours.", "Say hello in Spanish.", "What is 2 + 3?")]


@pytest.fixture(scope="module")
def random_adapter(tmp_path_factory, smollm2_dir):
    """A LoRA adapter (r 8) on SmolLM2 with random non-zero B, so it changes the answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    out = tmp_path_factory.mktemp("vllm_adapter")
    peft_model.save_pretrained(out)
    return out


def test_vllm_answers_like_the_torch_engine_with_and_without_the_adapter(smollm2_dir, random_adapter):
    from tasktune.serve.engine import Engine, SamplingParams
    from tasktune.serve.vllm_engine import VllmEngine

    adapters = {"tuned": str(random_adapter)}
    torch_engine = Engine(str(smollm2_dir), adapters, dtype="float32")
    expected = {(m, i): torch_engine.chat(q, model=m, max_new_tokens=12).text
                for m in ("base", "tuned") for i, q in enumerate(QUESTIONS)}
    torch_engine.close()
    assert any(expected["base", i] != expected["tuned", i] for i in range(len(QUESTIONS)))

    engine = VllmEngine(str(smollm2_dir), adapters, dtype="float32", gpu_memory_utilization=0.3)
    try:
        events: queue.Queue = queue.Queue()
        jobs = {key: engine.submit(key[0], engine.render_chat(QUESTIONS[key[1]]), SamplingParams(12),
                                   lambda e, key=key: events.put((key, e)))
                for key in expected}  # all at once: base and adapter rows share vLLM's batches
        results = {}
        while len(results) < len(jobs):
            key, event = events.get(timeout=300)
            results[key] = event
        for key, text in expected.items():  # greedy fp32 on both: the same words (kernels may differ in the last bits)
            assert results[key].text.split()[:6] == text.split()[:6], key
        assert engine.stats["largest_batch"] > 1
    finally:
        engine.close()
