"""Hybrid mamba2/attention decoders: Bamba and Granite 4.0-H dense (GraniteMoeHybrid without experts).

Every layer is pre-norm: x + m * mixer(norm(x)), then x + m * mlp(norm(x)), the mixer being a mamba2 layer or
GQA attention (partial rope for Bamba, rope or none for Granite) and m Granite's residual multiplier (1 for
Bamba). Attention layers keep K/V in the paged pool (the backend routes them by model layer id; only the
attention layers are in it); mamba layers use their request's slot of the `mamba` pool (`bind_state`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from pdpair.engine.hybrid_config import HybridConfig
from pdpair.engine.memory.mamba_pool import MambaPool
from pdpair.engine.model_config import ModelConfig
from pdpair.engine.models.attention import Attention
from pdpair.engine.models.hybrid_weights import hybrid_hf_names
from pdpair.engine.models.layers import GatedMLP, RMSNorm, RotaryEmbedding, TiedHead, apply_rope
from pdpair.engine.models.mamba2 import Mamba2Mixer, MambaStep
from pdpair.engine.models.weights import load_hf_weights
from torch import nn


class HybridAttention(Attention):
    """GQA attention with rope on the first `rotary_dim` dims of each head (0: none) and a configurable scale."""

    def __init__(self, config: ModelConfig, hc: HybridConfig, layer_id: int, dtype: torch.dtype) -> None:
        super().__init__(config, layer_id, dtype)
        self.rotary_dim = config.head_dim if hc.rotary_dim is None else hc.rotary_dim
        # the backend scales by head_dim ** -0.5: fold the family's own scale into q
        scale = hc.attention_multiplier
        self.q_scale = 1.0 if scale is None else scale * config.head_dim**0.5

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None, ctx: Any) -> torch.Tensor:
        t = x.shape[0]
        h, kvh, d = self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k, v = q.reshape(t, h, d), k.reshape(t, kvh, d), v.reshape(t, kvh, d)
        if rope is not None and self.rotary_dim:
            rd = self.rotary_dim
            q = torch.cat([apply_rope(q[..., :rd], *rope), q[..., rd:]], dim=-1)
            k = torch.cat([apply_rope(k[..., :rd], *rope), k[..., rd:]], dim=-1)
        if self.q_scale != 1.0:
            q = q * self.q_scale
        o = ctx.backend.forward(q.contiguous(), k.contiguous(), v.contiguous(), self.layer_id, ctx.batch)
        return self.o_proj(o.reshape(t, self.q_size))


class HybridLayer(nn.Module):
    """One decoder layer whose mixer is either `mamba` (mamba2) or `self_attn`."""

    def __init__(self, config: ModelConfig, hc: HybridConfig, layer: int, dtype: torch.dtype) -> None:
        super().__init__()
        h, eps = config.hidden_size, config.rms_norm_eps
        self.residual_multiplier = hc.residual_multiplier
        self.input_layernorm = RMSNorm(h, eps, dtype)
        self.is_mamba = hc.is_mamba(layer)
        if self.is_mamba:
            self.mamba = Mamba2Mixer(hc, h, eps, hc.mamba_layers.index(layer), dtype)
        else:
            self.self_attn = HybridAttention(config, hc, layer, dtype)
        self.post_attention_layernorm = RMSNorm(h, eps, dtype)
        self.mlp = GatedMLP(h, config.intermediate_size, dtype)

    def forward(self, x: torch.Tensor, rope: Any, ctx: Any, step: MambaStep | None) -> torch.Tensor:
        y = self.input_layernorm(x)
        y = self.mamba(y, step) if self.is_mamba else self.self_attn(y, rope, ctx)
        x = x + y * self.residual_multiplier
        return x + self.mlp(self.post_attention_layernorm(x)) * self.residual_multiplier


class HybridCausalLM(TiedHead, nn.Module):
    """`forward(input_ids [T], positions [T], ctx) -> fp32 logits`, like `CausalLM`; `bind_state(pool)` first."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        assert config.hybrid is not None, f"{config.arch}: a hybrid model needs ModelConfig.hybrid"
        hc = config.hybrid
        self.config, self.hybrid, self.dtype = config, hc, dtype
        self.embed_tokens = nn.Embedding(
            config.vocab_size, config.hidden_size,
            _weight=torch.empty(config.vocab_size, config.hidden_size, dtype=dtype), _freeze=True)
        self.layers = nn.ModuleList(HybridLayer(config, hc, i, dtype) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        rd = config.head_dim if hc.rotary_dim is None else hc.rotary_dim
        self.rotary = RotaryEmbedding(rd, config.rope_theta, config.rope_scaling) if rd else None
        self.lm_head: nn.Parameter | None = None  # None: tied to embed_tokens
        if not config.tie_word_embeddings:
            self.lm_head = nn.Parameter(
                torch.empty(config.vocab_size, config.hidden_size, dtype=dtype), requires_grad=False)
        self.state: MambaPool | None = None

    @property
    def num_attention_layers(self) -> int:
        """Layers that keep K/V in the paged pool (the KV pool's layer count)."""
        return self.config.num_layers - self.hybrid.num_mamba_layers

    def bind_state(self, pool: MambaPool) -> None:
        """Use `pool` for the recurrent state of every request (slots found through `pool.row_slots`)."""
        self.state = pool

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: Any) -> torch.Tensor:
        assert self.state is not None, "HybridCausalLM.bind_state(pool) must be called before a forward"
        hc = self.hybrid
        x = self.embed_tokens(input_ids)
        if hc.embedding_multiplier != 1.0:
            x = x * hc.embedding_multiplier
        rope = self.rotary.cos_sin(positions, x.dtype) if self.rotary is not None else None
        step = MambaStep.build(ctx.batch, self.state)
        for layer in self.layers:
            x = layer(x, rope, ctx, step)
        x = self.norm(x[ctx.logits_indices])
        logits = F.linear(x, self.head_weight)
        if hc.logits_scaling != 1.0:
            logits = logits / hc.logits_scaling
        return logits.float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy Hugging Face-named tensors (Bamba or GraniteMoeHybrid names) in place."""
        load_hf_weights(self, hybrid_hf_names(weights))
