"""Sampled token ids on their way to the host: started without waiting, read one step later."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pdpair.engine.staging import HostRing


@dataclass
class SampledTokens:
    """A device tensor of token ids copied into the next pinned buffer of a `HostRing` behind the ring's event
    (CUDA), or the ids themselves where ops are synchronous (CPU). `read()` waits for the copy, not for the
    whole device, and must come before the ring comes round to that buffer again."""

    host: torch.Tensor
    event: torch.cuda.Event | None = None
    ring: HostRing | None = None
    turn: int = 0

    @classmethod
    def start(cls, tokens: torch.Tensor, ring: HostRing) -> SampledTokens:
        if tokens.device.type != "cuda":
            return cls(tokens)
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
