"""Chat generation for one conversation: streamed text pieces, stopping at the end-of-turn token."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")
"""End-of-turn tokens of common chat templates, added to the stop ids when the vocabulary has them."""


def stop_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's eos, the model's generation eos (int or list) and any known end-of-turn token."""
    ids = set()
    config_eos = model.generation_config.eos_token_id
    ids.update(config_eos if isinstance(config_eos, list) else [config_eos])
    ids.add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[token] for token in END_OF_TURN if token in vocab)
    return sorted(i for i in ids if i is not None)


class _StopEvent(StoppingCriteria):
    """Ends generation when the consumer stopped reading (closed generator, Ctrl-C)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> bool:
        return self.event.is_set()


def stream_chat(
    model,
    tokenizer,
    messages: list[dict],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
) -> Iterator[str]:
    """Yield the assistant's reply to `messages` piece by piece (greedy when temperature == 0)."""
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    ).to(model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    stop = threading.Event()
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {
        "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    kwargs = dict(
        **inputs,
        **sampling,
        max_new_tokens=max_new_tokens,
        eos_token_id=stop_token_ids(model, tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        streamer=streamer,
        stopping_criteria=StoppingCriteriaList([_StopEvent(stop)]),
    )
    failure: list[BaseException] = []

    def generate() -> None:
        try:
            with torch.inference_mode():
                model.generate(**kwargs)
        except BaseException as err:  # surfaced in the caller's thread below
            failure.append(err)
            streamer.end()

    thread = threading.Thread(target=generate, daemon=True)
    thread.start()
    try:
        for piece in streamer:
            if piece:
                yield piece
    finally:
        stop.set()
        thread.join()
    if failure:
        raise failure[0]


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
