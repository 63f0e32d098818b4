"""Sampled token ids on their way to the host: started without waiting, read one step later."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SampledTokens:
    """A device tensor of token ids copied into pinned host memory behind an event (CUDA), or the ids
    themselves where ops are synchronous (CPU). `read()` waits for the copy, not for the whole device."""

    host: torch.Tensor
    event: torch.cuda.Event | None = None

    @classmethod
    def start(cls, tokens: torch.Tensor) -> SampledTokens:
        if tokens.device.type != "cuda":
            return cls(tokens)
        host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
        host.copy_(tokens, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return cls(host, event)

    def wait(self) -> None:
        """Until the tokens (and the work queued before them: their forward) are done."""
        if self.event is not None:
            self.event.synchronize()

    def read(self) -> list[int]:
        self.wait()
        return self.host.tolist()
