"""Failure isolation: run a batch, and when the forward raises, find the requests that make it fail.

A failing batch is split in halves and each half re-run, down to single requests, so one poison request
fails alone while the rest of its batch advances. Re-running is safe: a forward writes K/V at positions
the request owns and changes no request state before it returns, and seeded draws depend only on
(seed, position). The cost is paid only when a forward raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pdpair.engine.faults import InjectedFault
from pdpair.engine.request import Request

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class Failed:
    req: Request
    error: BaseException


RunFn = Callable[[list[Request], list[int]], list[int | None]]


class Isolator:
    def __init__(self, poison_token: int | None = None) -> None:
        self.poison_token = poison_token
        self.failed_requests = 0

    def _check_poison(self, reqs: Sequence[Request]) -> None:
        tok = self.poison_token
        if tok is not None and any(tok in r.input_ids for r in reqs):
            raise InjectedFault(f"fault injection: token {tok} in the batch (PDPAIR_FAULT_POISON_TOKEN)")

    def run(self, run: RunFn, reqs: list[Request], lens: list[int]) -> tuple[list[tuple[Request, int, int | None]],
                                                                               list[Failed]]:
        """[(req, extend_len, token)] for the requests that advanced, and the requests that failed."""
        try:
            self._check_poison(reqs)
            toks = run(reqs, lens)
            return list(zip(reqs, lens, toks, strict=True)), []
        except Exception as exc:
            if len(reqs) == 1:
                logger.error("request %s failed its forward: %s", reqs[0].rid, exc,
                             exc_info=not isinstance(exc, InjectedFault))
                self.failed_requests += 1
                return [], [Failed(reqs[0], exc)]
            logger.warning("a batch of %d failed (%s): re-running it in halves", len(reqs), exc)
        mid = len(reqs) // 2
        ok_a, bad_a = self.run(run, reqs[:mid], lens[:mid])
        ok_b, bad_b = self.run(run, reqs[mid:], lens[mid:])
        return ok_a + ok_b, bad_a + bad_b
