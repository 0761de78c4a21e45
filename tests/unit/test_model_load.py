"""load_tokenizer / load_model on the tiny Llama: pad fallback, padding side, adapters, templates."""

from __future__ import annotations

import shutil

import pytest

from tasktune.config.schema import ModelConfig
from tasktune.model.load import load_model, load_tokenizer


def test_tokenizer_padding_side_and_special_tokens(tiny_llama_dir):
    cfg = ModelConfig(name_or_path=str(tiny_llama_dir))
    assert load_tokenizer(cfg).padding_side == "right"
    tokenizer = load_tokenizer(cfg, padding_side="left")
    assert tokenizer.padding_side == "left"
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    assert tokenizer.eos_token_id == 2


def test_missing_pad_token_falls_back_to_eos(tiny_llama_dir, smol_tokenizer, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model_dir)
    tokenizer = smol_tokenizer.__class__.from_pretrained(tiny_llama_dir)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(model_dir)
    loaded = load_tokenizer(ModelConfig(name_or_path=str(model_dir)))
    assert loaded.pad_token == loaded.eos_token == "<|im_end|>"


def test_load_model_with_adapter_is_peft(tiny_llama_dir, tiny_adapter_dir):
    from peft import PeftModel

    model = load_model(ModelConfig(name_or_path=str(tiny_llama_dir), adapter=str(tiny_adapter_dir)))
    assert isinstance(model, PeftModel) and not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_load_model_rejects_a_dir_without_adapter(tiny_llama_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_model(ModelConfig(name_or_path=str(tiny_llama_dir), adapter=str(tmp_path)))


def test_encoder_is_not_loaded_as_causal_lm():
    with pytest.raises(ValueError, match="encoder"):
        load_model(ModelConfig(name_or_path="minilm-l6"))


def test_template_override_replaces_chat_template(tiny_llama_dir, tmp_path):
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    tokenizer = load_tokenizer(ModelConfig(name_or_path=str(tiny_llama_dir), template=str(template)))
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text == "user: hi\n"


def test_unknown_template_name_is_an_error(tiny_llama_dir):
    with pytest.raises(ValueError, match="chatml"):
        load_tokenizer(ModelConfig(name_or_path=str(tiny_llama_dir), template="chatm"))
