"""The node's pools keyed by kind: paged ("kv", "swa"), per-request slots ("mamba") and companions ("dsa": a
second buffer on the `kv` pool's item ids), with their allocators."""

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


class SlotPool(Protocol):
    """A pool of one item per request (mamba state): ids from `reserved_items` on; `bind` maps a request-table
    row to its item so that a forward batch finds it."""

    kind: str
    reserved_items: int

    @property
    def num_items(self) -> int: ...

    def region(self) -> Region: ...

    def bind(self, row: int, slot: int) -> None: ...

    def unbind(self, row: int) -> None: ...


class PoolSet:
    """Pools by kind, each with its own allocator; callers iterate kinds instead of naming pools.

    A companion pool (`shares` = a paged kind) has no allocator of its own: a request's ids of that kind are its
    ids of the shared kind, so the scheduler never allocates it; it is registered and transferred like the rest.
    """

    def __init__(self, pools: list[ItemPool], page_size: int, slot_pools: list[SlotPool] = (),
                 companions: list[ItemPool] = ()) -> None:
        assert pools, "a pool set needs at least one pool"
        self.page_size = page_size
        self._paged = tuple(p.kind for p in pools)
        self._slots = tuple(p.kind for p in slot_pools)
        self._companions = {p.kind: p.shares for p in companions}
        self._pools = {p.kind: p for p in [*pools, *slot_pools, *companions]}
        assert len(self._pools) == len(pools) + len(slot_pools) + len(companions), (
            f"duplicate pool kinds: {list(self._pools)}")
        for p in companions:
            assert p.shares in self._paged and p.num_items == self._pools[p.shares].num_items, (
                f"companion pool {p.kind!r} must match the items of a paged pool, not {p.shares!r}")
        self._allocators = {p.kind: PageAllocator(p.num_items, p.kind) for p in pools}
        self._allocators.update({p.kind: PageAllocator(p.num_items, p.kind, p.reserved_items) for p in slot_pools})

    @property
    def kinds(self) -> tuple[str, ...]:
        """Every kind: the paged ones, then the per-request slot ones."""
        return (*self._paged, *self._slots)

    @property
    def paged_kinds(self) -> tuple[str, ...]:
        """Kinds whose items are pages of context (kv, swa)."""
        return self._paged

    @property
    def slot_kinds(self) -> tuple[str, ...]:
        """Kinds holding one item per request whatever its length (mamba state)."""
        return self._slots

    @property
    def companions(self) -> dict[str, str]:
        """Companion kind -> the paged kind whose item ids (and allocator) it shares."""
        return dict(self._companions)

    def pool(self, kind: str) -> ItemPool:
        return self._pools[kind]

    @property
    def kv(self):  # the full-attention KV pool, which every model has
        return self._pools[FULL_KIND]

    def window(self, kind: str) -> int | None:
        return self._pools[kind].window

    def windows(self) -> dict[str, int | None]:
        """Paged and companion kind -> sliding window in tokens (None: the pool keeps the whole context)."""
        return {k: self._pools[k].window for k in (*self._paged, *self._companions)}

    def allocator(self, kind: str) -> PageAllocator:
        return self._allocators[kind]

    def regions(self) -> list[Region]:
        return [p.region() for p in self._pools.values()]

    def check_integrity(self) -> None:
        for alloc in self._allocators.values():
            alloc.check_integrity()

    def all_free(self) -> bool:
        return all(a.num_free == a.num_total for a in self._allocators.values())
