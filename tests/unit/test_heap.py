"""engine/heap.py: a frozen startup heap is out of the collector's walks until thawed, and thawing lets the
cycles among it be collected again (a rank's captured graphs are freed that way before teardown)."""

from __future__ import annotations

import gc
import weakref

from pdpair.engine.heap import freeze_startup_heap, thaw_heap


class _Node:
    def __init__(self) -> None:
        self.other = None


def test_frozen_objects_are_not_walked_and_a_thawed_cycle_is_collected():
    a, b = _Node(), _Node()
    a.other, b.other = b, a  # a cycle: only the collector frees it
    gone = weakref.ref(a)
    try:
        frozen = freeze_startup_heap()
        assert frozen >= 2 and gc.get_freeze_count() == frozen
        tracked = {id(o) for o in gc.get_objects()}
        assert id(a) not in tracked and id(b) not in tracked  # a full collection does not walk them
        later = _Node()
        assert id(later) in {id(o) for o in gc.get_objects()}  # what the process allocates afterwards is walked
        del a, b
        gc.collect()
        assert gone() is not None  # frozen: never collected, even unreachable
    finally:
        thaw_heap()
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert gone() is None
