"""Pages and request-table rows held by requests, per pool kind: acquire, grow, trim, give back."""

from __future__ import annotations

import numpy as np
from pdpair.engine.memory import PoolSet, ReqToTokenPool
from pdpair.engine.request import Request
from pdpair.transfer.pages import swa_window


class ResourceManager:
    """Every allocation a request makes goes through here, so freeing can never miss a pool.

    Every kind covers the same pages of context, except that a sliding-window kind holds only the pages a
    future query can still see: from the page of position `q - window + 1`, q being the next query's position.
    """

    def __init__(self, pools: PoolSet, req_to_token: ReqToTokenPool) -> None:
        self.pools = pools
        self.req_to_token = req_to_token
        self.page_size = pools.page_size
        self.kv = pools.allocator(pools.kv.kind)  # the full-attention allocator
        self.kinds = pools.paged_kinds
        self.slot_kinds = pools.slot_kinds  # one item per request (mamba state), held from admission to the end
        self.companions = pools.companions  # kinds on another kind's item ids (dsa on kv): never allocated here
        self.windows = {k: pools.window(k) for k in self.kinds}

    @property
    def min_free(self) -> int:
        """Free items of the scarcest pool (a decode step needs a page of every kind at a page boundary)."""
        return min(self.pools.allocator(k).num_free for k in self.kinds)

    def pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    def first_live_page(self, kind: str, next_pos: int) -> int:
        """First page of `kind` a query at position `next_pos` (or later) can see."""
        window = self.windows[kind]
        return 0 if window is None else swa_window(next_pos, window, self.page_size)[0]

    def _need(self, kind: str, num_tokens: int, window_from: int | None) -> int:
        if self.windows[kind] is None:
            return self.pages_for(num_tokens)
        if window_from is None:  # grown chunk by chunk
            return 0
        return self.pages_for(num_tokens) - self.first_live_page(kind, window_from) if num_tokens else 0

    def can_acquire(self, num_tokens: int, reserve_pages: int, window_from: int | None = None) -> bool:
        return self.req_to_token.num_free > 0 and all(
            self.pools.allocator(k).num_free - self._need(k, num_tokens, window_from) >= reserve_pages
            for k in self.kinds) and all(self.pools.allocator(k).num_free > 0 for k in self.slot_kinds)

    def acquire(self, req: Request, num_tokens: int, reserve_pages: int, window_from: int | None = None) -> bool:
        """Give a non-resident request a table row and the full-context pages for its first `num_tokens` tokens.

        Sliding-window kinds: with `window_from` (a decode destination: the prompt length), the pages of those
        tokens a query at `window_from` can see; without, none yet: `grow` adds them chunk by chunk.
        """
        assert req.row is None and req.num_pages == 0, f"request {req.rid} already holds resources"
        if not self.can_acquire(num_tokens, reserve_pages, window_from):
            return False
        req.row = self.req_to_token.alloc()
        for kind in self.kinds:
            live = window_from is not None and self.windows[kind] is not None and num_tokens
            req.items_first[kind] = self.first_live_page(kind, window_from) if live else 0
            req.items[kind] = np.zeros(0, dtype=np.int32)
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

    def trim(self, req: Request) -> None:
        """Give back the sliding-window pages no query from `req.num_cached` on can see."""
        for kind in self.kinds:
            if self.windows[kind] is None or kind not in req.items:
                continue
            drop = min(self.first_live_page(kind, req.num_cached) - req.items_first[kind], len(req.items[kind]))
            if drop > 0:
                self.pools.allocator(kind).free(req.items[kind][:drop])
                req.items[kind] = req.items[kind][drop:]
                req.items_first[kind] += drop

    def take(self, req: Request) -> dict[str, np.ndarray]:
        """Detach everything the request holds and hand it to the caller."""
        items = {k: req.items.get(k, np.zeros(0, dtype=np.int32)) for k in (*self.kinds, *self.slot_kinds)}
        if req.row is not None:
            for kind in self.slot_kinds:
                self.pools.pool(kind).unbind(req.row)
            self.req_to_token.free(req.row)
        req.row = None
        req.items, req.items_first, req.sent = {}, {}, {}
        req.num_pages = 0
        req.num_cached = 0
        return items

    def release(self, req: Request) -> None:
        for kind, ids in self.take(req).items():
            self.pools.allocator(kind).free(ids)
