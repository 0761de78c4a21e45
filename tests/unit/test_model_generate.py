"""stream_chat / chat_once on the tiny Llama: streaming equals the whole answer, stops at the eos ids."""

from __future__ import annotations

import pytest

from tasktune.config.schema import ModelConfig
from tasktune.model.generate import chat_once, stop_token_ids, stream_chat
from tasktune.model.load import load_model, load_tokenizer

MESSAGES = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    cfg = ModelConfig(name_or_path=str(tiny_llama_dir))
    return load_model(cfg), load_tokenizer(cfg, padding_side="left")


def test_stop_ids_include_im_end(tiny):
    model, tokenizer = tiny
    assert 2 in stop_token_ids(model, tokenizer)


class _Vocab:
    """A tokenizer's id lookups only; unknown tokens map to the unknown id 1."""

    eos_token_id = 0

    def __init__(self, vocab: dict[str, int]):
        self.vocab = vocab

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.vocab.get(token, 1)

    def convert_ids_to_tokens(self, token_id: int) -> str:
        return {i: t for t, i in self.vocab.items()}.get(token_id, "<unk>")


def test_stop_ids_add_the_end_of_turn_tokens_the_vocabulary_has_and_not_the_unknown_id(tiny):
    model = tiny[0]
    eos = model.generation_config.eos_token_id
    vocab = _Vocab({"<unk>": 1, "<|im_end|>": 7, "<end_of_turn>": 9})
    assert stop_token_ids(model, vocab) == sorted({0, 7, 9, *([eos] if isinstance(eos, int) else eos)})


def test_stream_pieces_join_to_the_greedy_answer(tiny):
    model, tokenizer = tiny
    pieces = list(stream_chat(model, tokenizer, MESSAGES, max_new_tokens=6))
    assert len(pieces) >= 1 and all(pieces)
    assert "".join(pieces) == chat_once(model, tokenizer, MESSAGES, max_new_tokens=6)


def test_generation_stops_at_an_eos_id(tiny, monkeypatch):
    model, tokenizer = tiny
    prompt_len = len(tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True,
                                                   return_dict=True)["input_ids"])
    full = model.generate(
        **tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=True,
                                        return_tensors="pt"),
        max_new_tokens=6, do_sample=False, eos_token_id=None,
    )[0, prompt_len:].tolist()
    assert len(full) == 6
    # make a later greedy token an end token: the answer must stop right there, without it
    k = next(i for i, token in enumerate(full) if token not in full[:i])
    k = next((i for i, token in enumerate(full) if i > 0 and token not in full[:i]), k)
    monkeypatch.setattr(model.generation_config, "eos_token_id", [full[k]])
    stopped = chat_once(model, tokenizer, MESSAGES, max_new_tokens=6)
    assert stopped == tokenizer.decode(full[:k], skip_special_tokens=True)
    assert stopped != tokenizer.decode(full, skip_special_tokens=True)


def test_closing_the_stream_early_stops_generation(tiny):
    model, tokenizer = tiny
    stream = stream_chat(model, tokenizer, MESSAGES, max_new_tokens=200)
    assert next(stream)
    stream.close()  # joins the generation thread; would hang if generation ignored the stop event
