"""The decoder's KV cache keeps rows in place: rows leave and join without new buffers where they fit."""

from __future__ import annotations

import torch

from tasktune.model.kv_cache import SPARE_COLUMNS, fill_order, join_rows, make_cache, select_rows


def _cache(rows: int, columns: int, seed: int):
    torch.manual_seed(seed)
    keys = [torch.randn(rows, 2, columns, 4) for _ in range(3)]
    values = [torch.randn(rows, 2, columns, 4) for _ in range(3)]
    return make_cache(keys, values), keys, values


def test_fill_order_moves_only_rows_past_the_new_end():
    assert fill_order([0, 2, 3, 5, 6]) == [0, 5, 2, 3, 6]  # slots 1 and 4 (rows that left) take rows 5 and 6
    assert fill_order([0, 1, 2]) == [0, 1, 2]
    assert fill_order([4]) == [4]


def test_rows_leave_in_place_and_equal_a_selection():
    cache, keys, values = _cache(7, 5, seed=0)
    buffers = [layer.buf_k.untyped_storage().data_ptr() for layer in cache.layers]
    keep = [0, 2, 3, 5, 6]
    order = fill_order(keep)
    select_rows(cache, order, first=0)
    assert [layer.buf_k.untyped_storage().data_ptr() for layer in cache.layers] == buffers  # no new buffers
    for layer, k, v in zip(cache.layers, keys, values, strict=True):
        assert torch.equal(layer.keys, k[order]) and torch.equal(layer.values, v[order])
    step = torch.randn(5, 2, 1, 4)
    torch.testing.assert_close(cache.update(step, step, 0)[0], torch.cat([keys[0][order], step], dim=2))


def test_columns_no_row_uses_are_dropped_into_new_buffers():
    cache, keys, values = _cache(7, 5, seed=0)
    order = fill_order([0, 2, 3, 5, 6])
    select_rows(cache, order, first=1)
    for layer, k, v in zip(cache.layers, keys, values, strict=True):
        assert torch.equal(layer.keys, k[order, :, 1:]) and torch.equal(layer.values, v[order, :, 1:])
        whole_keys, whole_values = layer.whole()
        assert whole_keys.is_contiguous() and whole_keys.shape == (5, 2, 4 + SPARE_COLUMNS, 4)
        assert not whole_keys[:, :, 4:].any() and not whole_values[:, :, 4:].any()  # free columns are zeros


def test_rows_join_into_free_rows_when_their_columns_fit_else_into_new_buffers():
    top, keys, _ = _cache(6, 5, seed=1)
    select_rows(top, fill_order([1, 2, 4]), first=0)  # 3 free rows now
    bottom, new_keys, _ = _cache(2, 3, seed=2)
    buffers = [layer.buf_k.untyped_storage().data_ptr() for layer in top.layers]
    joined = join_rows(top, bottom, width=5)
    assert [layer.buf_k.untyped_storage().data_ptr() for layer in joined.layers] == buffers
    for layer, k, n in zip(joined.layers, keys, new_keys, strict=True):
        padded = torch.cat([torch.zeros(2, 2, 2, 4), n], dim=2)  # right-aligned, zeros on the left
        assert torch.equal(layer.keys, torch.cat([k[[4, 1, 2]], padded]))
    wide, wide_keys, _ = _cache(2, 8, seed=3)  # longer than the batch: both sides into new buffers
    again = join_rows(joined, wide, width=8)
    assert again.layers[0].keys.shape == (7, 2, 8, 4)
    assert torch.equal(again.layers[0].keys[5:], wide_keys[0])
    assert torch.equal(again.layers[0].keys[:5, :, 3:], joined.layers[0].keys)
    assert not again.layers[0].keys[:5, :, :3].any()
