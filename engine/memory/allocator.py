"""Free-list allocator of pool items (pages or slots), with an integrity check."""

from __future__ import annotations

import numpy as np


class PageAllocator:
    """Hands out item ids from a stack; freshly built it returns ascending, contiguous ids.

    `alloc(n)` returns an int32 array or None when fewer than n items are free; `free(ids)` returns them.
    Freeing an item that is not allocated is a bug and raises AssertionError.
    """

    def __init__(self, num_items: int, kind: str = "kv", reserved: int = 0) -> None:
        """Ids [reserved, num_items) are handed out; the first `reserved` never are (a dummy item for padding)."""
        assert num_items > reserved >= 0, f"allocator needs at least one item, got {num_items} ({reserved} reserved)"
        self.kind = kind
        self._reserved = reserved
        self._total = num_items - reserved
        self._stack = np.arange(num_items - 1, reserved - 1, -1, dtype=np.int32)  # top of stack = end
        self._top = self._total
        self._in_use = np.zeros(num_items, dtype=bool)

    @property
    def num_total(self) -> int:
        return self._total

    @property
    def num_free(self) -> int:
        return self._top

    @property
    def num_used(self) -> int:
        return self._total - self._top

    def alloc(self, n: int) -> np.ndarray | None:
        assert n >= 0, f"cannot allocate {n} items"
        if n > self._top:
            return None
        ids = self._stack[self._top - n : self._top][::-1].copy()
        self._top -= n
        self._in_use[ids] = True
        return ids

    def free(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int32)
        if ids.size == 0:
            return
        end = self._reserved + self._total
        assert ids.min() >= self._reserved and ids.max() < end, (
            f"{self.kind}: freeing ids outside [{self._reserved}, {end}): min {ids.min()}, max {ids.max()}")
        assert self._in_use[ids].all() and np.unique(ids).size == ids.size, (
            f"{self.kind}: double free of {int((~self._in_use[ids]).sum())} of {ids.size} items")
        self._in_use[ids] = False
        self._stack[self._top : self._top + ids.size] = ids[::-1]
        self._top += ids.size

    def check_integrity(self) -> None:
        """Raise AssertionError (with the numbers) unless free + used == total and the free list is sound."""
        used = int(self._in_use.sum())
        assert self._top + used == self._total, (
            f"{self.kind} pool: free {self._top} + used {used} != total {self._total}")
        free_ids = self._stack[: self._top]
        assert np.unique(free_ids).size == self._top, f"{self.kind} pool: duplicate ids in the free list"
        assert not self._in_use[free_ids].any(), f"{self.kind} pool: an item is both free and in use"

    def check_accounted(self, ids: np.ndarray) -> None:
        """Raise AssertionError unless `ids` (every holder's items, concatenated) are exactly the items in use,
        each held once."""
        ids = np.asarray(ids, dtype=np.int64)
        vals, counts = np.unique(ids, return_counts=True)
        assert not (counts > 1).any(), f"{self.kind} pool: item {int(vals[counts > 1][0])} held twice"
        assert self._in_use[vals].all(), f"{self.kind} pool: item {int(vals[~self._in_use[vals]][0])} held but free"
        used = int(self._in_use.sum())
        assert vals.size == used, f"{self.kind} pool: {used} items in use, {vals.size} accounted for"
