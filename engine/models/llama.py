"""The decoder family: Llama, Qwen2 (qkv bias), Qwen3 (q/k norm, optional sliding-window layers) and Gemma 3
text (GeGLU, (1 + w) norms around attention and MLP, scaled embeddings, local rope base, logit softcapping)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from pdpair.engine.attention.base import AttentionBackend
from pdpair.engine.model_config import ModelConfig
from pdpair.engine.models.attention import Attention
from pdpair.engine.models.layers import GatedMLP, RMSNorm, RotaryEmbedding, TiedHead
from pdpair.engine.models.weights import load_hf_weights
from torch import nn


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)).

    Sandwich variant (Gemma 3): x + post_attn_norm(attn(norm(x))), then x + post_ff_norm(mlp(pre_ff_norm(x))).
    """

    def __init__(self, config: ModelConfig, layer_id: int, dtype: torch.dtype) -> None:
        super().__init__()
        h, eps, one = config.hidden_size, config.rms_norm_eps, config.norm_plus_one
        self.sandwich = config.sandwich_norm
        self.input_layernorm = RMSNorm(h, eps, dtype, one)
        self.self_attn = Attention(config, layer_id, dtype)
        self.post_attention_layernorm = RMSNorm(h, eps, dtype, one)
        if self.sandwich:
            self.pre_feedforward_layernorm = RMSNorm(h, eps, dtype, one)
            self.post_feedforward_layernorm = RMSNorm(h, eps, dtype, one)
        self.mlp = GatedMLP(h, config.intermediate_size, dtype, config.hidden_act)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ctx: Any) -> torch.Tensor:
        if not self.sandwich:
            x = x + self.self_attn(self.input_layernorm(x), cos, sin, ctx)
            return x + self.mlp(self.post_attention_layernorm(x))
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin, ctx))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class CausalLM(TiedHead, nn.Module):
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
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype, config.norm_plus_one)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_scaling)
        # sliding layers with their own rope base (Gemma 3's rope_local_base_freq): default rope, no scaling
        self.rotary_local = (RotaryEmbedding(config.head_dim, config.rope_local_theta, None)
                             if config.rope_local_theta is not None else None)
        self._local = [config.is_sliding(i) for i in range(config.num_layers)]
        self.lm_head: nn.Parameter | None = None  # None: tied to embed_tokens
        if not config.tie_word_embeddings:
            self.lm_head = nn.Parameter(
                torch.empty(config.vocab_size, config.hidden_size, dtype=dtype), requires_grad=False
            )
        self.vocab_head: nn.Module | None = None  # a vocab-parallel rank's head (engine/distributed/vocab.py)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: Any) -> torch.Tensor:
        if isinstance(ctx.backend, AttentionBackend) and ctx.backend.fused_ops:
            from pdpair.engine.models.fused import fused_forward

            return fused_forward(self, input_ids, positions, ctx)
        x = self.embed_tokens(input_ids)
        cfg = self.config
        if cfg.embed_scale:  # the scale rounded to the activations' dtype first, as Hugging Face's Gemma does
            x = x * torch.tensor(cfg.hidden_size**0.5, dtype=x.dtype)
        rope = self.rotary.cos_sin(positions, x.dtype)
        local = self.rotary_local.cos_sin(positions, x.dtype) if self.rotary_local is not None else rope
        for layer, is_local in zip(self.layers, self._local, strict=True):
            x = layer(x, *(local if is_local else rope), ctx)
        logits = self.logits(self.norm(x[ctx.logits_indices]))
        if cfg.final_logit_softcapping is not None:
            logits = torch.tanh(logits / cfg.final_logit_softcapping) * cfg.final_logit_softcapping
        return logits

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """fp32 logits `[rows, vocab]` of final-normed hidden rows, before softcapping: the LM head (the embedding
        when tied), or on a vocab-parallel rank its slice gathered over the group (`vocab_head`)."""
        if self.vocab_head is not None:
            return self.vocab_head(x)
        return F.linear(x, self.head_weight).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy Hugging Face-named tensors (`model.layers.0.self_attn.q_proj.weight`, ...) in place."""
        load_hf_weights(self, weights)
