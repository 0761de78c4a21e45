"""Batched greedy generation for evaluation: left-padded batches of similar length, results in input order."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessorList

from tasktune.evaluate.constrain import SuffixConstraint, build_constraint
from tasktune.model.generate import stop_token_ids


@dataclass
class GenerationResult:
    texts: list[str]
    """The decoded replies (special tokens dropped), in the order of the conversations."""
    generated_tokens: int
    """New tokens over all replies, each counted up to and including its stop token (no padding)."""
    seconds: float
    truncated: list[bool] = field(default_factory=list)
    """Per reply: it used the whole max_new_tokens budget without a stop token."""

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds else 0.0


def prompt_ids(tokenizer, conversations: list[list[dict]]) -> list[list[int]]:
    """Token ids of each conversation rendered by the chat template with the generation prompt."""
    texts = tokenizer.apply_chat_template(conversations, add_generation_prompt=True, tokenize=False)
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) with every row padded on the left to the longest."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids, mask


def generate_texts(
    model,
    tokenizer,
    conversations: list[list[dict]],
    max_new_tokens: int,
    batch_size: int = 16,
    constraint: dict[str, Any] | None = None,
    progress: bool = True,
) -> GenerationResult:
    """Greedy replies to `conversations` (message dicts ending on a user turn), batched longest first.

    constraint: a task's `output_constraint` spec (choice or json_schema), or None for free text.
    """
    started = time.perf_counter()
    if not conversations:
        return GenerationResult([], 0, 0.0, [])
    stop_ids = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    processor: SuffixConstraint | None = build_constraint(constraint, tokenizer, stop_ids) if constraint else None
    encoded = prompt_ids(tokenizer, conversations)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    texts: list[str] = [""] * len(encoded)
    truncated = [False] * len(encoded)
    generated = 0
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(encoded), desc="generate", unit="ex", disable=not progress, leave=False)
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            input_ids, attention_mask = left_pad([encoded[i] for i in batch], pad_id)
            extra = {}
            if processor is not None:
                extra["logits_processor"] = LogitsProcessorList([processor.start(input_ids.shape[1])])
            with torch.inference_mode():
                output = model.generate(
                    input_ids=input_ids.to(model.device),
                    attention_mask=attention_mask.to(model.device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False, temperature=None, top_p=None, top_k=None,
                    use_cache=True,
                    eos_token_id=stop_ids,
                    pad_token_id=pad_id,
                    **extra,
                )  # fmt: skip
            for i, row in zip(batch, output[:, input_ids.shape[1] :].tolist(), strict=True):
                end = next((k for k, token in enumerate(row) if token in stop_ids), None)
                kept = row if end is None else row[:end]
                texts[i] = tokenizer.decode(kept, skip_special_tokens=True)
                truncated[i] = end is None and len(row) >= max_new_tokens
                generated += len(row) if end is None else end + 1
            bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
    return GenerationResult(texts, generated, time.perf_counter() - started, truncated)
