"""The decoder's KV cache: transformers `DynamicCache` layers over buffers with spare columns and rows.

Rows are kept in one tensor per layer, [rows, kv_heads, columns, head_dim]. A decode step writes its column
into a spare one instead of concatenating (copying) every layer's whole cache, which was a fifth of a 50-row
decode step. Rows leave in place: the rows that stay past the new end move into the slots of rows that left
(`fill_order`), and the buffers keep their size; rows that join go into those free slots when their columns
fit, else both sides are written once into new buffers. New buffers cost more than the copy: their pages are
faulted in on first touch (~3 us per 4 KiB page here), which made a 3 MB cache copy take 4 ms.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

SPARE_COLUMNS = 32
"""Free cache columns kept after each row's tokens, so a decode step writes its column in place instead of
concatenating (copying) every layer's whole cache (measured: a fifth of a 50-row decode step)."""


def make_cache(keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor], reserve: int = 0):
    """A transformers DynamicCache over these per-layer tensors, with `reserve` + SPARE_COLUMNS free columns
    after them (the decoder reserves its prompts' width, so that their prefill leaves the spare columns to
    the decode steps); empty: filled by the first forward pass. Every layer is a full-attention layer:
    columns are not token distances here."""
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.layers = [_spare_layer()(k, v, SPARE_COLUMNS + reserve) for k, v in zip(keys, values, strict=True)]
    if not keys:
        cache.layer_class_to_replicate = _spare_layer()
    return cache


def cache_tensors(cache) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    return [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]


def join_rows(top, bottom, width: int):
    """One cache of `top`'s rows then `bottom`'s, each right-aligned in `width` columns (left padding of
    zeros): in `top`'s buffers where they have the free rows and `width` is `top`'s width, else written once
    into new buffers with spare columns. `top` is not to be used afterwards."""
    from transformers import DynamicCache

    result = DynamicCache()
    result.layers = [_spare_layer().joined(a, b, width) for a, b in zip(top.layers, bottom.layers, strict=True)]
    return result


def fill_order(keep: list[int]) -> list[int]:
    """The rows to keep (ascending indices), ordered so that compacting them in place moves the fewest: a kept
    row stays in its slot when the slot is within the new size, the others fill the slots of rows that left."""
    n = len(keep)
    kept = set(keep)
    movers = iter([i for i in keep if i >= n])
    return [i if i in kept else next(movers) for i in range(n)]


def select_rows(cache, order: list[int], first: int):
    """The cache of the rows `order` (from `fill_order`), from column `first` on, in place: rows move only
    where `order[j] != j`, into slots that no kept row needs; the buffers keep their size (new ones only where
    leading columns are dropped, `first` > 0, which a shared prompt prefix rules out). Returns `cache`."""
    moves = [(j, i) for j, i in enumerate(order) if i != j]
    for layer in cache.layers:
        layer.keep_rows(len(order), moves, first)
    return cache


_SPARE_LAYER: type | None = None


def _spare_layer() -> type:
    """`DynamicLayer` whose keys/values are views of buffers with `SPARE_COLUMNS` free columns (defined on
    first use, so importing this module does not import transformers)."""
    global _SPARE_LAYER
    if _SPARE_LAYER is not None:
        return _SPARE_LAYER
    from transformers.cache_utils import DynamicLayer

    class SpareLayer(DynamicLayer):
        def __init__(self, keys: torch.Tensor | None = None, values: torch.Tensor | None = None,
                     spare: int = SPARE_COLUMNS):
            super().__init__()
            self.length = 0
            self.rows = 0  # rows in use: the first `rows` of the buffers
            if keys is not None and values is not None:
                self.lazy_initialization(keys, values)
                self._grow([keys], [values], spare)

        def _grow(self, keys: list[torch.Tensor], values: list[torch.Tensor], spare: int = SPARE_COLUMNS) -> None:
            """New buffers holding the column blocks `keys`/`values` one after the other, then `spare` free
            columns (each block copied once, no concatenation first)."""
            length = sum(k.shape[-2] for k in keys)
            shape = (*keys[0].shape[:-2], length + spare, keys[0].shape[-1])
            # zeros: attention may read the free columns (masked, `whole`), where 0 x garbage could be NaN
            self.buf_k, self.buf_v = keys[0].new_zeros(shape), values[0].new_zeros(shape)
            at = 0
            for k, v in zip(keys, values, strict=True):
                self.buf_k[..., at:at + k.shape[-2], :] = k
                self.buf_v[..., at:at + k.shape[-2], :] = v
                at += k.shape[-2]
            self.rows = shape[0]
            self._set_length(length)

        def _set_length(self, length: int) -> None:
            self.length = length
            self.keys, self.values = self.buf_k[:self.rows, :, :length], self.buf_v[:self.rows, :, :length]

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            new = key_states.shape[-2]
            if not self.is_initialized or self.length == 0:
                self.lazy_initialization(key_states, value_states)
                self._grow([key_states], [value_states])
            elif self.length + new > self.buf_k.shape[-2]:  # room for as many steps of this width (drafts)
                self._grow([self.keys, key_states], [self.values, value_states], SPARE_COLUMNS * min(new, 8))
            else:
                self.buf_k[:self.rows, :, self.length:self.length + new] = key_states
                self.buf_v[:self.rows, :, self.length:self.length + new] = value_states
                self._set_length(self.length + new)
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length

        def whole(self) -> tuple[torch.Tensor, torch.Tensor]:
            """The rows' keys and values with every column of the buffers, free ones included (zeros or stale
            values, to be masked): contiguous, where `keys`/`values` are strided views that a bf16 matmul copies."""
            return self.buf_k[:self.rows], self.buf_v[:self.rows]

        @staticmethod
        def joined(top: SpareLayer, bottom: SpareLayer, width: int) -> SpareLayer:
            rows, extra = top.rows, bottom.rows
            if width == top.length and rows + extra <= top.buf_k.shape[0]:  # into top's free rows
                for buf, part in ((top.buf_k, bottom.keys), (top.buf_v, bottom.values)):
                    buf[rows:rows + extra, :, :width - bottom.length] = 0
                    buf[rows:rows + extra, :, width - bottom.length:width] = part
                top.rows = rows + extra
                top._set_length(width)
                return top
            layer = SpareLayer()
            layer.lazy_initialization(top.keys, top.values)
            _, kv_heads, _, dim = top.keys.shape
            shape = (rows + extra, kv_heads, width + SPARE_COLUMNS, dim)
            layer.buf_k, layer.buf_v = top.keys.new_zeros(shape), top.values.new_zeros(shape)
            for part, at in ((top, slice(0, rows)), (bottom, slice(rows, None))):
                layer.buf_k[at, :, width - part.length:width] = part.keys
                layer.buf_v[at, :, width - part.length:width] = part.values
            layer.rows = rows + extra
            layer._set_length(width)
            return layer

        def keep_rows(self, rows: int, moves: list[tuple[int, int]], first: int) -> None:
            """Keep `rows` rows, row `i` copied into slot `j` for each (j, i) in `moves`, from column `first`."""
            if moves:
                to = torch.tensor([j for j, _ in moves], device=self.buf_k.device)
                source = torch.tensor([i for _, i in moves], device=self.buf_k.device)
                for buf in (self.buf_k, self.buf_v):
                    buf[to, :, first:self.length] = buf[source, :, first:self.length]
            self.rows = rows
            self._set_length(self.length)
            if first:  # columns no row uses any more: new buffers without them (rare: no shared prompt prefix)
                self._grow([self.keys[:, :, first:]], [self.values[:, :, first:]])

    _SPARE_LAYER = SpareLayer
    return SpareLayer


def left_pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    extra = width - mask.shape[1]
    return mask if extra == 0 else torch.cat([mask.new_zeros((mask.shape[0], extra)), mask], dim=1)
