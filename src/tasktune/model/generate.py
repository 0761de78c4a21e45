"""Chat generation for one conversation: streamed text pieces, stopping at the end-of-turn token."""

from __future__ import annotations

from collections.abc import Iterator

from tasktune.model.decode import Decoder, Request
from tasktune.model.load import end_of_turn_ids
from tasktune.model.text_stream import TextStream


def stop_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's eos, the model's generation eos (int or list) and any known end-of-turn token."""
    ids = set()
    config_eos = model.generation_config.eos_token_id
    ids.update(config_eos if isinstance(config_eos, list) else [config_eos])
    ids.add(tokenizer.eos_token_id)
    ids.update(end_of_turn_ids(tokenizer))
    return sorted(i for i in ids if i is not None)


def stream_chat(
    model,
    tokenizer,
    messages: list[dict],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
) -> Iterator[str]:
    """Yield the assistant's reply to `messages` piece by piece (greedy when temperature == 0), on the
    shared decoding core (model/decode.py); closing the generator stops the generation."""
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    stop_ids = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    request = Request(list(prompt["input_ids"]), max_new_tokens, temperature, top_p)
    decoder = Decoder(model, stop_ids, pad_id, max_batch=1)
    decoder.add(request)
    text = TextStream(lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
    while decoder.busy:
        decoder.step()
        piece = text.push(request.generated)
        if piece:
            yield piece
    rest = tokenizer.decode(request.generated, skip_special_tokens=True)[len(text.text):]
    if rest:
        yield rest


def chat_once(
    model,
    tokenizer,
    messages: list[dict],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
) -> str:
    """The whole assistant reply to `messages` as one string."""
    return "".join(stream_chat(model, tokenizer, messages, max_new_tokens, temperature, top_p))
