"""A request's state inside an engine: integer lengths are the truth, everything else is derived."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np
from pdpair.engine.sampling import SamplingParams

# An output id sampled on the device whose value the host has not read yet (overlap scheduling): the last
# output id of a request in the in-flight decode batch, replaced by the real id one step later.
PENDING_TOKEN = -1


class ReqStatus(Enum):
    WAITING = "waiting"  # queued, holds nothing
    PREFILLING = "prefilling"  # holds a table row and the pages of its whole fill_ids
    RUNNING = "running"  # decoding
    HELD = "held"  # prefill-only, done: pages resident until detach/release
    PREALLOC = "prealloc"  # decode side: pages reserved, waiting for remote KV + activate()
    FINISHED = "finished"


@dataclass(eq=False)
class Request:
    """One generation request. `fill_ids = input_ids + output_ids`; the first `num_cached` have K/V cached."""

    rid: str
    input_ids: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    output_ids: list[int] = field(default_factory=list)
    status: ReqStatus = ReqStatus.WAITING
    prefill_only: bool = False
    num_cached: int = 0
    row: int | None = None  # request-table row while resident
    num_pages: int = 0  # pages of context covered by the full-context kinds (sliding-window kinds: up to it)
    # per pool kind: the item ids held, in page order, the first one being page `items_first[kind]`
    # (a sliding-window kind gives back the pages behind its window, so its first page moves forward)
    items: dict[str, np.ndarray] = field(default_factory=dict)
    items_first: dict[str, int] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)  # prefill-only: per kind, pages announced in ChunkEvents
    # prefix cache: pages [0, shared_pages) of every paged kind are borrowed from the cache (never written);
    # cache_node is the cached page they end at, locked while the request holds them
    shared_pages: int = 0
    cache_node: object | None = None
    peer_cached_pages: int = 0  # prefill-only: leading pages the destination already holds (never sent)
    seed: int = 0  # effective sampling seed (sampling.seed, or one drawn at submit)
    finish_reason: str | None = None

    def __post_init__(self) -> None:
        self.input_ids = [int(t) for t in self.input_ids]
        if not self.input_ids:
            raise ValueError(f"request {self.rid!r}: empty prompt")
        if not isinstance(self.sampling, SamplingParams):
            raise ValueError(f"request {self.rid!r}: sampling must be SamplingParams, got {type(self.sampling)}")
        assert 0 <= self.num_cached <= self.seq_len, f"num_cached {self.num_cached} outside [0, {self.seq_len}]"

    @property
    def origin_input_ids(self) -> list[int]:
        return self.input_ids

    @property
    def fill_ids(self) -> list[int]:
        return self.input_ids + self.output_ids

    @property
    def prompt_len(self) -> int:
        return len(self.input_ids)

    @property
    def seq_len(self) -> int:
        return len(self.input_ids) + len(self.output_ids)

    @property
    def num_pending(self) -> int:
        """Tokens of fill_ids whose K/V are not cached yet."""
        return self.seq_len - self.num_cached

    def pages(self, kind: str, first: int, end: int) -> np.ndarray:
        """Item ids of `kind` for pages [first, end) of the context; every one of them must be held."""
        lo = self.items_first.get(kind, 0)
        held = self.items.get(kind, np.zeros(0, dtype=np.int32))
        assert lo <= first <= end <= lo + len(held), (
            f"{self.rid}: {kind} pages [{first}, {end}) not held (holds [{lo}, {lo + len(held)}))")
        return held[first - lo : end - lo]

    def tokens(self, start: int, end: int) -> list[int]:
        """fill_ids[start:end] without building fill_ids."""
        n = self.prompt_len
        if end <= n:
            return self.input_ids[start:end]
        if start >= n:
            return self.output_ids[start - n : end - n]
        return self.input_ids[start:] + self.output_ids[: end - n]
