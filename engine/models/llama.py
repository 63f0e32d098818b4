"""The decoder family: Llama, Qwen2 (qkv bias) and Qwen3 (q/k norm), tied or untied embeddings."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from pdpair.engine.attention.base import AttentionBackend
from pdpair.engine.model_config import ModelConfig
from pdpair.engine.models.attention import Attention
from pdpair.engine.models.layers import RMSNorm, RotaryEmbedding, SwiGLUMLP
from pdpair.engine.models.weights import load_hf_weights
from torch import nn


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig, layer_id: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.self_attn = Attention(config, layer_id, dtype)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.mlp = SwiGLUMLP(config.hidden_size, config.intermediate_size, dtype)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ctx: Any) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, ctx)
        return x + self.mlp(self.post_attention_layernorm(x))


class CausalLM(nn.Module):
    """`forward(input_ids [T], positions [T], ctx) -> fp32 logits [len(ctx.logits_indices), vocab]`.

    `ctx` carries `.backend` (attention backend), `.batch` (what the backend needs) and
    `.logits_indices` (int64 rows of the T tokens whose logits are wanted).
    """

    def __init__(self, config: ModelConfig, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.config = config
        self.dtype = dtype
        self.embed_tokens = nn.Embedding(
            config.vocab_size, config.hidden_size, _weight=torch.empty(config.vocab_size, config.hidden_size, dtype=dtype),
            _freeze=True,
        )
        self.layers = nn.ModuleList(DecoderLayer(config, i, dtype) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_scaling)
        self.lm_head: nn.Parameter | None = None  # None: tied to embed_tokens
        if not config.tie_word_embeddings:
            self.lm_head = nn.Parameter(
                torch.empty(config.vocab_size, config.hidden_size, dtype=dtype), requires_grad=False
            )

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: Any) -> torch.Tensor:
        if isinstance(ctx.backend, AttentionBackend) and ctx.backend.fused_ops:
            from pdpair.engine.models.fused import fused_forward

            return fused_forward(self, input_ids, positions, ctx)
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary.cos_sin(positions, x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin, ctx)
        x = self.norm(x[ctx.logits_indices])
        head = self.embed_tokens.weight if self.lm_head is None else self.lm_head
        return F.linear(x, head).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy Hugging Face-named tensors (`model.layers.0.self_attn.q_proj.weight`, ...) in place."""
        load_hf_weights(self, weights)
