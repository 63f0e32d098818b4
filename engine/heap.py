"""The collector and a serving process's startup heap.

A node holds ~190k long-lived objects once its engine is built (the embedded model on CPU: modules, weights'
wrappers, the runtime, imported modules), and CPython's full collection walks all of them: ~55 ms on a CI
core (`bench/gc_pause.py`), a stall in the middle of whatever step the engine thread is running when the
collector decides it is time. `freeze_startup_heap` moves everything alive once the process is serving into
the collector's permanent generation, so a full collection walks only what was allocated since. Before
teardown `thaw_heap` gives them back: a frozen cycle is never collected, and a rank's captured graphs must
be freed before its process group is destroyed.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect what startup left behind, then freeze every object still alive; returns how many are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def thaw_heap() -> None:
    """Undo `freeze_startup_heap` (before teardown, so cycles among the startup objects can be collected)."""
    gc.unfreeze()
