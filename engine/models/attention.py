"""GQA self-attention: fused qkv projection, optional q/k RMSNorm, rope, then the attention backend."""

from __future__ import annotations

from typing import Any

import torch
from pdpair.engine.model_config import ModelConfig
from pdpair.engine.models.layers import Linear, RMSNorm, apply_rope
from torch import nn


class Attention(nn.Module):
    """Computes q, k, v for the batch's tokens and hands them to `ctx.backend.forward`."""

    def __init__(self, config: ModelConfig, layer_id: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.q_size = config.q_size
        self.kv_size = config.kv_size
        self.qkv_proj = Linear(
            config.hidden_size, config.q_size + 2 * config.kv_size, bias=config.attention_bias, dtype=dtype
        )
        self.o_proj = Linear(config.q_size, config.hidden_size, bias=config.o_proj_bias, dtype=dtype)
        plus_one = config.norm_plus_one
        self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps, dtype, plus_one) if config.qk_norm else None
        self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps, dtype, plus_one) if config.qk_norm else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ctx: Any) -> torch.Tensor:
        t = x.shape[0]
        qkv = self.qkv_proj(x)
        h, kvh, d = self.num_heads, self.num_kv_heads, self.head_dim
        v = qkv[:, self.q_size + self.kv_size :].view(t, kvh, d)
        if self.q_norm is None:
            # q and k are adjacent in qkv: rotate both with one call
            qk = apply_rope(qkv[:, : self.q_size + self.kv_size].view(t, h + kvh, d), cos, sin)
            q, k = qk[:, :h], qk[:, h:]
        else:
            q = self.q_norm(qkv[:, : self.q_size].view(t, h, d))
            k = self.k_norm(qkv[:, self.q_size : self.q_size + self.kv_size].view(t, kvh, d))
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        o = ctx.backend.forward(q, k, v.contiguous(), self.layer_id, ctx.batch)
        return self.o_proj(o.reshape(t, self.q_size))
