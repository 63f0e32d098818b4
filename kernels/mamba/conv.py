"""Mamba2's causal depthwise conv1d (SiLU after it) carried across calls by a state of the last d_conv - 1
inputs: a whole segment for prefill, one token per row for decode. Torch twins (the reference path)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d_ref(x: torch.Tensor, state: torch.Tensor | None, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence segment: x [n, C] after the inputs held in `state` [C, K - 1] (None: zeros, a fresh
    sequence); weight [C, K]. Returns (silu(conv) [n, C], the new state [C, K - 1])."""
    n, channels = x.shape
    k = weight.shape[1]
    if state is None:
        state = x.new_zeros(channels, k - 1)
    full = torch.cat([state.to(x.dtype), x.t()], dim=1)  # [C, K - 1 + n]
    out = F.conv1d(full[None].to(weight.dtype), weight[:, None, :], bias, groups=channels)[0]  # [C, n]
    return F.silu(out).t().to(x.dtype), full[:, -(k - 1):]


def conv_update_ref(x: torch.Tensor, state: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row: x [B, C], state [B, C, K - 1]. Returns (silu(conv) [B, C], new state [B, C, K - 1])."""
    full = torch.cat([state.to(x.dtype), x[:, :, None]], dim=2)  # [B, C, K]
    out = (full.to(weight.dtype) * weight[None]).sum(-1)
    if bias is not None:
        out = out + bias
    return F.silu(out).to(x.dtype), full[:, :, 1:]
