"""DeepSeek's rotary embedding of the rope part: default or YaRN frequencies, cos/sin scaled by YaRN's attention
factor; the latent attention rotates interleaved pairs, the indexer rotates halves (as in the reference)."""

from __future__ import annotations

import math

import torch
from pdpair.engine.mla_config import YarnRope
from pdpair.engine.models.layers import apply_rope
from torch import nn


def yarn_inv_freq(dim: int, theta: float, yarn: YarnRope) -> torch.Tensor:
    """YaRN inverse frequencies [dim // 2]: interpolated below the correction range, extrapolated above it."""
    def correction_dim(rotations: float) -> float:
        return dim * math.log(yarn.original_max_position_embeddings / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(yarn.beta_fast), correction_dim(yarn.beta_slow)
    if yarn.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    extrapolate = 1 - ramp
    return (1.0 / (yarn.factor * pos_freqs)) * ramp + (1.0 / pos_freqs) * extrapolate


class DeepseekRotary(nn.Module):
    """cos, sin [T, 1, dim // 2] at given positions (already multiplied by the YaRN attention factor)."""

    def __init__(self, dim: int, theta: float, yarn: YarnRope | None) -> None:
        super().__init__()
        if yarn is None:
            inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        else:
            inv_freq = yarn_inv_freq(dim, theta, yarn)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.factor = 1.0 if yarn is None else yarn.attention_factor

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        cos, sin = freqs.cos() * self.factor, freqs.sin() * self.factor
        return cos.to(dtype)[:, None, :], sin.to(dtype)[:, None, :]


def rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs (x0, x1), (x2, x3), ... of `x` [T, heads, dim]; the result lists the pairs' first
    elements, then their second ones (the reference's layout, for queries and cached keys alike)."""
    return apply_rope(torch.cat([x[..., 0::2], x[..., 1::2]], dim=-1), cos, sin)
