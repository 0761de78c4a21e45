"""Constrained decoding: logits processors that allow only what a task's `output_constraint` accepts.

`{"type": "choice", "choices": [...]}` -> a token trie over the labels (ours); `{"type": "json_schema",
"schema": {...}}` -> lm-format-enforcer's JsonSchemaParser driven by our processor (its own transformers
integration does not import on transformers 5); `{"type": "copy_inline", "text": ..., "labels": [...]}` ->
a per-example constraint for inline NER (`evaluate.copy_inline`): copy the text, `[` opens a mention,
`|LABEL]` closes it; `{"type": "copy_span", "text": ...}` -> a span copied from the text (extractive QA,
`evaluate.copy_span`). All look only at the tokens a row generated so far, so they work with left-padded
batches; a row that already emitted a stop token is left alone. `RowConstraints` gives each row of a batch
its own constraint (or none).
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessor

from tasktune.config.schema import ConfigError
from tasktune.evaluate.mention_guess import BracketRecord

MASK_CACHE = 64
"""Allowed-token masks kept per constraint (keyed by the identity of the allowed list or bitmask)."""
MAX_JSON_WHITESPACE = 1
"""Consecutive whitespace characters allowed in constrained JSON (json.dumps writes `, ` and `: `)."""

_ENFORCER_DATA: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SHIFTS = torch.arange(32, dtype=torch.int64)


def label_token_ids(tokenizer, labels: Sequence[str]) -> tuple[list[list[int]], int]:
    """Each label's token ids as the chat template puts them after the generation prompt, and the id of
    the token that ends the assistant turn (the tokenizer's eos when the template shows none)."""
    user = [{"role": "user", "content": "x"}]
    prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    prompt_ids = _encode(tokenizer, prompt)
    result, end_id = [], None
    for label in labels:
        ids = _encode(tokenizer, prompt + label)
        ids = ids[len(prompt_ids) :] if ids[: len(prompt_ids)] == prompt_ids else _encode(tokenizer, label)
        result.append(ids)
        if end_id is None:
            full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": label}], tokenize=False)
            full_ids = _encode(tokenizer, full)
            rest = full_ids[len(prompt_ids) :] if full_ids[: len(prompt_ids)] == prompt_ids else []
            if rest[: len(ids)] == ids and len(rest) > len(ids):
                end_id = rest[len(ids)]
    return result, end_id if end_id is not None else tokenizer.eos_token_id


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


class SuffixConstraint(LogitsProcessor):
    """Masks each row's logits to the tokens `allowed` after what the row generated since `prompt_length`."""

    def __init__(self, stop_ids: Sequence[int]):
        self.stop_ids = list(stop_ids)
        self.prompt_length = 0
        self._masks: dict[int, tuple[Any, torch.Tensor]] = {}

    def start(self, prompt_length: int, rows: Sequence[int] | None = None) -> SuffixConstraint:
        """Begin a new batch whose (left-padded) prompts are `prompt_length` tokens long (`rows`: which
        conversations the batch holds, for per-row constraints)."""
        self.prompt_length = prompt_length
        return self

    def allowed(self, generated: tuple[int, ...]) -> Sequence[int]:
        raise NotImplementedError

    def row_allowed(self, generated: tuple[int, ...], vocab: int) -> list[int] | torch.Tensor:
        """The tokens allowed after `generated` (model/decode.py's RowConstraint): sorted ids (the stop ids
        when nothing is left), or a boolean mask where the constraint keeps a bitmask."""
        allowed = self.allowed(generated)
        if isinstance(allowed, torch.Tensor):
            return self._mask(allowed, vocab, torch.device("cpu"))
        return sorted({t for t in allowed if t < vocab}) or sorted(self.stop_ids)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        keep = torch.ones_like(scores, dtype=torch.bool)
        stops = set(self.stop_ids)
        for b, row in enumerate(input_ids[:, self.prompt_length :].tolist()):
            if not stops.intersection(row):  # a finished row is padded by generate() anyway
                keep[b] = self._mask(self.allowed(tuple(row)), scores.shape[-1], scores.device)
        return scores.masked_fill(~keep, float("-inf"))

    def _mask(self, allowed: Sequence[int] | torch.Tensor, vocab: int, device: torch.device) -> torch.Tensor:
        """Allowed ids (a list, or lm-format-enforcer's int32 bitmask) as a boolean mask over the model's
        vocabulary (the stop ids when nothing is left); one seen again (a cached state) is converted once."""
        key = id(allowed)
        if key in self._masks and self._masks[key][0] is allowed:
            return self._masks[key][1]
        if isinstance(allowed, torch.Tensor):  # bit j of word i allows token 32 * i + j
            mask = ((allowed.to(torch.int64).unsqueeze(-1) >> _SHIFTS) & 1).flatten().bool()[:vocab]
            mask = torch.cat([mask, mask.new_zeros(vocab - len(mask))])
        else:
            mask = torch.zeros(vocab, dtype=torch.bool)
            ids = torch.as_tensor(list(allowed), dtype=torch.long)
            mask[ids[ids < vocab]] = True
        if not mask.any():
            mask[torch.as_tensor(self.stop_ids)] = True
        if len(self._masks) >= MASK_CACHE:
            self._masks.pop(next(iter(self._masks)))
        self._masks[key] = (allowed, mask.to(device))
        return self._masks[key][1]


class ChoiceConstraint(SuffixConstraint):
    """Exactly one of the labels (its tokenization after the generation prompt), then a stop token."""

    def __init__(self, tokenizer, choices: Sequence[str], stop_ids: Sequence[int]):
        super().__init__(stop_ids)
        if not choices:
            raise ConfigError("a choice constraint needs at least one label")
        self.trie: dict[int, Any] = {}
        for ids in label_token_ids(tokenizer, choices)[0]:
            node = self.trie
            for token in ids:
                node = node.setdefault(token, {})
            node[-1] = {}  # the label may end here

    def allowed(self, generated: tuple[int, ...]) -> Sequence[int]:
        node = self.trie
        for token in generated:
            if token not in node:
                return self.stop_ids
            node = node[token]
        return [t for t in node if t != -1] + (self.stop_ids if -1 in node else [])


class JsonSchemaConstraint(SuffixConstraint):
    """JSON that a schema accepts (lm-format-enforcer); cut by max_new_tokens it is a valid prefix of one."""

    def __init__(self, tokenizer, schema: dict[str, Any], stop_ids: Sequence[int]):
        super().__init__(stop_ids)
        from lmformatenforcer import JsonSchemaParser, TokenEnforcer

        self.enforcer = TokenEnforcer(enforcer_data(tokenizer), JsonSchemaParser(schema))
        self.enforcer.eos_token_id = list(stop_ids)
        config = self.enforcer.root_parser.config  # TokenEnforcer sets a fresh config: tune it after
        config.max_consecutive_whitespaces = MAX_JSON_WHITESPACE
        config.force_json_field_order = True

    def start(self, prompt_length: int, rows: Sequence[int] | None = None) -> SuffixConstraint:
        self.enforcer.prefix_states.clear()  # per-sequence states; the per-parser-state cache is kept
        return super().start(prompt_length)

    def allowed(self, generated: tuple[int, ...]) -> Sequence[int]:
        # -1 stands for the prompt: the enforcer keys its states by whole token sequences
        return self.enforcer.get_allowed_tokens([-1, *generated]).allowed_tokens


def enforcer_data(tokenizer):
    """lm-format-enforcer's per-tokenizer tables (every regular token's text), built once per tokenizer."""
    if tokenizer in _ENFORCER_DATA:
        return _ENFORCER_DATA[tokenizer]
    from lmformatenforcer import TokenEnforcerTokenizerData

    special = set(tokenizer.all_special_ids)
    zero = _encode(tokenizer, "0")[-1]
    regular = []
    for token in range(len(tokenizer)):
        if token in special:
            continue
        after_zero = tokenizer.decode([zero, token])[1:]  # keeps a word-initial space that decode alone drops
        regular.append((token, after_zero, len(after_zero) > len(tokenizer.decode([token]))))

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids).rstrip("\ufffd")

    # bitmask mode: the free-text token sets inside JSON strings are cached int32 bitmasks, not 49k-long lists
    data = TokenEnforcerTokenizerData(regular, decode, tokenizer.eos_token_id, True, len(tokenizer))
    _ENFORCER_DATA[tokenizer] = data
    return data


def build_constraint(spec: dict[str, Any], tokenizer, stop_ids: Sequence[int], record: BracketRecord | None = None
                     ) -> SuffixConstraint:
    """The processor for a task's `output_constraint` (or per-row `row_constraint`) spec; `record`: the
    BracketRecord that copy-constrained NER rows share (evaluate/mention_guess.py), one per row when None."""
    kind = spec.get("type")
    if kind == "choice":
        return ChoiceConstraint(tokenizer, spec["choices"], stop_ids)
    if kind == "json_schema":
        return JsonSchemaConstraint(tokenizer, spec["schema"], stop_ids)
    if kind == "copy_inline":
        from tasktune.evaluate.copy_inline import CopyInlineConstraint

        return CopyInlineConstraint(tokenizer, spec["text"], spec["labels"], stop_ids, record)
    if kind == "copy_span":
        from tasktune.evaluate.copy_span import CopySpanConstraint

        return CopySpanConstraint(tokenizer, spec["text"], stop_ids)
    raise ConfigError(f"unknown output constraint type {kind!r}: expected choice, json_schema, copy_inline or "
                      "copy_span")


class RowConstraints(SuffixConstraint):
    """One constraint (or None: free text) per conversation; each row of a batch is masked by its own.

    Identical specs share one processor (a label set, a schema), and copy-constrained NER rows one record of
    how their guessed brackets fared; `start` must name the batch's rows."""

    def __init__(self, specs: Sequence[dict[str, Any] | None], tokenizer, stop_ids: Sequence[int]):
        super().__init__(stop_ids)
        built: dict[str, SuffixConstraint] = {}
        self.by_row: list[SuffixConstraint | None] = []
        record = BracketRecord()
        for spec in specs:
            key = json.dumps(spec, sort_keys=True, ensure_ascii=False) if spec else ""
            if spec and key not in built:
                built[key] = build_constraint(spec, tokenizer, stop_ids, record)
            self.by_row.append(built[key] if spec else None)
        self.active: list[SuffixConstraint | None] = []

    def start(self, prompt_length: int, rows: Sequence[int] | None = None) -> SuffixConstraint:
        if rows is None:
            raise ValueError("RowConstraints.start needs the rows of the batch")
        self.active = [self.by_row[i] for i in rows]
        for constraint in {id(c): c for c in self.active if c is not None}.values():
            constraint.start(prompt_length)
        return super().start(prompt_length)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows = [scores[b : b + 1] if c is None else c(input_ids[b : b + 1], scores[b : b + 1])
                for b, c in enumerate(self.active)]
        return torch.cat(rows)
