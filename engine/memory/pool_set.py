"""The node's pools keyed by kind ("kv", "swa"; DSA index-K, mamba slots later) with their allocators."""

from __future__ import annotations

from typing import Protocol

from pdpair.engine.memory.allocator import PageAllocator
from pdpair.engine.memory.kv_pool import FULL_KIND, Region


class ItemPool(Protocol):
    """What the pool set needs from a pool: a kind, an item count, its registrable region and, for a pool of
    sliding-window state, the window in tokens (None: the pool keeps a request's whole context)."""

    kind: str
    window: int | None

    @property
    def num_items(self) -> int: ...

    def region(self) -> Region: ...


class PoolSet:
    """Pools by kind, each with its own allocator; callers iterate kinds instead of naming pools."""

    def __init__(self, pools: list[ItemPool], page_size: int) -> None:
        assert pools, "a pool set needs at least one pool"
        self.page_size = page_size
        self._pools = {p.kind: p for p in pools}
        assert len(self._pools) == len(pools), f"duplicate pool kinds: {[p.kind for p in pools]}"
        self._allocators = {p.kind: PageAllocator(p.num_items, p.kind) for p in pools}

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self._pools)

    def pool(self, kind: str) -> ItemPool:
        return self._pools[kind]

    @property
    def kv(self):  # the full-attention KV pool, which every model has
        return self._pools[FULL_KIND]

    def window(self, kind: str) -> int | None:
        return self._pools[kind].window

    def windows(self) -> dict[str, int | None]:
        """Kind -> sliding window in tokens (None: the pool keeps the whole context), in pool order."""
        return {k: p.window for k, p in self._pools.items()}

    def allocator(self, kind: str) -> PageAllocator:
        return self._allocators[kind]

    def regions(self) -> list[Region]:
        return [p.region() for p in self._pools.values()]

    def check_integrity(self) -> None:
        for alloc in self._allocators.values():
            alloc.check_integrity()

    def all_free(self) -> bool:
        return all(a.num_free == a.num_total for a in self._allocators.values())
