"""Overlap scheduling: the decode batch launched last step, whose sampled tokens the host reads this step.

A step launches decode batch k (forward + sampling) before reading batch k-1's tokens, so the host's
bookkeeping of k-1 and the planning of k+1 run while the device computes k. A request of batch k carries a
PENDING_TOKEN as its last output id until k is resolved; its forward takes that token from the device.
A request that finishes (a stop found one step late, an abort) while a batch holding it is in flight is
dropped from that batch: its token there is never emitted, and what it holds is freed only once the
forward that still writes its K/V has completed (`deferred`).
"""

from __future__ import annotations

from pdpair.engine.request import Request
from pdpair.engine.sampled_tokens import SampledTokens


class InFlight:
    def __init__(self, reqs: list[Request], tokens: SampledTokens) -> None:
        self.reqs = reqs
        self.tokens = tokens
        self._live = set(reqs)  # requests whose token of this batch will be emitted
        self.deferred: list[tuple[Request, bool]] = []  # (request, keep its pages for the prefix cache)

    def holds(self, req: Request) -> bool:
        """The request is in this batch and still wants its token."""
        return req in self._live

    def live(self) -> list[Request]:
        """The requests whose token of this batch will be emitted, in batch order."""
        return [r for r in self.reqs if r in self._live]

    def defer(self, req: Request, keep: bool) -> None:
        """Drop the request's token; free what it holds once this batch's forward is done."""
        self._live.discard(req)
        self.deferred.append((req, keep))

    def take_out(self, req: Request) -> None:
        """Drop the request's token and wait for this batch's forward (the caller takes its items now)."""
        self._live.discard(req)
        self.tokens.wait()

    def resolve(self) -> list[tuple[Request, int]]:
        """Wait for the sampled tokens: (request, token) of every live request, in batch order."""
        toks = self.tokens.read()
        return [(r, t) for r, t in zip(self.reqs, toks, strict=True) if r in self._live]
