"""Pages and request-table rows held by requests, per pool kind: acquire, grow, trim, give back."""

from __future__ import annotations

import numpy as np
from pdpair.engine.cache import PrefixCache
from pdpair.engine.memory import PoolSet, ReqToTokenPool
from pdpair.engine.request import Request
from pdpair.transfer.pages import swa_window


class ResourceManager:
    """Every allocation a request makes goes through here, so freeing can never miss a pool.

    Every kind covers the same pages of context, except that a sliding-window kind holds only the pages a
    future query can still see: from the page of position `q - window + 1`, q being the next query's position.
    """

    def __init__(self, pools: PoolSet, req_to_token: ReqToTokenPool, cache: PrefixCache | None = None) -> None:
        self.pools = pools
        self.cache = cache  # prefix cache: its unreferenced pages count as free, evicted when allocation needs them
        self.req_to_token = req_to_token
        self.page_size = pools.page_size
        self.kv = pools.allocator(pools.kv.kind)  # the full-attention allocator
        self.kinds = pools.paged_kinds
        self.slot_kinds = pools.slot_kinds  # one item per request (mamba state), held from admission to the end
        self.companions = pools.companions  # kinds on another kind's item ids (dsa on kv): never allocated here
        self.windows = {k: pools.window(k) for k in self.kinds}
        self.has_windows = any(w is not None for w in self.windows.values())

    @property
    def min_free(self) -> int:
        """Free items of the scarcest pool (a decode step needs a page of every kind at a page boundary)."""
        return min(self.available(k) for k in self.kinds)

    def available(self, kind: str) -> int:
        """Items of `kind` an allocation can get: free ones plus the cache's unreferenced pages."""
        evictable = self.cache.num_evictable if self.cache is not None and kind in self.cache.kinds else 0
        return self.pools.allocator(kind).num_free + evictable

    def pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    def first_live_page(self, kind: str, next_pos: int) -> int:
        """First page of `kind` a query at position `next_pos` (or later) can see."""
        window = self.windows[kind]
        return 0 if window is None else swa_window(next_pos, window, self.page_size)[0]

    def _need(self, kind: str, num_tokens: int, window_from: int | None, shared_pages: int = 0) -> int:
        if self.windows[kind] is None:
            return self.pages_for(num_tokens) - shared_pages
        if window_from is None:  # grown chunk by chunk
            return 0
        return self.pages_for(num_tokens) - self.first_live_page(kind, window_from) if num_tokens else 0

    def can_acquire(self, num_tokens: int, reserve_pages: int, window_from: int | None = None,
                    shared_pages: int = 0) -> bool:
        return self.req_to_token.num_free > 0 and all(
            self.available(k) - self._need(k, num_tokens, window_from, shared_pages) >= reserve_pages
            for k in self.kinds) and all(self.pools.allocator(k).num_free > 0 for k in self.slot_kinds)

    def acquire(self, req: Request, num_tokens: int, reserve_pages: int, window_from: int | None = None) -> bool:
        """Give a non-resident request a table row and the full-context pages for its first `num_tokens` tokens.

        Sliding-window kinds: with `window_from` (a decode destination: the prompt length), the pages of those
        tokens a query at `window_from` can see; without, none yet: `grow` adds them chunk by chunk.
        With a prefix cache, the longest cached whole-page prefix of the first `num_tokens - 1` tokens is borrowed
        (`req.shared_pages`, `req.num_cached` set to its tokens) and only the rest is allocated.
        """
        assert req.row is None and req.num_pages == 0, f"request {req.rid} already holds resources"
        node, shared = None, {}
        if self.cache is not None:
            node, shared = self.cache.match(req.tokens(0, num_tokens - 1))
        n_shared = len(shared[self.kinds[0]]) if shared else 0
        if not self.can_acquire(num_tokens, reserve_pages, window_from, n_shared):
            if node is not None:
                self.cache.unlock(node)
            return False
        req.row = self.req_to_token.alloc()
        for kind in self.kinds:
            live = window_from is not None and self.windows[kind] is not None and num_tokens
            req.items_first[kind] = self.first_live_page(kind, window_from) if live else 0
            req.items[kind] = shared.get(kind, np.zeros(0, dtype=np.int32))
            self.req_to_token.assign_pages(req.row, 0, req.items[kind], kind)
        req.shared_pages, req.cache_node, req.num_pages = n_shared, node, n_shared
        req.num_cached = n_shared * self.page_size
        if self.cache is not None:
            self.cache.hit_tokens += req.num_cached
        full = [k for k in self.kinds if self.windows[k] is None or window_from is not None]
        assert self.grow(req, num_tokens, full), "pages vanished between check and allocation"
        for kind in self.slot_kinds:  # the request's state slot, found by forward batches through its row
            req.items[kind], req.items_first[kind] = self.pools.allocator(kind).alloc(1), 0
            self.pools.pool(kind).bind(req.row, int(req.items[kind][0]))
        return True

    def grow(self, req: Request, num_tokens: int, kinds: list[str] | None = None) -> bool:
        """Make sure the request's pages of `kinds` (default: all) cover `num_tokens` tokens; False (nothing
        taken) if a pool is short. Sliding-window kinds start at their first live page."""
        end = self.pages_for(num_tokens)
        new = {}
        for kind in kinds or self.kinds:
            start = req.items_first[kind] + len(req.items[kind])
            if self.windows[kind] is not None and not len(req.items[kind]):
                start = req.items_first[kind] = max(start, self.first_live_page(kind, req.num_cached))
            if end <= start:
                continue
            pages = None
            if self.cache is None or self.cache.make_room(kind, end - start):
                pages = self.pools.allocator(kind).alloc(end - start)
            if pages is None:
                for k, ids in new.items():
                    self.pools.allocator(k).free(ids)
                return False
            new[kind] = pages
        for kind, pages in new.items():
            start = req.items_first[kind] + len(req.items[kind])
            self.req_to_token.assign_pages(req.row, start, pages, kind)
            req.items[kind] = np.concatenate([req.items[kind], pages]) if len(req.items[kind]) else pages
        req.num_pages = max(req.num_pages, end)
        return True

    def trim(self, req: Request, in_flight: int = 0) -> None:
        """Give back the sliding-window pages no query from `req.num_cached - in_flight` on can see (`in_flight`:
        positions a forward still running reads, e.g. the decode batch launched but not read yet)."""
        for kind in self.kinds:
            if self.windows[kind] is None or kind not in req.items:
                continue
            live = self.first_live_page(kind, req.num_cached - in_flight)
            drop = min(live - req.items_first[kind], len(req.items[kind]))
            if drop > 0:
                self.pools.allocator(kind).free(req.items[kind][:drop])
                req.items[kind] = req.items[kind][drop:]
                req.items_first[kind] += drop

    def owned(self, req: Request) -> dict[str, np.ndarray]:
        """The items the request owns per kind: all it holds but the pages borrowed from the prefix cache."""
        empty = np.zeros(0, dtype=np.int32)
        out = {k: req.items.get(k, empty)[req.shared_pages if k in self.kinds else 0:] for k in self.kinds}
        out.update({k: req.items.get(k, empty) for k in self.slot_kinds})
        return out

    def take(self, req: Request) -> dict[str, np.ndarray]:
        """Detach everything the request owns and hand it to the caller; borrowed cached pages are unlocked."""
        items = self.owned(req)
        if req.cache_node is not None:
            self.cache.unlock(req.cache_node)
        req.shared_pages, req.cache_node = 0, None
        if req.row is not None:
            for kind in self.slot_kinds:
                self.pools.pool(kind).unbind(req.row)
            self.req_to_token.free(req.row)
        req.row = None
        req.items, req.items_first, req.sent = {}, {}, {}
        req.num_pages = 0
        req.num_cached = 0
        return items

    def release(self, req: Request, keep: bool = False) -> None:
        """Free what the request owns; with `keep` and a prefix cache, its whole pages of computed context go
        to the cache instead."""
        if keep and self.cache is not None and req.row is not None:
            self._give_to_cache(req)
        for kind, ids in self.take(req).items():
            self.pools.allocator(kind).free(ids)

    def _give_to_cache(self, req: Request) -> None:
        """The cache adopts the request's pages of whole pages of computed tokens (pages it already holds under
        the same tokens stay with the request, to be freed); the request keeps only what the cache did not take."""
        full = min(req.num_cached // self.page_size, len(req.items[self.kinds[0]]))
        dup = self.cache.insert(req.tokens(0, full * self.page_size), {k: req.items[k][:full] for k in self.kinds})
        shared = req.shared_pages
        for kind in self.kinds:
            req.items[kind] = np.concatenate([req.items[kind][:shared], dup[kind], req.items[kind][full:]])
