"""RunningManager: generation streams in flight, with the timings behind TTFT and inter-token latency."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(eq=False)
class Stream:
    rid: str
    prompt_tokens: int
    arrived: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    last_token_at: float | None = None
    output_tokens: int = 0

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.arrived


class RunningManager:
    def __init__(self, on_ttft: Callable[[float], None] | None = None,
                 on_itl: Callable[[float], None] | None = None, clock: Callable[[], float] = time.perf_counter):
        self._streams: dict[str, Stream] = {}
        self._on_ttft, self._on_itl, self._clock = on_ttft, on_itl, clock

    def start(self, rid: str, prompt_tokens: int) -> Stream:
        if rid in self._streams:
            raise ValueError(f"request id {rid!r} is already streaming")
        s = self._streams[rid] = Stream(rid, prompt_tokens, arrived=self._clock())
        return s

    def tokens(self, rid: str, n: int) -> Stream:
        """Record n new tokens delivered now; the first delivery sets the TTFT."""
        s = self._streams[rid]
        if n <= 0:
            return s
        now = self._clock()
        if s.first_token_at is None:
            s.first_token_at = now
            if self._on_ttft:
                self._on_ttft(now - s.arrived)
        elif self._on_itl:
            gap = (now - s.last_token_at) / n  # tokens delivered together share the gap
            for _ in range(n):
                self._on_itl(gap)
        s.output_tokens += n
        s.last_token_at = now
        return s

    def finish(self, rid: str) -> Stream | None:
        return self._streams.pop(rid, None)

    def __len__(self) -> int:
        return len(self._streams)
