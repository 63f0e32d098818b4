"""Pages and request-table rows held by requests: acquire, grow, give back."""

from __future__ import annotations

import numpy as np
from pdpair.engine.memory import PoolSet, ReqToTokenPool
from pdpair.engine.request import Request


class ResourceManager:
    """Every allocation a request makes goes through here, so freeing can never miss a pool."""

    def __init__(self, pools: PoolSet, req_to_token: ReqToTokenPool) -> None:
        self.pools = pools
        self.req_to_token = req_to_token
        self.page_size = pools.page_size
        self.kv = pools.allocator("kv")

    def pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    def can_acquire(self, num_tokens: int, reserve_pages: int) -> bool:
        return (self.req_to_token.num_free > 0
                and self.kv.num_free - self.pages_for(num_tokens) >= reserve_pages)

    def acquire(self, req: Request, num_tokens: int, reserve_pages: int) -> bool:
        """Give a non-resident request a table row and the pages for its first `num_tokens` tokens."""
        assert req.row is None and req.num_pages == 0, f"request {req.rid} already holds resources"
        if not self.can_acquire(num_tokens, reserve_pages):
            return False
        req.row = self.req_to_token.alloc()
        assert self.grow(req, num_tokens), "pages vanished between check and allocation"
        return True

    def grow(self, req: Request, num_tokens: int) -> bool:
        """Make sure the request's pages cover `num_tokens` tokens; False (nothing taken) if the pool is short."""
        missing = self.pages_for(num_tokens) - req.num_pages
        if missing <= 0:
            return True
        pages = self.kv.alloc(missing)
        if pages is None:
            return False
        self.req_to_token.assign_pages(req.row, req.num_pages, pages)
        req.kv_pages = np.concatenate([req.kv_pages, pages]) if req.num_pages else pages
        return True

    def take(self, req: Request) -> dict[str, np.ndarray]:
        """Detach everything the request holds and hand it to the caller."""
        items = {"kv": req.kv_pages}
        if req.row is not None:
            self.req_to_token.free(req.row)
        req.row = None
        req.kv_pages = np.zeros(0, dtype=np.int32)
        req.num_cached = 0
        req.pages_reported = 0
        return items

    def release(self, req: Request) -> None:
        for kind, ids in self.take(req).items():
            self.pools.allocator(kind).free(ids)
