"""The generation core behind evaluation, CLI chat and the API: continuous batching over one causal LM.

A `Decoder` holds the running rows' KV cache as one batch. Each `step()` first admits waiting requests (up to
`max_batch` rows): their prompts are encoded together on top of a shared prefix whose cache was computed
once (the system prompt and task instruction that every example of a task starts with; the chat template's
default opening for the API; a prompt that does not start with it prefills whole, in a pass of its own), and
their first token is chosen; then every running row gets one more token from a single forward pass. A row leaves as
soon as it ends (end-of-turn token, its own token limit, a callback saying stop, or a constraint that allows
nothing but the end), and a waiting request takes its place at the next step; nobody waits for the longest
row of a batch.

Rows are kept in one cache tensor per layer, [rows, kv_heads, columns, head_dim]. Positions are baked into
the keys by RoPE, so columns need not line up across rows: a row's prompt may be padded anywhere before
its own tokens, and joining a batch pads whichever side is shorter on the left. A 2-D attention mask marks
each row's real columns; position ids count each row's real tokens.

Rows may use different LoRA adapters of one peft model in the same forward pass (peft's `adapter_names`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from tasktune.model.attention import cpu_attention
from tasktune.model.kv_cache import cache_tensors, fill_order, join_rows, left_pad_mask, make_cache, select_rows
from tasktune.model.lean import lean_forward
from tasktune.model.lookup import row_drafts
from tasktune.model.prefix_store import CachedPrefix, PrefixStore, prefix_tensors
from tasktune.model.request import BASE_ADAPTER, Request
from tasktune.model.sampling import only_stops, pick_tokens
from tasktune.runtime import frozen_gc

PLAIN_HEAD_MODELS = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3", "olmo2", "smollm3"})
"""Model types whose logits are exactly `lm_head(hidden)`: the decoder may score a constrained row's allowed
tokens only (rows of the output embedding) instead of the whole vocabulary."""


@dataclass
class _Batch:
    """The running rows and their cache (a transformers DynamicCache whose layers hold [rows, kv_heads,
    columns, head_dim] keys and values; kept between steps, so a step appends one column and copies nothing
    else)."""

    rows: list[Request]
    cache: Any
    mask: torch.Tensor  # [rows, columns], 1 where a column holds a real token
    positions: torch.Tensor  # [rows], the position id of each row's next token
    last: torch.Tensor  # [rows], each row's last chosen token (the next step's input)


class Decoder:
    """Continuous batching over `model`; feed it with `add`, drive it with `step` (or `run`)."""

    def __init__(self, model: torch.nn.Module, stop_ids: Sequence[int], pad_id: int, max_batch: int = 16,
                 prefix_ids: Sequence[int] = (), draft_tokens: int = 0, copy_drafts: int = 0,
                 keep_bytes: int = 0):
        self.model, self.stop_ids, self.pad_id = model, set(stop_ids), pad_id
        self.max_batch = max(1, max_batch)
        self._compact_after = max(1, self.max_batch // 8)
        """Finished rows that make room for waiting requests (`_drop_finished`): 8 of a 64-row batch, 1 of <= 15."""
        self.draft_tokens = max(0, draft_tokens)
        """Tokens a greedy row may guess per step from its prompt (model/lookup.py); 0: one token a step."""
        self.copy_drafts = max(0, copy_drafts)
        """Tokens a greedy row whose constraint copies a text (`draft`: inline NER, QA spans) may guess per step
        from that text; these guesses are mostly right, so they widen a full batch too."""
        self.device = next(model.parameters()).device
        self.head = model.get_output_embeddings()
        self.vocab_size = self.head.weight.shape[0]
        config = getattr(model, "config", None)
        self._own_head = (type(self.head) is torch.nn.Linear
                          and getattr(config, "model_type", None) in PLAIN_HEAD_MODELS
                          and getattr(config, "final_logit_softcapping", None) is None)
        self._lean = lean_forward(model) if self._own_head else None
        """The model's lean forward (model/lean.py, built by `prepare_lean` for inference-only models), else None."""
        self.waiting: list[Request] = []
        self._ended: list[Request] = []  # cancelled while waiting: reported by the next step
        self.batch: _Batch | None = None
        self.prefix_ids = list(prefix_ids)
        self.store = PrefixStore(keep_bytes)
        """Cached prefixes: the shared one per adapter, and finished rows within `keep_bytes` (chat, API)."""
        self._peft = hasattr(model, "peft_config")
        self.forward_passes = 0
        self.drafted = self.accepted = 0  # draft tokens proposed / kept

    @property
    def active(self) -> int:
        """Rows still generating (finished rows may wait in the batch for the next compaction)."""
        return sum(not r.done for r in self.batch.rows) if self.batch else 0

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.active or self._ended)

    def add(self, request: Request) -> None:
        if not request.prompt_ids:
            raise ValueError("empty prompt")
        if request.seed is not None:
            request._generator = torch.Generator(device="cpu").manual_seed(request.seed)
        self.waiting.append(request)

    def run(self, requests: Sequence[Request], progress: Callable[[Request], None] | None = None) -> None:
        """Generate every request to its end; `progress` is called as each one finishes.

        The objects that exist before (the model's modules, the tokenizer's and constraints' tables) are frozen
        out of Python's cyclic garbage collector meanwhile (`runtime.frozen_gc`): a full collection scanning
        them took 0.28 s, a tenth of the demo evaluation, in about one run of three."""
        for request in requests:
            self.add(request)
        with frozen_gc():
            while self.busy:
                for request in self.step():
                    if progress:
                        progress(request)

    @torch.inference_mode()
    def step(self) -> list[Request]:
        """Admit waiting requests, then one token for every running row; returns the rows that finished."""
        finished, self._ended = self._ended, []
        # the lean forward has its own attention; switching transformers' walks every module (~4 ms a step)
        with nullcontext() if self._lean is not None else cpu_attention(self.model):
            if self.batch is not None:
                self._decode_one()
                finished += self._drop_finished()
            room = self.max_batch - (len(self.batch.rows) if self.batch else 0)
            if self.waiting and room > 0:
                admitted, self.waiting = self.waiting[:room], self.waiting[room:]
                self._admit(admitted)
                finished += self._drop_finished()
        return finished

    def cancel(self, request: Request, reason: str = "cancelled") -> None:
        """End `request` now; a running one leaves the batch at the next step, a waiting one is returned by it."""
        if not request.done:
            request.finish_reason = reason
        if request in self.waiting:
            self.waiting.remove(request)
            self._ended.append(request)

    # ---- forward passes -------------------------------------------------------------------------------
    def _forward(self, input_ids, mask, positions, cache, adapters, keep: int = 1) -> torch.Tensor:
        """For `input_ids` after the cache's columns (the cache grows): the last position's hidden state
        [rows, hidden] where the decoder applies the output embedding itself (`_own_head`), else its logits
        [rows, vocab]; with `keep` > 1, the last `keep` positions' [rows, keep, ...]. (The model's own head
        would also get transformers' strided slice of the last position, which a CPU matmul handles by
        expanding the weight per row: 3.7 of 5.7 s of a 64-row prefill.)"""
        if self._lean is not None and (adapters is None or self._lean.serves(adapters)):
            out = self._lean(input_ids, mask, positions, cache, keep, adapters)
            self.forward_passes += 1
            return out[:, -1, :].contiguous() if keep == 1 else out
        if self._lean is not None:  # an adapter loaded after the lean forward was built: transformers' forward
            with cpu_attention(self.model):
                return self._model_forward(input_ids, mask, positions, cache, adapters, keep)
        return self._model_forward(input_ids, mask, positions, cache, adapters, keep)

    def _model_forward(self, input_ids, mask, positions, cache, adapters, keep: int) -> torch.Tensor:
        extra: dict[str, Any] = {}
        if adapters is not None:
            extra["adapter_names"] = adapters
        if self._own_head:
            self.model.set_output_embeddings(torch.nn.Identity())
        try:
            out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache,
                             use_cache=True, logits_to_keep=keep, **extra)
        finally:
            if self._own_head:
                self.model.set_output_embeddings(self.head)
        self.forward_passes += 1
        return out.logits[:, -1, :].contiguous() if keep == 1 else out.logits[:, -keep:, :]

    def _logits(self, out: torch.Tensor, ids: list[int] | None = None) -> torch.Tensor:
        """fp32 logits of `_forward`'s output rows, over the token ids `ids` (all when None)."""
        if not self._own_head:
            return (out if ids is None else out[:, ids]).float()
        if ids is None and self._lean is not None and self._lean.head is not None and out.dtype == torch.bfloat16:
            return self._lean.logits(out).float()
        weight, bias = self.head.weight, self.head.bias
        if ids is not None:
            index = torch.tensor(ids, device=weight.device)
            weight = weight.index_select(0, index)
            bias = None if bias is None else bias.index_select(0, index)
        # a training model's last norm may hand over fp32 hidden states to a bf16 head (no autocast here)
        return torch.nn.functional.linear(out.to(weight.dtype), weight, bias).float()

    def _adapter_names(self, rows: Sequence[Request]) -> list[str] | None:
        return self._names([r.adapter for r in rows])

    def _names(self, adapters: Sequence[str | None]) -> list[str] | None:
        """Each row's peft adapter (a row naming none gets the active one), or None where the model runs as
        it is: no peft model, or no row naming one on transformers' forward (peft applies its active one)."""
        if not self._peft or (self._lean is None and all(a is None for a in adapters)):
            return None
        active = getattr(self.model, "active_adapter", None)
        return [a or active or BASE_ADAPTER for a in adapters]

    def _pinned(self, adapter: str | None) -> CachedPrefix:
        """The shared prefix's keys and values (batch of one), computed once per adapter."""
        entry = self.store.pinned(adapter)
        if entry is None:
            ids = torch.tensor([self.prefix_ids], device=self.device)
            positions = torch.arange(len(self.prefix_ids), device=self.device)[None]
            cache = make_cache([], [])
            self._forward(ids, torch.ones_like(ids), positions, cache, self._names([adapter]))
            entry = CachedPrefix(adapter, tuple(self.prefix_ids), *cache_tensors(cache), pinned=True)
            self.store.add(entry)
        return entry

    def _match(self, r: Request) -> tuple[CachedPrefix | None, int]:
        """The cached prefix `r`'s prompt starts from (model/prefix_store.py) and its length, or (None, 0)."""
        p = len(self.prefix_ids)
        if p and len(r.prompt_ids) > p and r.prompt_ids[:p] == self.prefix_ids:
            self._pinned(r.adapter)
        return self.store.match(r.adapter, r.prompt_ids)

    def _admit(self, requests: list[Request]) -> None:
        """Encode the new prompts (after their cached prefixes) in one pass, choose their first tokens, join."""
        groups: dict[tuple[str | None, bool], list[tuple[Request, CachedPrefix | None, int]]] = {}
        for r in requests:  # one pass per adapter, apart for the prompts that start from no cached prefix
            entry, length = self._match(r)
            groups.setdefault((r.adapter, entry is not None), []).append((r, entry, length))
        for (adapter, _), rows in groups.items():
            self._join(self._prefill(rows, adapter))

    def _prefill(self, matched: list[tuple[Request, CachedPrefix | None, int]], adapter: str | None) -> _Batch:
        rows = [r for r, _, _ in matched]
        start = max(length for _, _, length in matched)  # each row's prefix ends at this column
        suffixes = [r.prompt_ids[length:] for r, _, length in matched]
        width = max(len(s) for s in suffixes)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), start + width), dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (s, (_, _, length)) in enumerate(zip(suffixes, matched, strict=True)):
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, start - length:start] = 1
            mask[i, start + width - len(s):] = 1
            positions[i, width - len(s):] = torch.arange(length, length + len(s))
        keys, values = prefix_tensors([(entry, length) for _, entry, length in matched], start)
        adapters = self._names([adapter] * len(rows))
        mask = mask.to(self.device)
        cache = make_cache(keys, values, reserve=width)  # room for the prompts, then for decode steps
        logits = self._forward(ids.to(self.device), mask, positions.to(self.device), cache, adapters)
        next_positions = torch.tensor([len(r.prompt_ids) for r in rows], device=self.device)
        batch = _Batch(list(rows), cache, mask, next_positions, torch.zeros(len(rows), dtype=torch.long))
        for r in rows:
            if r.constraint is not None:
                r._allowed = r.constraint.row_allowed((), self.vocab_size)
        batch.last = self._choose(logits, rows).to(self.device)
        return batch

    def _decode_one(self) -> None:
        b = self.batch
        drafts = self._drafts(b.rows)
        if drafts is not None:
            self._decode_drafted(drafts)
            return
        running = _running(b.rows, self.device)
        # a finished row's new column is not real: the lean forward leaves the row out of its matmuls
        mask = torch.cat([b.mask, running[:, None].to(b.mask.dtype)], dim=1)
        logits = self._forward(b.last[:, None], mask, b.positions[:, None], b.cache, self._adapter_names(b.rows))
        b.mask = mask
        b.positions = b.positions + running
        b.last = self._choose(logits, b.rows).to(self.device)

    def _drafts(self, rows: Sequence[Request]) -> list[list[int]] | None:
        """Per row, the tokens guessed after its last one, or None (one token per row): model/lookup.py."""
        return row_drafts(rows, self.draft_tokens, self.copy_drafts)

    def _decode_drafted(self, drafts: list[list[int]]) -> None:
        """One forward pass over each row's last token and its draft; each row keeps the draft tokens its own
        greedy choice confirms, then the first token it chose differently (or its end). The columns of the
        rest are masked out of the cache: they become holes like left padding. A draft that ends the row's
        reply (its constraint allows only a stop after it) is verified without a position of its last token:
        that position's next token is known, and its key and value would never be read."""
        b = self.batch
        inputs = [[int(b.last[i]), *(draft[:-1] if _ends_after(r, draft) else draft)]
                  for i, (r, draft) in enumerate(zip(b.rows, drafts, strict=True))]
        width = max(len(row) for row in inputs)
        ids = torch.full((len(b.rows), width), self.pad_id, dtype=torch.long)
        new_mask = torch.zeros((len(b.rows), width), dtype=b.mask.dtype)
        for i, row in enumerate(inputs):
            ids[i, :len(row)] = torch.tensor(row)
            new_mask[i, :len(row)] = 0 if b.rows[i].done else 1
        mask = torch.cat([b.mask, new_mask.to(self.device)], dim=1)
        positions = b.positions[:, None] + torch.arange(width, device=self.device)
        out = self._forward(ids.to(self.device), mask, positions, b.cache, self._adapter_names(b.rows), keep=width)
        out = out[:, None] if width == 1 else out  # [rows, 1, ...]: every row's draft was its one last token
        kept = [0] * len(b.rows)  # draft tokens each row keeps
        last = b.last.clone()
        checking = list(range(len(b.rows)))
        for column in range(width):
            tokens = self._choose(out[checking, column], [b.rows[i] for i in checking]).tolist()
            still = []
            for i, token in zip(checking, tokens, strict=True):
                last[i] = token
                if column < len(drafts[i]) and token == drafts[i][column] and not b.rows[i].done:
                    kept[i] += 1
                    still.append(i)
            checking = still
            if not checking:
                break
        start = b.mask.shape[1]
        for i, n in enumerate(kept):
            mask[i, start + 1 + n:] = 0
        self.drafted += sum(len(d) for d in drafts)
        self.accepted += sum(kept)
        b.mask = mask
        b.positions = b.positions + _running(b.rows, self.device) * (1 + torch.tensor(kept, device=self.device))
        b.last = last.to(self.device)

    # ---- choosing tokens ------------------------------------------------------------------------------
    def _choose(self, out: torch.Tensor, rows: Sequence[Request]) -> torch.Tensor:
        """The next token of each row (greedy, or sampled with the row's temperature/top_p), fed to the row.

        Rows whose constraint lists its allowed ids are scored over the union of those ids only (a few
        rows of the output embedding instead of the whole vocabulary); the others over the vocabulary."""
        tokens = torch.zeros(len(rows), dtype=torch.long)
        listed = [i for i, r in enumerate(rows) if isinstance(r._allowed, list)]
        full = [i for i, r in enumerate(rows) if not isinstance(r._allowed, list)]
        if full:
            logits = self._logits(out[full] if listed else out)
            masks = [(k, rows[i]._allowed) for k, i in enumerate(full) if rows[i]._allowed is not None]
            if masks:
                allowed = torch.ones_like(logits, dtype=torch.bool)
                for k, mask in masks:
                    allowed[k] = mask
                logits = logits.masked_fill(~allowed, float("-inf"))
            tokens[full] = pick_tokens(logits, [rows[i] for i in full], None)
        if listed:
            ids = sorted({t for i in listed for t in rows[i]._allowed})  # sorted: ties go to the lowest id
            column = {t: c for c, t in enumerate(ids)}
            at_row = [k for k, i in enumerate(listed) for _ in rows[i]._allowed]
            at_column = [column[t] for i in listed for t in rows[i]._allowed]
            allowed = torch.zeros((len(listed), len(ids)), dtype=torch.bool)
            allowed[at_row, at_column] = True  # one indexed write, not one per row
            logits = self._logits(out[listed], ids).masked_fill(~allowed, float("-inf"))
            tokens[listed] = pick_tokens(logits, [rows[i] for i in listed], torch.tensor(ids))
        for r, token in zip(rows, tokens.tolist(), strict=True):
            self._feed(r, token)
        return tokens

    def _feed(self, r: Request, token: int) -> None:
        if r.done:
            return
        if token in self.stop_ids:
            r.stop_token_seen = True
            r.finish_reason = "stop"
            return
        r.generated.append(token)
        if r.on_token is not None:
            reason = r.on_token(r, token)
            if reason:
                r.finish_reason = reason
                return
        if len(r.generated) >= r.max_new_tokens:
            r.finish_reason = "length"
            return
        if r.constraint is not None:
            r._allowed = r.constraint.row_allowed(tuple(r.generated), self.vocab_size)
            if only_stops(r._allowed, self.stop_ids):  # the output is complete: end it without another step
                r.stop_token_seen = True
                r.finish_reason = "stop"

    # ---- batch bookkeeping ----------------------------------------------------------------------------
    def _keep_finished(self, b: _Batch, finished: list[Request]) -> None:
        """Store the cache of each finished row (its real columns: its prompt and reply up to the last token
        run) for a later prompt that starts with them (the next turn of a chat, model/prefix_store.py)."""
        done = {id(r) for r in finished}
        for i, r in enumerate(b.rows):
            if id(r) not in done:
                continue
            columns = b.mask[i].nonzero().squeeze(1)
            tokens = (list(r.prompt_ids) + r.generated)[:len(columns)]
            keys = [layer.keys[i:i + 1].index_select(2, columns) for layer in b.cache.layers]
            values = [layer.values[i:i + 1].index_select(2, columns) for layer in b.cache.layers]
            self.store.add(CachedPrefix(r.adapter, tuple(tokens), keys, values))

    def _join(self, new: _Batch) -> None:
        if self.batch is None:
            self.batch = new
            return
        old = self.batch
        width = max(old.mask.shape[1], new.mask.shape[1])
        self.batch = _Batch(
            old.rows + new.rows,
            join_rows(old.cache, new.cache, width),
            torch.cat([left_pad_mask(old.mask, width), left_pad_mask(new.mask, width)]),
            torch.cat([old.positions, new.positions]),
            torch.cat([old.last, new.last]),
        )

    def _drop_finished(self) -> list[Request]:
        """The rows that finished since the last call. Their cache rows are dropped (in place: rows past the
        new end move into their slots, `kv_cache.select_rows`) only once enough have finished:
        `_compact_after` while requests wait for room, else as many as still run. Until then a finished row
        rides along in the passes, which costs less (at 64 rows, one more row is ~1.5 % of a pass; a copy of
        the cache was a third of one, measured on `bench/eval_speed.py`), and waiting requests join in
        groups, one prefill pass per group."""
        b = self.batch
        if b is None:
            return []
        newly = [r for r in b.rows if r.done and not r._reported]
        for r in newly:
            r._reported = True
        if newly and self.store.budget:
            self._keep_finished(b, newly)
        keep = [i for i, r in enumerate(b.rows) if not r.done]
        if not keep:
            self.batch = None
            return newly
        dead = len(b.rows) - len(keep)
        if dead == 0 or dead < (self._compact_after if self.waiting else len(keep)):
            return newly
        order = fill_order(keep)  # compacted in place: rows past the new end fill the slots of finished ones
        index = torch.tensor(order, device=self.device)
        mask = b.mask.index_select(0, index)
        first = int(mask.any(dim=0).nonzero()[0])  # columns that no remaining row uses are dropped
        self.batch = _Batch(
            [b.rows[i] for i in order], select_rows(b.cache, order, first),
            mask[:, first:], b.positions.index_select(0, index), b.last.index_select(0, index),
        )
        return newly


def _ends_after(r: Request, draft: list[int]) -> bool:
    """Whether `r`'s constraint allows only a stop token after its reply and `draft`."""
    ends = getattr(r.constraint, "ends_after", None)
    return bool(draft) and ends is not None and ends((*r.generated, *draft))


def _running(rows: Sequence[Request], device: torch.device) -> torch.Tensor:
    """1 per row still generating, 0 per finished row riding along (its position stays, as it would at the end
    of the model's context)."""
    return torch.tensor([0 if r.done else 1 for r in rows], device=device)
