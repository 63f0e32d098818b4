"""Decode batching: every running request advances one token per step; pages grow a page at a time."""

from __future__ import annotations

import logging

from pdpair.engine.request import Request
from pdpair.engine.scheduler.resources import ResourceManager

logger = logging.getLogger(__name__)


class DecodeManager:
    def __init__(self, resources: ResourceManager) -> None:
        self.resources = resources
        self.reqs: list[Request] = []

    def __len__(self) -> int:
        return len(self.reqs)

    def add(self, req: Request) -> None:
        self.reqs.append(req)

    def remove(self, req: Request) -> None:
        self.reqs.remove(req)

    def next_batch(self) -> tuple[list[Request], list[Request]]:
        """(batch, retracted): pages for the next token of every request; when the pool runs dry the
        newest requests are retracted: removed here, the caller frees them and re-queues them for prefill."""
        retracted: list[Request] = []
        ps = self.resources.page_size
        while self.reqs:
            need = sum(1 for r in self.reqs if r.num_cached >= r.num_pages * ps)
            if need <= self.resources.kv.num_free or len(self.reqs) == 1:
                break
            victim = self.reqs.pop()
            logger.debug("retracting %s: %d pages free, %d needed", victim.rid, self.resources.kv.num_free, need,
                         extra={"rid": victim.rid})
            retracted.append(victim)
        batch = []
        for req in list(self.reqs):
            if self.resources.grow(req, req.num_cached + 1):
                batch.append(req)
            else:
                self.reqs.remove(req)
                retracted.append(req)
        return batch, retracted
