"""`frozen_gc`: the objects of a loaded model stay out of full collections while a block runs, nested blocks
included, and everything is handed back to the collector when the outermost block ends (errors too)."""

from __future__ import annotations

import gc
import weakref

import pytest

from tasktune.runtime import frozen_gc


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector frees it


def test_nested_blocks_stay_frozen_until_the_outermost_ends():
    gc.unfreeze()
    kept = [Node() for _ in range(100)]
    # the kept objects stay alive, so they stay frozen until the end (others may be freed meanwhile)
    with frozen_gc():
        assert gc.get_freeze_count() >= len(kept)
        with frozen_gc():
            assert gc.get_freeze_count() >= len(kept)
        assert gc.get_freeze_count() >= len(kept)  # the inner block's end does not unfreeze the outer one
    assert gc.get_freeze_count() == 0
    del kept


def test_a_frozen_cycle_is_freed_after_the_block_errors_included():
    gc.unfreeze()
    node = Node()
    alive = weakref.ref(node)
    with pytest.raises(RuntimeError), frozen_gc():
        del node
        gc.collect()
        assert alive() is not None  # frozen: the collector does not look at it
        raise RuntimeError("inside")
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert alive() is None


@frozen_gc()
def _decorated() -> int:
    return gc.get_freeze_count()


def test_it_decorates_a_function():
    gc.unfreeze()
    assert _decorated() > 0 and gc.get_freeze_count() == 0
