"""The decoder family's forward through fused Triton kernels (CUDA with the triton attention backend).

Same arithmetic as `CausalLM.forward` layer by layer, in fewer launches: the residual add and the next
RMSNorm in one kernel (the residual stream is updated in place), SiLU-and-mul in one, and the attention
prologue (split qkv, q/k RMSNorm, rope, K/V store into the paged cache) in one; the backend then attends
with the K/V already stored. A decode batch of at most `MAX_ROWS` rows in bf16/fp16 runs its projections
through the skinny linear kernel, which streams each weight once, folds SiLU-and-mul into the gate/up
projection and, for models without q/k norm, the whole attention prologue into the qkv projection
(`skinny_qkv.py`; cuBLAS otherwise; fp32 models keep cuBLAS, whose fp32 GEMMs do not round to TF32). Runs
when the batch's backend has `fused_ops` set (the engine sets it on CUDA for the triton backend;
`EngineConfig.fused_ops` turns it off); the CPU/torch path never comes here.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pdpair.engine.models.attention import Attention
from pdpair.engine.models.layers import GatedMLP, Linear
from pdpair.kernels.fused import add_rmsnorm, qk_rope_store, silu_and_mul
from pdpair.kernels.fused.skinny_linear import MAX_ROWS, skinny_linear
from pdpair.kernels.fused.skinny_qkv import skinny_qkv_fits, skinny_qkv_rope_store
from pdpair.kernels.triton_utils import interpreting

FUSED_ARCHS = ("llama", "qwen2", "qwen3")


def fused_supported(config) -> bool:
    """Whether `fused_forward` computes this model: a full-attention Llama/Qwen2/Qwen3 (the fused prologue stores
    K/V through the full-attention pool's slots, so sliding-window layers stay on the unfused path)."""
    return config.arch in FUSED_ARCHS and not config.swa_layers


def _skinny(x: torch.Tensor) -> bool:
    """Whether this batch's projections go through the skinny linear: a few rows, and a 16-bit dtype (the
    kernel's fp32 dot would round to TF32; the CPU interpreter computes fp32 exactly)."""
    return x.shape[0] <= MAX_ROWS and (x.dtype in (torch.bfloat16, torch.float16) or interpreting())


def _linear(lin, x: torch.Tensor, skinny: bool) -> torch.Tensor:
    if skinny and type(lin) is Linear:  # a wrapper (tensor-parallel shard) runs its own forward
        return skinny_linear(x, lin.weight, lin.bias)
    return lin(x)


def _mlp(mlp, h: torch.Tensor, skinny: bool) -> torch.Tensor:
    if not _swiglu(mlp):
        return mlp(h)
    if skinny and type(mlp.gate_up_proj) is Linear:
        act = skinny_linear(h, mlp.gate_up_proj.weight, mlp.gate_up_proj.bias, gated=True)
    else:
        act = silu_and_mul(mlp.gate_up_proj(h))
    return _linear(mlp.down_proj, act, skinny)


def _qkv_fused(attn, skinny: bool, ctx: Any) -> bool:
    """Whether this layer's qkv projection, rope and K/V store run as one skinny launch: a decode batch (its
    attention reads q and the cache only; an extend batch also reads the new k/v), a plain `Linear` (a wrapper
    runs its own forward), no q/k RMSNorm (it needs whole heads; `skinny_qkv.py`), a head_dim the pair blocks
    divide; and the backend's `fused_qkv` switch (on by default)."""
    return (skinny and getattr(ctx.backend, "fused_qkv", False) and ctx.batch.is_decode
            and type(attn.qkv_proj) is Linear and attn.q_norm is None and skinny_qkv_fits(attn.head_dim))


def _attention(attn, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ctx: Any, skinny: bool) -> torch.Tensor:
    backend, layer = ctx.backend, attn.layer_id
    pool, idx = backend.layer_pools[layer]  # the full-attention pool: `fused_supported` models have no other
    if _qkv_fused(attn, skinny, ctx):
        q = skinny_qkv_rope_store(x, attn.qkv_proj.weight, attn.qkv_proj.bias, cos, sin, attn.num_heads,
                                  attn.num_kv_heads, pool.k_layers[idx], pool.v_layers[idx], ctx.batch.out_cache_loc)
        k = v = None  # decode with `kv_stored` reads q and the cache only
    else:
        qkv = _linear(attn.qkv_proj, x, skinny)
        norm = attn.q_norm is not None
        q, k, v = qk_rope_store(qkv, cos, sin, attn.num_heads, attn.num_kv_heads, pool.k_layers[idx],
                                pool.v_layers[idx], ctx.batch.out_cache_loc,
                                attn.q_norm.weight if norm else None, attn.k_norm.weight if norm else None,
                                attn.q_norm.eps if norm else 1e-6)
    o = backend.forward(q, k, v, layer, ctx.batch, kv_stored=True)
    return _linear(attn.o_proj, o.reshape(x.shape[0], attn.q_size), skinny)


def _swiglu(mlp) -> bool:
    return type(mlp) is GatedMLP and mlp.act is F.silu


def fused_forward(model, input_ids: torch.Tensor, positions: torch.Tensor, ctx: Any) -> torch.Tensor:
    """`CausalLM.forward` (same signature and result, up to rounding order) through the fused kernels."""
    assert fused_supported(model.config), f"no fused forward for {model.config.arch!r} with sliding layers " \
        f"{model.config.swa_layers}"
    residual = model.embed_tokens(input_ids)  # a fresh tensor: updated in place below
    cos3, sin3 = model.rotary.cos_sin(positions, residual.dtype)  # [T, 1, head_dim / 2]
    cos, sin = cos3[:, 0], sin3[:, 0]
    layers = model.layers
    skinny = _skinny(residual)
    h = add_rmsnorm(None, residual, layers[0].input_layernorm.weight, layers[0].input_layernorm.eps)
    mlp_out = None
    for i, layer in enumerate(layers):
        # a module replaced by a wrapper (tensor/data-parallel sharding, another family) runs its own forward
        attn, mlp = layer.self_attn, layer.mlp
        a = _attention(attn, h, cos, sin, ctx, skinny) if type(attn) is Attention else attn(h, cos3, sin3, ctx)
        post = layer.post_attention_layernorm
        h = add_rmsnorm(a, residual, post.weight, post.eps)
        mlp_out = _mlp(mlp, h, skinny)
        if i + 1 < len(layers):
            nxt = layers[i + 1].input_layernorm
            h = add_rmsnorm(mlp_out, residual, nxt.weight, nxt.eps)
    rows = ctx.logits_indices
    x = add_rmsnorm(mlp_out[rows], residual[rows], model.norm.weight, model.norm.eps)  # only the wanted rows
    return model.logits(x)
