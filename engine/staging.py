"""Host-to-device staging for per-step metadata: one pinned buffer and one non-blocking copy per dtype.

A pageable `torch.tensor(list, device="cuda")` waits for the stream's queued work before it copies, so every
such call in the step loop serialises the host with the GPU. Packing a step's small arrays into one pinned
buffer (PyTorch's caching host allocator keeps the block alive until the copy has run) lets the host go on
building the next pieces while the GPU works.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

_NP = {torch.int64: np.int64, torch.int32: np.int32, torch.float32: np.float32}


def stage(arrays: Sequence[np.ndarray | Sequence], device: torch.device,
          dtype: torch.dtype = torch.int64) -> list[torch.Tensor]:
    """`arrays` (1-D, any lengths) as `dtype` tensors on the CUDA `device`, through one pinned buffer and one
    non-blocking copy; the results are views of one device buffer."""
    assert torch.device(device).type == "cuda", f"staging is for CUDA devices, got {device}"
    parts = [np.asarray(a, dtype=_NP[dtype]).reshape(-1) for a in arrays]
    sizes = [len(p) for p in parts]
    host = torch.empty(sum(sizes), dtype=dtype, pin_memory=True)
    if sizes and sum(sizes):
        np.concatenate(parts, out=host.numpy())
    return list(host.to(device, non_blocking=True).split(sizes))


class HostRing:
    """`depth` host buffers of `numel` elements, used in turn for the copies of one per-step transfer: pinned
    on CUDA (allocated once, so the step loop never meets a pinned allocation or its events), plain memory
    elsewhere. `take()` hands out the next buffer once the copy issued from it `depth` turns ago has
    completed; `issued()` marks the copy just queued from (or into) it. Each turn has a number, so a reader
    can check that its buffer was not handed out again in between (`owns`)."""

    def __init__(self, numel: int, dtype: torch.dtype, depth: int, cuda: bool) -> None:
        assert depth >= 2, f"a ring needs two buffers at least, got {depth}"
        self.buffers = [torch.empty(numel, dtype=dtype, pin_memory=cuda) for _ in range(depth)]
        self.events = [torch.cuda.Event() for _ in range(depth)] if cuda else None
        self.turn = -1  # turns taken so far, minus one: buffer `turn % depth` is the current one

    def take(self) -> tuple[int, torch.Tensor]:
        """(turn, buffer): the next buffer, free for the host to fill or the device to write."""
        self.turn += 1
        i = self.turn % len(self.buffers)
        if self.events is not None:
            self.events[i].synchronize()  # the copy of `depth` turns ago (long done in a step loop)
        return self.turn, self.buffers[i]

    def issued(self) -> None:
        """A copy from or into the current buffer was queued on the current stream."""
        if self.events is not None:
            self.events[self.turn % len(self.buffers)].record()

    def owns(self, turn: int) -> bool:
        """Turn `turn`'s buffer has not been handed out again since."""
        return self.turn - turn < len(self.buffers)
