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
