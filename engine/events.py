"""What the engine hands back: per-step events, per-chunk page events, finished outputs, stats."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StepEvent:
    """New tokens of one request in one step; `finish_reason` is "stop" | "length" | "abort" | "error" once done
    ("error": the request's forward raised; the rest of its batch went on)."""

    rid: str
    new_token_ids: list[int]
    finish_reason: str | None = None


@dataclass(frozen=True, eq=False)
class ChunkEvent:
    """Prefill-only: the items of each pool kind one chunk completed (partial tail page only on the last chunk;
    sliding-window kinds only on the last chunk, their window tail). `kind_starts[kind]` is where they go in
    the destination's registered ids of that kind."""

    rid: str
    kind_pages: dict[str, np.ndarray]
    kind_starts: dict[str, int]
    is_last: bool
    first_token: int | None = None
    # CUDA: an event that completes when the forward that wrote these items has run (see engine/streams.py);
    # a transfer of them must wait for it. None off CUDA.
    ready: object | None = None


@dataclass(frozen=True)
class GenerateOutput:
    """One finished request of `Engine.generate`: generated ids only."""

    token_ids: list[int]
    finish_reason: str


@dataclass(frozen=True)
class SchedulerStats:
    waiting: int
    prefilling: int
    running: int
    held: int
    prealloc: int
    free_pages: int
    total_pages: int
    cached_pages: int = 0  # prefix cache: pages it holds, hit tokens and evicted pages since start
    cache_hit_tokens: int = 0
    cache_evicted_pages: int = 0
