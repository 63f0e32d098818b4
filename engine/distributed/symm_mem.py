"""Buffers that collectives use, pooled per process group (SEEDS.md §5).

On CUDA a buffer is allocated with `torch.distributed._symmetric_memory` and rendezvoused on the group
whose collective will use it; a buffer registered for one group is never handed to another, because every
group has its own pool and the group is a required argument of `get`. On CPU the pool holds plain tensors
(gloo has no symmetric memory) but keeps the same per-group discipline, so the bookkeeping is tested there.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def _capacity(rows: int) -> int:
    """Rows rounded up to a power of two (at least 16), so growing batches reuse a few buffers."""
    return max(16, 1 << max(0, rows - 1).bit_length())


class SymmetricBuffers:
    """`get(group, rows, cols, dtype, device)` -> a [rows, cols] view of a buffer owned by `group`'s pool."""

    def __init__(self) -> None:
        self._pools: dict[dist.ProcessGroup, dict[tuple, torch.Tensor]] = {}
        self._owner: dict[int, dist.ProcessGroup] = {}  # data_ptr of a pooled buffer -> its group

    def get(self, group: dist.ProcessGroup, rows: int, cols: int, dtype: torch.dtype,
            device: torch.device) -> torch.Tensor:
        if not isinstance(group, dist.ProcessGroup):
            raise TypeError(f"a symmetric buffer needs the collective's process group, got {type(group).__name__}")
        pool = self._pools.setdefault(group, {})
        key = (cols, dtype, str(device))
        buf = pool.get(key)
        if buf is None or buf.shape[0] < rows:
            if buf is not None:
                self._owner.pop(buf.data_ptr(), None)
            buf = self._allocate(group, _capacity(rows), cols, dtype, device)
            pool[key] = buf
            self._owner[buf.data_ptr()] = group
        return buf[:rows]

    def owner(self, t: torch.Tensor) -> dist.ProcessGroup | None:
        """The group whose pool holds the buffer `t` starts at (None: not a pooled buffer)."""
        return self._owner.get(t.data_ptr())

    @staticmethod
    def _allocate(group: dist.ProcessGroup, rows: int, cols: int, dtype: torch.dtype,
                  device: torch.device) -> torch.Tensor:
        if device.type != "cuda":
            return torch.empty(rows, cols, dtype=dtype, device=device)
        from torch.distributed import _symmetric_memory as symm_mem

        enable = getattr(symm_mem, "enable_symm_mem_for_group", None)  # needed before torch 2.8, then implied
        if enable is not None:
            enable(group.group_name)
        buf = symm_mem.empty(rows, cols, dtype=dtype, device=device)
        symm_mem.rendezvous(buf, group=group.group_name)
        logger.debug("symmetric buffer [%d, %d] %s registered on group %s", rows, cols, dtype, group.group_name)
        return buf
