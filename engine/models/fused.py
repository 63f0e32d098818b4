"""The decoder family's forward through fused Triton kernels (CUDA with the triton attention backend).

Same arithmetic as `CausalLM.forward` layer by layer, in fewer launches: the embeddings and the positions'
rotary cos/sin in one kernel, the residual add and the next RMSNorm in one (the residual stream is updated in
place; the last norm reads only the wanted rows), SiLU-and-mul in one, and the attention
prologue (split qkv, q/k RMSNorm, rope, K/V store into the paged cache) in one; the backend then attends
with the K/V already stored. A decode batch of at most `MAX_ROWS` rows in bf16/fp16 runs its projections
(and the LM head, into fp32 logits) through the skinny linear kernel, which streams each weight once, folds
SiLU-and-mul into the gate/up projection and the whole attention prologue (q/k RMSNorm included) into
the qkv projection (`skinny_qkv.py`; cuBLAS otherwise; fp32 models keep cuBLAS, whose fp32 GEMMs do not
round to TF32). In such a batch of a small or a wide (hidden 2,560 and up) model the residual add and RMSNorm
also leave their own launch (`_folded_layers`). Runs when the batch's backend has `fused_ops` set (the engine
sets it on CUDA for the triton backend; `EngineConfig.fused_ops` turns it off); the CPU/torch path never comes
here.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pdpair.engine.models.attention import Attention
from pdpair.engine.models.layers import GatedMLP, Linear, RotaryEmbedding
from pdpair.kernels.fused import add_rmsnorm, embed_rope, qk_rope_store, silu_and_mul, tma_linear
from pdpair.kernels.fused.skinny_linear import MAX_ROWS, NormedRows, skinny_linear, skinny_linear_add
from pdpair.kernels.fused.skinny_qkv import skinny_qkv_fits, skinny_qkv_rope_store
from pdpair.kernels.triton_utils import interpreting
from torch import nn

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


def _logits(model, x: torch.Tensor, skinny: bool) -> torch.Tensor:
    """`model.logits(x)`: in a skinny batch the LM head (whole, not a vocab-parallel rank's) streams through
    the skinny linear into fp32 logits, rounded to the model dtype first as `F.linear(x, head).float()` rounds
    them (on an H200 236 us against cuBLAS's 256 us for Llama-3.1-8B's head at batch 1, the `.float()` launch
    included)."""
    if not skinny or model.vocab_head is not None:
        return model.logits(x)
    head = model.head_weight
    return skinny_linear(x, head, out=torch.empty((x.shape[0], head.shape[0]), dtype=torch.float32, device=x.device))


def _qkv_fused(attn, skinny: bool, ctx: Any) -> bool:
    """Whether this layer's qkv projection, q/k RMSNorm (Qwen3), rope and K/V store run as one skinny launch: a
    decode batch (its attention reads q and the cache only; an extend batch also reads the new k/v), a plain
    `Linear` (a wrapper runs its own forward), a head_dim the pair blocks divide; and the backend's `fused_qkv`
    switch (on by default)."""
    return (skinny and getattr(ctx.backend, "fused_qkv", False) and ctx.batch.is_decode
            and type(attn.qkv_proj) is Linear and skinny_qkv_fits(attn.head_dim))


def _attend(attn, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ctx: Any, skinny: bool,
            rms: NormedRows | None = None, tma: bool = False) -> torch.Tensor:
    """The attention block up to the o projection: `[T, q_size]`. With `rms` (the folded path; `x` is its
    `xg`), the qkv projection finishes the input RMSNorm itself. With `tma` (`_folded_layers` at batch 1) the
    fused qkv launch is the TMA one where it takes the layer (kernels/fused/tma_linear.py)."""
    backend, layer = ctx.backend, attn.layer_id
    pool, idx = backend.layer_pools[layer]  # the full-attention pool: `fused_supported` models have no other
    deferred = None
    if _qkv_fused(attn, skinny, ctx):
        norm = None
        if attn.q_norm is not None:  # the heads' programs meet in the backend's workspace (`skinny_qkv.py`), or
            # leave the norm's factors there for decode attention
            assert attn.q_norm.eps == attn.k_norm.eps, (attn.q_norm.eps, attn.k_norm.eps)
            norm = dict(qk_norm=(attn.q_norm.weight, attn.k_norm.weight, attn.q_norm.eps),
                        workspace=backend.qk_norm_workspace(), defer_norm=getattr(backend, "defer_qk_norm", False))
        w, defer = attn.qkv_proj.weight, getattr(backend, "defer_qk_norm", False)
        if tma and tma_linear.qkv_supported(x, w, attn.qkv_proj.bias, attn.head_dim, norm is not None, defer):
            if norm is not None:
                norm.pop("defer_norm")
            q, deferred = tma_linear.tma_qkv_rope_store(x, w, cos, sin, attn.num_heads, attn.num_kv_heads,
                                                        pool.k_layers[idx], pool.v_layers[idx],
                                                        ctx.batch.out_cache_loc, rms=rms, **(norm or {}))
        else:
            q, deferred = skinny_qkv_rope_store(x, w, attn.qkv_proj.bias, cos, sin, attn.num_heads,
                                                attn.num_kv_heads, pool.k_layers[idx], pool.v_layers[idx],
                                                ctx.batch.out_cache_loc, rms=rms, **(norm or {}))
        k = v = None  # decode with `kv_stored` reads q and the cache only
    else:
        if rms is not None:
            qkv = skinny_linear(x, attn.qkv_proj.weight, attn.qkv_proj.bias, rms=rms)
        else:
            qkv = _linear(attn.qkv_proj, x, skinny)
        norm = attn.q_norm is not None
        q, k, v = qk_rope_store(qkv, cos, sin, attn.num_heads, attn.num_kv_heads, pool.k_layers[idx],
                                pool.v_layers[idx], ctx.batch.out_cache_loc,
                                attn.q_norm.weight if norm else None, attn.k_norm.weight if norm else None,
                                attn.q_norm.eps if norm else 1e-6)
    extra = {} if deferred is None else {"qk_norm": deferred}  # only the triton backend takes a deferred norm
    return backend.forward(q, k, v, layer, ctx.batch, kv_stored=True, **extra).reshape(x.shape[0], attn.q_size)


def _attention(attn, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ctx: Any, skinny: bool) -> torch.Tensor:
    return _linear(attn.o_proj, _attend(attn, x, cos, sin, ctx, skinny), skinny)


def _swiglu(mlp) -> bool:
    return type(mlp) is GatedMLP and mlp.act is F.silu


# `_folded_layers` runs for models up to `FOLD_MAX_HIDDEN` wide, and from `FOLD_LATE_MIN_HIDDEN` on, where its
# residual-adding projections release the next launch late (`skinny_linear_add(release_late=True)`). On an H200
# (`bench/engine_gpu.py`, decode graph, PDL on, context 2k) the fold took the SmolLM2 shape (576) from 0.680 to
# 0.638 ms at batch 1 and 0.805 to 0.781 ms at batch 8, and a Qwen3-0.6B shape (1024) from 1.123 to 1.104 ms at
# batch 1 and 1.658 to 1.639 ms at batch 8. At an 8B shape it first lost (Llama-3.1-8B 4.402 against 4.166 ms,
# Qwen3-8B 4.568 against 4.303, batch 1): the next projection, no longer held back by an add+RMSNorm launch,
# had its programs placed on the SMs while the projection before it streamed, and summed the norm's parts
# after its K loop. Released after the loop, with the parts summed before the loop, it gains (interleaved
# rounds on four machines): Qwen3-8B 4.252-4.310 to 4.196-4.254 ms at batch 1, 4.459 to 4.411 at 2, 4.713 to
# 4.665 at 4, 4.977-5.031 to 4.936-4.991 at 8, level at 16; Llama-3.1-8B 4.105-4.170 to 4.067-4.128 at 1,
# 4.740-4.801 to 4.721-4.780 at 8; Qwen3-4B (2560) 2.877 to 2.827 at 1, level at 8; Llama-3.2-3B (3072) level
# at 1, 2.880 to 2.832 at 8. Neither form paid at a Llama-3.2-1B shape (2048: 0.929 ms unfolded at batch 1,
# 0.921-0.928 released late, 1.004 released early; late lost 10 us at batches 2-8), and at 576 and 1024 the
# late release lost at batches 2-16, hence the gap between the two limits. Between 1024 and 2048 nothing is
# measured.
FOLD_MAX_HIDDEN = 1024
FOLD_LATE_MIN_HIDDEN = 2560


def _foldable(model, ctx: Any, skinny: bool) -> bool:
    """Whether this batch runs `_folded_layers`: the skinny path, the backend's `fold_norms` switch (on by
    default), a hidden size of at most `FOLD_MAX_HIDDEN` or at least `FOLD_LATE_MIN_HIDDEN`, and every layer
    built of the plain modules (a sharding wrapper runs its own forward)."""
    hidden = model.config.hidden_size
    if (not (skinny and getattr(ctx.backend, "fold_norms", False))
            or FOLD_MAX_HIDDEN < hidden < FOLD_LATE_MIN_HIDDEN):
        return False
    for layer in model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        if (type(attn) is not Attention or type(attn.qkv_proj) is not Linear or type(attn.o_proj) is not Linear
                or not _swiglu(mlp) or type(mlp.gate_up_proj) is not Linear or type(mlp.down_proj) is not Linear
                or layer.input_layernorm.plus_one or layer.post_attention_layernorm.plus_one):
            return False
    return True


def _folded_layers(model, residual: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ctx: Any) -> None:
    """The decoder layers of a skinny batch with one add+RMSNorm launch in all (layer 0's input norm): the o and
    down projections add into `residual` in their epilogue and leave the next RMSNorm's input (`NormedRows`:
    rows times the norm weight, partial sums of squares), which the qkv and gate/up projections finish by
    scaling their accumulators. Four launches per layer besides attention, against six with `add_rmsnorm`.
    From `FOLD_LATE_MIN_HIDDEN` on, the residual-adding projections release the next launch after their loop,
    and at batch 1 (the backend's `tma_linear` switch) the qkv, o, gate/up and down projections run as TMA
    launches with their weight in flight before the PDL wait (kernels/fused/tma_linear.py), where it takes them."""
    layers = model.layers
    late = model.config.hidden_size >= FOLD_LATE_MIN_HIDDEN
    first = layers[0].input_layernorm
    h = add_rmsnorm(None, residual, first.weight, first.eps)
    rms = None
    tma = late and getattr(ctx.backend, "tma_linear", False)
    for i, layer in enumerate(layers):
        attn, mlp, post = layer.self_attn, layer.mlp, layer.post_attention_layernorm
        o = _attend(attn, h if rms is None else rms.xg, cos, sin, ctx, True, rms=rms, tma=tma)
        w_o, w_gu, w_down = attn.o_proj.weight, mlp.gate_up_proj.weight, mlp.down_proj.weight
        nxt = layers[i + 1].input_layernorm if i + 1 < len(layers) else None
        nxt_norm = None if nxt is None else (nxt.weight, nxt.eps)
        if tma and tma_linear.supported(o, w_o, attn.o_proj.bias):
            rms = tma_linear.tma_linear_add(o, w_o, residual, norm=(post.weight, post.eps))
        else:
            rms = skinny_linear_add(o, w_o, attn.o_proj.bias, residual, norm=(post.weight, post.eps),
                                    release_late=late)
        if tma and tma_linear.supported(rms.xg, w_gu, mlp.gate_up_proj.bias, gated=True):
            act = tma_linear.tma_linear(rms.xg, w_gu, gated=True, rms=rms)
        else:
            act = skinny_linear(rms.xg, w_gu, mlp.gate_up_proj.bias, gated=True, rms=rms)
        if tma and tma_linear.supported(act, w_down, mlp.down_proj.bias):
            rms = tma_linear.tma_linear_add(act, w_down, residual, norm=nxt_norm)
        else:
            rms = skinny_linear_add(act, w_down, mlp.down_proj.bias, residual, norm=nxt_norm, release_late=late)


def fused_forward(model, input_ids: torch.Tensor, positions: torch.Tensor, ctx: Any) -> torch.Tensor:
    """`CausalLM.forward` (same signature and result, up to rounding order) through the fused kernels."""
    assert fused_supported(model.config), f"no fused forward for {model.config.arch!r} with sliding layers " \
        f"{model.config.swa_layers}"
    if type(model.embed_tokens) is nn.Embedding and type(model.rotary) is RotaryEmbedding:
        # one launch; the embeddings are a fresh tensor, updated in place below
        residual, cos, sin = embed_rope(input_ids, positions, model.embed_tokens.weight, model.rotary.inv_freq)
        cos3, sin3 = cos[:, None], sin[:, None]
    else:  # a vocab-parallel embedding (tensor parallelism) gathers across ranks in its own forward
        residual = model.embed_tokens(input_ids)
        cos3, sin3 = model.rotary.cos_sin(positions, residual.dtype)  # [T, 1, head_dim / 2]
        cos, sin = cos3[:, 0], sin3[:, 0]
    layers = model.layers
    skinny = _skinny(residual)
    rows = ctx.logits_indices
    if _foldable(model, ctx, skinny):
        _folded_layers(model, residual, cos, sin, ctx)
        return _logits(model, add_rmsnorm(None, residual, model.norm.weight, model.norm.eps, rows=rows), skinny)
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
    x = add_rmsnorm(mlp_out, residual, model.norm.weight, model.norm.eps, rows=rows)  # only the wanted rows
    return _logits(model, x, skinny)
