"""DeepSeek-V3.2 attention: MLA with q LoRA and a compressed, latent KV cache, plus the DSA lightning indexer.

Every token stores one latent vector per layer (normalised compressed KV, then the roped shared key part) in the
`kv` pool and one indexer key in the `dsa` pool. Attention runs in the weight-absorbed form for prefill and
decode alike: q_nope is multiplied by the key half of `kv_b_proj` into latent space, the latent output by its
value half. A query attends to the `index_topk` tokens the indexer selects (all visible tokens when it sees
no more than that).
"""

from __future__ import annotations

from typing import Any

import torch
from pdpair.engine.mla_config import MLAConfig
from pdpair.engine.model_config import ModelConfig
from pdpair.engine.models.deepseek_rope import rope_interleaved
from pdpair.engine.models.layers import Linear, RMSNorm, apply_rope
from torch import nn


class Indexer(nn.Module):
    """Indexer queries from the q LoRA residual, one key per token (LayerNorm, half-split rope on the first
    qk_rope_head_dim dims) and fp32 per-head weights."""

    def __init__(self, hidden: int, mc: MLAConfig, dtype: torch.dtype) -> None:
        super().__init__()
        self.mc = mc
        self.wq_b = Linear(mc.q_lora_rank, mc.index_n_heads * mc.index_head_dim, bias=False, dtype=dtype)
        self.wk = Linear(hidden, mc.index_head_dim, bias=False, dtype=dtype)
        self.k_norm = nn.LayerNorm(mc.index_head_dim, eps=1e-6, dtype=dtype)
        self.k_norm.requires_grad_(False)
        self.weights_proj = Linear(hidden, mc.index_n_heads, bias=False, dtype=torch.float32)
        self.weight_scale = mc.index_head_dim**-0.5 * mc.index_n_heads**-0.5

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        r = self.mc.qk_rope_head_dim
        return torch.cat([apply_rope(x[..., :r], cos, sin), x[..., r:]], dim=-1)

    def key(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """[T, index_head_dim] keys of the batch's tokens."""
        return self._rope(self.k_norm(self.wk(x))[:, None], cos, sin)[:, 0]

    def query(self, x: torch.Tensor, q_resid: torch.Tensor, cos: torch.Tensor,
              sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(q [T, Hi, Di], weights fp32 [T, Hi] scaled by Di ** -0.5 * Hi ** -0.5)."""
        mc = self.mc
        q = self._rope(self.wq_b(q_resid).view(-1, mc.index_n_heads, mc.index_head_dim), cos, sin)
        return q, self.weights_proj(x.float()) * self.weight_scale


class MLAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int, dtype: torch.dtype) -> None:
        super().__init__()
        mc = config.mla
        assert mc is not None, "MLAttention needs ModelConfig.mla"
        self.mc, self.layer_id, self.num_heads = mc, layer_id, config.num_heads
        h, heads = config.hidden_size, config.num_heads
        self.q_a_proj = Linear(h, mc.q_lora_rank, bias=False, dtype=dtype)
        self.q_a_layernorm = RMSNorm(mc.q_lora_rank, 1e-6, dtype)
        self.q_b_proj = Linear(mc.q_lora_rank, heads * mc.qk_head_dim, bias=False, dtype=dtype)
        self.kv_a_proj_with_mqa = Linear(h, mc.latent_dim, bias=False, dtype=dtype)
        self.kv_a_layernorm = RMSNorm(mc.kv_lora_rank, 1e-6, dtype)
        self.kv_b_proj = Linear(mc.kv_lora_rank, heads * (mc.qk_nope_head_dim + mc.v_head_dim), bias=False,
                                dtype=dtype)
        self.o_proj = Linear(heads * mc.v_head_dim, h, bias=False, dtype=dtype)
        self.indexer = Indexer(h, mc, dtype)
        self.scale = mc.softmax_scale

    def _absorbed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """kv_b_proj as (W_UK [H, Dn, Dl], W_UV [H, Dv, Dl])."""
        mc = self.mc
        w = self.kv_b_proj.weight.view(self.num_heads, mc.qk_nope_head_dim + mc.v_head_dim, mc.kv_lora_rank)
        return w[:, : mc.qk_nope_head_dim], w[:, mc.qk_nope_head_dim :]

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ctx: Any) -> torch.Tensor:
        mc, t, heads = self.mc, x.shape[0], self.num_heads
        lists, ops = ctx.backend.lists, ctx.backend.ops
        latent, index_k = ctx.backend.latent_layer(self.layer_id), ctx.backend.index_layer(self.layer_id)
        q_resid = self.q_a_layernorm(self.q_a_proj(x))
        q_nope, q_rope = self.q_b_proj(q_resid).view(t, heads, mc.qk_head_dim).split(
            [mc.qk_nope_head_dim, mc.qk_rope_head_dim], dim=-1)
        c, k_rope = self.kv_a_proj_with_mqa(x).split([mc.kv_lora_rank, mc.qk_rope_head_dim], dim=-1)
        q_rope = rope_interleaved(q_rope, cos, sin)
        k_rope = rope_interleaved(k_rope[:, None], cos, sin)[:, 0]
        # store this batch's latent vectors and indexer keys before attending (queries see themselves)
        slots = ctx.batch.out_cache_loc
        pages, offs = slots // latent.shape[1], slots % latent.shape[1]
        latent[pages, offs] = torch.cat([self.kv_a_layernorm(c), k_rope], dim=-1)
        index_k[pages, offs] = self.indexer.key(x, cos, sin)
        w_uk, w_uv = self._absorbed()
        q_abs = torch.einsum("thd,hdl->thl", q_nope, w_uk)
        if lists.dense:  # nobody sees more than index_topk tokens: attend to all of them
            if lists.decode:
                o = ops.decode(q_abs, q_rope.contiguous(), latent, lists.indptr, lists.indices, self.scale)
            else:
                o = ops.sparse(q_abs, q_rope.contiguous(), latent, lists.indptr, lists.indices, lists.q_row,
                               lists.dense_topk, self.scale)
        else:
            qi, weights = self.indexer.query(x, q_resid, cos, sin)
            topk = ops.indexer_topk(qi.contiguous(), weights, index_k, lists.indptr, lists.indices, lists.q_row,
                                    lists.q_visible, mc.index_topk, max_visible=lists.max_visible)
            o = ops.sparse(q_abs, q_rope.contiguous(), latent, lists.indptr, lists.indices, lists.q_row, topk,
                           self.scale)
        o = torch.einsum("thl,hvl->thv", o, w_uv)
        return self.o_proj(o.reshape(t, heads * mc.v_head_dim))
