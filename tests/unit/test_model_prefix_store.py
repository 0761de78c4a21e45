"""model/prefix_store.py: which cached prefix a prompt starts from, what is kept within the budget."""

from __future__ import annotations

import torch

from tasktune.model.prefix_store import MIN_MATCH, CachedPrefix, PrefixStore, prefix_tensors


def _entry(tokens, adapter=None, pinned=False, fill=None):
    n = len(tokens)
    value = float(fill if fill is not None else tokens[0])
    keys = [torch.full((1, 2, n, 4), value) + torch.arange(n, dtype=torch.float)[None, None, :, None]]
    return CachedPrefix(adapter, tuple(tokens), keys, [k.clone() for k in keys], pinned)


def test_a_prompt_starts_from_the_entry_sharing_the_most_tokens():
    store = PrefixStore(budget=1 << 20)
    short, long_ = _entry(range(1, 13)), _entry([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 50, 51, 52, 53])
    other = _entry(range(1, 20), adapter="a")
    for e in (short, long_, other):
        store.add(e)
    # shares 10 tokens with `long_`, 12 with `short`; `other` is another adapter's
    assert store.match(None, [*range(1, 13), 99]) == (short, 12)
    assert store.match(None, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 50, 51, 7]) == (long_, 12)
    # the prompt's last token is always run (its output picks the first new token), even on a full match
    assert store.match(None, list(range(1, 13))) == (short, 11)
    assert store.match("a", [*range(1, 19), 7, 7])[1] == 18
    assert store.match(None, [1, 2, 3, 99, 5, 6, 7, 8, 9, 10]) == (None, 0)  # shares fewer than MIN_MATCH
    assert store.hits == 4 and store.reused == 12 + 12 + 11 + 18


def test_a_pinned_prefix_counts_whole_or_not_at_all():
    store = PrefixStore()  # no budget: only pinned entries
    pinned = _entry(range(1, 6), pinned=True)
    store.add(pinned)
    store.add(_entry(range(1, 30)))  # a finished row: not kept without a budget
    assert len(store.entries) == 1 and MIN_MATCH > 5
    assert store.match(None, [1, 2, 3, 4, 5, 9]) == (pinned, 5)
    assert store.match(None, [1, 2, 3, 4, 9, 9]) == (None, 0)
    assert store.match(None, [1, 2, 3, 4, 5]) == (None, 0)  # the prompt's last token must be left to run
    assert store.pinned(None) is pinned and store.pinned("a") is None and store.hits == 0


def test_the_budget_evicts_the_least_recently_used_and_extended_entries_go():
    one = _entry(range(1, 11)).nbytes  # 10 tokens
    store = PrefixStore(budget=2 * one + one // 5)  # room for 22 tokens
    a, b, c = _entry(range(1, 11)), _entry(range(100, 110)), _entry(range(200, 210))
    store.add(_entry(range(300, 310), pinned=True))  # pinned entries count against no budget
    store.add(a)
    store.add(b)
    assert store.match(None, [*range(1, 11), 5])[0] is a  # a used: b is now the least recently used
    store.add(c)
    assert [e for e in store.entries if not e.pinned] == [a, c] and store.nbytes == 2 * one  # b evicted
    turn2 = _entry([*range(1, 11), 60, 61], fill=1)  # the next turn of a's conversation: a is dropped
    store.add(turn2)
    assert [e for e in store.entries if not e.pinned] == [c, turn2]
    store.add(_entry(range(1, 100)))  # larger than the whole budget: not kept, nothing evicted
    assert [e for e in store.entries if not e.pinned] == [c, turn2] and len(store.entries) == 3


def test_prefixes_are_right_aligned_with_zeros_before_a_shorter_one():
    a, b = _entry(range(1, 9), fill=1.0), _entry(range(1, 7), fill=2.0)
    keys, values = prefix_tensors([(a, 8), (b, 5), (a, 6)], 8)
    assert len(keys) == len(values) == 1 and keys[0].shape == (3, 2, 8, 4)
    assert torch.equal(keys[0][0], a.keys[0][0])
    assert torch.equal(keys[0][1, :, 3:], b.keys[0][0, :, :5]) and not keys[0][1, :, :3].any()
    assert torch.equal(keys[0][2, :, 2:], a.keys[0][0, :, :6]) and not keys[0][2, :, :2].any()
    same, _ = prefix_tensors([(a, 6), (a, 6)], 6)
    assert same[0].shape == (2, 2, 6, 4) and same[0].data_ptr() == a.keys[0].data_ptr()  # views, no copy
    assert prefix_tensors([(None, 0), (None, 0)], 0) == ([], [])
