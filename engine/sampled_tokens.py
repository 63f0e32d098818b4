"""Sampled token ids on their way to the host: started without waiting, read one step later."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pdpair.engine.staging import HostRing


@dataclass
class SampledTokens:
    """A device tensor of token ids copied into pinned host memory behind an event (CUDA), or the ids
    themselves where ops are synchronous (CPU). `read()` waits for the copy, not for the whole device.
    With a `HostRing` the copy lands in its next buffer (no pinned allocation per step); it must be read
    before the ring comes round to that buffer again."""

    host: torch.Tensor
    event: torch.cuda.Event | None = None
    ring: HostRing | None = None
    turn: int = 0

    @classmethod
    def start(cls, tokens: torch.Tensor, ring: HostRing | None = None) -> SampledTokens:
        if tokens.device.type != "cuda":
            return cls(tokens)
        if ring is None:
            host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
            host.copy_(tokens, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            return cls(host, event)
        turn, buf = ring.take()
        host = buf[: tokens.shape[0]]
        host.copy_(tokens, non_blocking=True)
        ring.issued()
        return cls(host, ring.events[turn % len(ring.buffers)], ring, turn)

    def wait(self) -> None:
        """Until the tokens (and the work queued before them: their forward) are done."""
        if self.event is not None:
            self.event.synchronize()

    def read(self) -> list[int]:
        self.wait()
        assert self.ring is None or self.ring.owns(self.turn), (
            f"sampled tokens of turn {self.turn} read after their buffer was reused (ring at turn {self.ring.turn})")
        return self.host.tolist()
