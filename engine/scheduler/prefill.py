"""Chunked prefill: admitted requests share a per-step token budget, oldest first."""

from __future__ import annotations

from pdpair.engine.request import Request
from pdpair.engine.scheduler.resources import ResourceManager


class PrefillManager:
    def __init__(self, chunk_size: int, resources: ResourceManager | None = None) -> None:
        self.chunk_size = chunk_size
        self.resources = resources  # gives back sliding-window pages behind each request's next chunk
        self.reqs: list[Request] = []

    def __len__(self) -> int:
        return len(self.reqs)

    def add(self, reqs: list[Request]) -> None:
        self.reqs.extend(reqs)

    def remove(self, req: Request) -> None:
        self.reqs.remove(req)

    def next_batch(self) -> tuple[list[Request], list[int]] | None:
        """Requests and how many tokens each extends this step (sum <= chunk_size)."""
        budget, reqs, lens = self.chunk_size, [], []
        for req in self.reqs:
            if budget == 0:
                break
            n = min(req.num_pending, budget)
            if self.resources is not None:  # sliding-window pages: drop those behind, add this chunk's
                self.resources.trim(req)
                if not self.resources.grow(req, req.num_cached + n):
                    continue
            reqs.append(req)
            lens.append(n)
            budget -= n
        return (reqs, lens) if reqs else None
