"""Decode batching: every running request advances one token per step; pages grow a page at a time."""

from __future__ import annotations

import logging
from collections.abc import Callable

from pdpair.engine.request import PENDING_TOKEN, Request
from pdpair.engine.scheduler.resources import ResourceManager

logger = logging.getLogger(__name__)


class DecodeManager:
    def __init__(self, resources: ResourceManager) -> None:
        self.resources = resources
        self.reqs: list[Request] = []
        self._penalised = 0  # requests here with penalties or logit_bias

    def __len__(self) -> int:
        return len(self.reqs)

    @property
    def uses_penalties(self) -> bool:
        """A request here uses penalties or logit_bias (they need every output id on the host)."""
        return self._penalised > 0

    def add(self, req: Request) -> None:
        self.reqs.append(req)
        self._penalised += req.sampling.uses_penalties

    def remove(self, req: Request) -> None:
        self.reqs.remove(req)
        self._penalised -= req.sampling.uses_penalties

    def discard(self, req: Request) -> None:
        """Remove the request if it is here (a retracted one is not)."""
        if any(r is req for r in self.reqs):
            self.remove(req)

    def next_batch(self, skip: Callable[[list[Request]], set[Request]] | None = None
                   ) -> tuple[list[Request], list[Request]]:
        """(batch, retracted): pages for the next token of every request; when the pool runs dry the
        newest requests are retracted: removed here, the caller frees them and re-queues them for prefill.
        The requests in `skip(requests)` stay here but are neither grown nor batched (overlap scheduling: their
        token in flight is their last)."""
        retracted: list[Request] = []
        res = self.resources
        ps = res.page_size
        if res.has_windows:  # sliding-window pages behind the next token's window go back first, but not the
            # ones the decode forward in flight (overlap: a pending last token) still reads
            for req in self.reqs:
                res.trim(req, int(req.output_ids[-1] == PENDING_TOKEN))
        skipped = skip(self.reqs) if skip is not None else set()
        # a request at a page boundary needs a new page (of every kind) for its next token
        needs = [r.num_cached >= r.num_pages * ps and r not in skipped for r in self.reqs]
        need = sum(needs)
        while self.reqs:
            free = res.min_free
            if need <= free or len(self.reqs) == 1:
                break
            victim = self.reqs[-1]
            logger.debug("retracting %s: %d pages free, %d needed", victim.rid, free, need,
                         extra={"rid": victim.rid})
            self.remove(victim)
            need -= needs.pop()
            retracted.append(victim)
        batch = []
        with res.req_to_token.batched():  # the new pages of every request go to the request table at once
            for req, needs_page in zip(list(self.reqs), needs, strict=True):
                if req in skipped:
                    continue
                if (not needs_page and not res.has_windows) or res.grow(req, req.num_cached + 1):
                    batch.append(req)  # (no sliding windows: off a page boundary, its next slot is held)
                else:
                    self.remove(req)
                    retracted.append(req)
        return batch, retracted
