"""Greedy generation for evaluation on the shared decoding core (model/decode.py), results in input order."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from tasktune.evaluate.constrain import RowConstraints, SuffixConstraint, build_constraint
from tasktune.model.decode import Decoder, Request
from tasktune.model.generate import stop_token_ids
from tasktune.model.lean import available_memory
from tasktune.model.prefix_store import common_prefix

KV_SHARE = 4
"""The rows generated at once keep their key/value cache within 1/KV_SHARE of the free memory."""


def kv_bytes_per_token(model) -> int | None:
    """Bytes of key/value cache one token takes over all layers (None where the config does not say)."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    try:
        layers, heads = config.num_hidden_layers, config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        element = next(model.parameters()).element_size()
    except (AttributeError, StopIteration, TypeError):
        return None
    return 2 * layers * kv_heads * head_dim * max(element, 2)


def rows_that_fit(model, batch_size: int, tokens_per_row: int) -> int:
    """`batch_size`, or fewer rows where their cache at `tokens_per_row` would take more than 1/KV_SHARE of the
    memory still free (the device's on a GPU); at least one."""
    per_token = kv_bytes_per_token(model)
    device = next(model.parameters()).device
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else available_memory()
    if not per_token or not free:
        return batch_size
    return max(1, min(batch_size, free // KV_SHARE // (per_token * tokens_per_row)))


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


def row_constraints(constraint: dict[str, Any] | list[dict[str, Any] | None] | None, tokenizer,
                    stop_ids: list[int], n: int) -> list[SuffixConstraint | None]:
    """One constraint object (or None) per conversation; identical specs share one object."""
    if constraint is None:
        return [None] * n
    if isinstance(constraint, dict):
        return [build_constraint(constraint, tokenizer, stop_ids)] * n
    if len(constraint) != n:
        raise ValueError(f"{len(constraint)} constraints for {n} conversations")
    return RowConstraints(constraint, tokenizer, stop_ids).by_row


def generate_texts(
    model,
    tokenizer,
    conversations: list[list[dict]],
    max_new_tokens: int,
    batch_size: int = 16,
    constraint: dict[str, Any] | list[dict[str, Any] | None] | None = None,
    progress: bool = True,
    draft_tokens: int = 0,
    copy_drafts: int = 0,
) -> GenerationResult:
    """Greedy replies to `conversations` (message dicts ending on a user turn), with continuous batching
    (model/decode.py): at most `batch_size` rows at once (fewer where their key/value cache would not fit,
    `rows_that_fit`), a finished row replaced at once by the next one, the prompt prefix every conversation
    shares encoded once.

    constraint: a task's `output_constraint` spec (choice, json_schema, copy_inline), or a list with one spec
    (or None: free text) per conversation, or None for free text. draft_tokens: prompt lookup guesses per
    row and pass (model/lookup.py); copy_drafts: guesses from the text a copy constraint copies; same replies.
    """
    started = time.perf_counter()
    if not conversations:
        return GenerationResult([], 0, 0.0, [])
    stop_ids = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    constraints = row_constraints(constraint, tokenizer, stop_ids, len(conversations))
    encoded = prompt_ids(tokenizer, conversations)
    # longest first: the batch starts full and the short tail fills the gaps
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    requests = [Request(encoded[i], max_new_tokens, constraint=constraints[i]) for i in order]
    rows = rows_that_fit(model, batch_size, len(encoded[order[0]]) + max_new_tokens)
    if rows < min(batch_size, len(encoded)):
        print(f"generating {rows} rows at once, not {batch_size}: their key/value cache would take more than "
              f"1/{KV_SHARE} of the free memory", flush=True)
    decoder = Decoder(model, stop_ids, pad_id, max_batch=rows, prefix_ids=common_prefix(encoded),
                      draft_tokens=draft_tokens, copy_drafts=copy_drafts)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(encoded), desc="generate", unit="ex", disable=not progress, leave=False)
    try:
        decoder.run(requests, progress=lambda _request: bar.update(1))
    finally:
        bar.close()
        model.train(was_training)
    texts: list[str] = [""] * len(encoded)
    truncated = [False] * len(encoded)
    generated = 0
    for i, request in zip(order, requests, strict=True):
        texts[i] = tokenizer.decode(request.generated, skip_special_tokens=True)
        truncated[i] = request.finish_reason == "length"
        generated += len(request.generated) + int(request.stop_token_seen)
    return GenerationResult(texts, generated, time.perf_counter() - started, truncated)
