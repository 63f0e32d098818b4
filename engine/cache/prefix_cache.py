"""`PrefixCache`: the radix tree bound to the pool allocators. A cached page is neither free nor owned by one
request: requests borrow cached pages (locking them) and give their computed pages to the cache when they end;
pages are freed only by eviction, which takes unreferenced pages, least recently used first."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from pdpair.engine.cache.radix import Node, RadixTree
from pdpair.engine.memory import PoolSet

logger = logging.getLogger(__name__)


def cache_unsupported(pools: PoolSet) -> str | None:
    """Why a prefix cache would be wrong for these pools, or None when every pool keeps the whole context.

    Sliding-window pages behind the window are gone, so a cached prefix could not be attended to; a recurrent
    state (mamba) is only valid at the exact end of the sequence it was computed over."""
    windowed = [k for k, w in pools.windows().items() if w is not None]
    if windowed:
        return f"sliding-window pools {windowed} drop pages behind the window"
    if pools.slot_kinds:
        return f"state pools {list(pools.slot_kinds)} hold a state valid only at a sequence's end"
    return None


class PrefixCache:
    """Owned by the engine thread, like the allocators it frees into."""

    def __init__(self, pools: PoolSet) -> None:
        self.pools = pools
        self.kinds = pools.paged_kinds
        self.tree = RadixTree(pools.page_size, self.kinds)
        self.hit_tokens = 0  # prompt tokens whose K/V came from the cache
        self.evicted_pages = 0

    @property
    def num_pages(self) -> int:
        return self.tree.num_pages

    @property
    def num_evictable(self) -> int:
        return self.tree.num_evictable

    def match(self, tokens: Sequence[int]) -> tuple[Node, dict[str, np.ndarray]]:
        """Longest cached whole-page prefix of `tokens`, locked for the caller (`unlock` when done)."""
        node, pages = self.tree.match(tokens)
        self.tree.lock(node)
        return node, pages

    def unlock(self, node: Node) -> None:
        self.tree.unlock(node)

    def make_room(self, kind: str, num_items: int) -> bool:
        """Evict until `kind` has `num_items` free items; False when even evicting every unreferenced page
        cannot get there (nothing is evicted then)."""
        alloc = self.pools.allocator(kind)
        short = num_items - alloc.num_free
        if short <= 0:
            return True
        if short > self.tree.num_evictable:
            return False
        self._free(self.tree.evict(short))
        self.evicted_pages += short
        logger.debug("prefix cache evicted %d pages for %s", short, kind)
        return True

    def insert(self, tokens: Sequence[int], items: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The cache takes the pages of `tokens` (whole pages) and returns, per kind, those it did not take
        because it already holds pages under the same tokens: they stay the caller's."""
        return self.tree.insert(tokens, items)

    def _free(self, ids: dict[str, np.ndarray]) -> None:
        for kind, arr in ids.items():
            self.pools.allocator(kind).free(arr)

    def items(self) -> dict[str, np.ndarray]:
        return self.tree.items()

    def check(self) -> None:
        self.tree.check()
