"""`DeepseekCausalLM`: DeepSeek-V3.2 (MLA with the DSA indexer; dense MLP in the first layers, MoE after).

Every layer is pre-norm: x + attn(norm(x)), then x + mlp(norm(x)). The attention reads and writes the `kv`
(latent) and `dsa` (indexer key) pools through `ctx.backend` (an `MLABackend`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from pdpair.engine.model_config import ModelConfig
from pdpair.engine.models.deepseek_mla import MLAttention
from pdpair.engine.models.deepseek_moe import DenseMLP, MoE
from pdpair.engine.models.deepseek_rope import DeepseekRotary
from pdpair.engine.models.deepseek_weights import load_deepseek_weights
from pdpair.engine.models.layers import RMSNorm, TiedHead
from torch import nn


class DeepseekLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, dtype: torch.dtype) -> None:
        super().__init__()
        mc, h, eps = config.mla, config.hidden_size, config.rms_norm_eps
        assert mc is not None
        self.input_layernorm = RMSNorm(h, eps, dtype)
        self.self_attn = MLAttention(config, layer, dtype)
        self.post_attention_layernorm = RMSNorm(h, eps, dtype)
        self.mlp = MoE(h, mc, dtype) if mc.is_moe(layer) else DenseMLP(h, config.intermediate_size, dtype)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ctx: Any) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, ctx)
        return x + self.mlp(self.post_attention_layernorm(x))


class DeepseekCausalLM(TiedHead, nn.Module):
    """`forward(input_ids [T], positions [T], ctx) -> fp32 logits` for `ctx.logits_indices`, like `CausalLM`."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        assert config.mla is not None, f"{config.arch}: a latent-attention model needs ModelConfig.mla"
        self.config, self.dtype = config, dtype
        self.embed_tokens = nn.Embedding(
            config.vocab_size, config.hidden_size,
            _weight=torch.empty(config.vocab_size, config.hidden_size, dtype=dtype), _freeze=True)
        self.layers = nn.ModuleList(DeepseekLayer(config, i, dtype) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.rotary = DeepseekRotary(config.mla.qk_rope_head_dim, config.rope_theta, config.mla.yarn)
        self.lm_head: nn.Parameter | None = None  # None: tied to embed_tokens
        if not config.tie_word_embeddings:
            self.lm_head = nn.Parameter(
                torch.empty(config.vocab_size, config.hidden_size, dtype=dtype), requires_grad=False)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: Any) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary.cos_sin(positions, x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin, ctx)
        x = self.norm(x[ctx.logits_indices])
        return F.linear(x, self.head_weight).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy Hugging Face-named tensors in place (per-expert or stacked expert tensors)."""
        load_deepseek_weights(self, weights, self.config.num_layers)
