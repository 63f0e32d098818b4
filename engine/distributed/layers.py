"""Tensor-parallel layers built from an already loaded layer: row-parallel linear, DP-gathered MLP."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pdpair.engine.distributed.dp_gather import DPGather
from pdpair.engine.distributed.groups import all_reduce
from torch import nn


class RowParallelLinear(nn.Module):
    """`y = all_reduce(x_shard W_shard^T) + b`: the input features are split over `group`."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, group: dist.ProcessGroup) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.clone(), requires_grad=False)
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = all_reduce(F.linear(x, self.weight), self.group)
        return y if self.bias is None else y + self.bias


class DPGatheredMLP(nn.Module):
    """DP attention: the MLP runs tensor-parallel over every rank on the tokens of every DP rank."""

    def __init__(self, mlp: nn.Module, dp: DPGather) -> None:
        super().__init__()
        self.mlp = mlp
        self.dp = dp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dp.scatter(self.mlp(self.dp.gather(x)))
