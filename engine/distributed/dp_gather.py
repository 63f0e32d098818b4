"""Gather this step's tokens from every DP rank before a dense layer, scatter them back after it."""

from __future__ import annotations

import torch
from pdpair.engine.distributed.dp_plan import GatherInfo, GatherMode
from pdpair.engine.distributed.groups import ProcessGroups, all_gather_rows, all_reduce
from pdpair.engine.distributed.symm_mem import SymmetricBuffers


class DPGather:
    """Holds the step's `GatherInfo` (set by the rank's runner before each forward).

    Local rows are the rank's padded batch [local_tokens, H] (every rank of an attention group holds the
    same rows). Global rows are every DP rank's padded batch in DP-rank order:
    MAX_LEN lays them out at `dp_rank * max_len`, OFFSETS at `info.offset`.
    """

    def __init__(self, groups: ProcessGroups, buffers: SymmetricBuffers) -> None:
        self.groups = groups
        self.buffers = buffers
        self.info: GatherInfo | None = None

    def _info(self, x: torch.Tensor) -> GatherInfo:
        info = self.info
        assert info is not None, "DP gather without gather info: the runner must set it before every forward"
        assert x.shape[0] == info.local_tokens, f"{x.shape[0]} local rows, gather info says {info.local_tokens}"
        return info

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        info = self._info(x)
        topo = self.groups.topo
        if topo.dp_size == 1:
            return x
        if info.mode is GatherMode.MAX_LEN:
            chunk = info.max_len // topo.attn_tp_size
            padded = x
            if info.local_tokens < info.max_len:
                padded = torch.zeros(info.max_len, x.shape[1], dtype=x.dtype, device=x.device)
                padded[: info.local_tokens] = x
            mine = padded[topo.attn_tp_rank * chunk : (topo.attn_tp_rank + 1) * chunk]
            return all_gather_rows(mine, self.groups.tp)
        buf = self.buffers.get(self.groups.tp, info.total, x.shape[1], x.dtype, x.device)
        buf.zero_()
        if topo.is_dp_leader:  # one writer per DP rank: the sum over the tp group is then a plain copy
            buf[info.offset : info.offset + info.local_tokens] = x
        return all_reduce(buf, self.groups.tp)

    def scatter(self, y: torch.Tensor) -> torch.Tensor:
        info = self.info
        assert info is not None
        if self.groups.topo.dp_size == 1:
            return y
        start = info.dp_rank * info.max_len if info.mode is GatherMode.MAX_LEN else info.offset
        return y[start : start + info.local_tokens].clone()
