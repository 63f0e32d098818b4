"""Attention prologue in one launch per layer: split the fused qkv projection, optional per-head q/k RMSNorm
(Qwen3), rotary embedding (rotate-half) of q and k, and the store of the new K/V into the paged cache.

One program per token handles every head of that token. The K/V store skips slot < 0 (CUDA-graph padding),
as `store_kv` does. Outputs q, k, v as contiguous `[T, heads, D]` tensors (extend attention reads the new
K/V from them; decode reads the cache).
"""

import torch
from pdpair.kernels.triton_utils import pdl_launch, pdl_prologue, tl, triton


@triton.jit
def head_rmsnorm(x1, x2, w, offs_d, dmask, eps, HALF: tl.constexpr):
    """RMSNorm over each row's two halves (fp32 in, fp32 out), rounded to the weight's dtype where the unfused
    RMSNorm rounds."""
    DTYPE = w.dtype.element_ty
    rstd = tl.rsqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / (2 * HALF) + eps)[:, None]
    w1 = tl.load(w + offs_d, mask=dmask, other=0.0).to(tl.float32)[None, :]
    w2 = tl.load(w + HALF + offs_d, mask=dmask, other=0.0).to(tl.float32)[None, :]
    x1 = (w1 * (x1 * rstd).to(DTYPE).to(tl.float32)).to(DTYPE).to(tl.float32)
    x2 = (w2 * (x2 * rstd).to(DTYPE).to(tl.float32)).to(DTYPE).to(tl.float32)
    return x1, x2


@triton.jit
def _qk_rope_store_kernel(
    qkv, cos, sin, q_w, k_w, q_out, k_out, v_out, k_cache, v_cache, slots,
    stride_qkv, stride_cos, stride_sin,
    stride_kcp, stride_kcs, stride_kch, stride_vcp, stride_vcs, stride_vch, eps,
    HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HALF: tl.constexpr, PAGE_SIZE: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_KVH: tl.constexpr, BLOCK_HALF: tl.constexpr, QK_NORM: tl.constexpr,
    PDL: tl.constexpr = False,
):
    pdl_prologue(PDL)
    t = tl.program_id(0).to(tl.int64)
    dtype = q_out.dtype.element_ty
    d = 2 * HALF
    offs_d = tl.arange(0, BLOCK_HALF)
    dmask = offs_d < HALF
    c = tl.load(cos + t * stride_cos + offs_d, mask=dmask, other=0.0).to(tl.float32)[None, :]
    s = tl.load(sin + t * stride_sin + offs_d, mask=dmask, other=0.0).to(tl.float32)[None, :]
    row = qkv + t * stride_qkv

    # q: columns [0, HEADS * d)
    offs_h = tl.arange(0, BLOCK_H)
    m = (offs_h[:, None] < HEADS) & dmask[None, :]
    src = row + offs_h[:, None] * d + offs_d[None, :]
    x1 = tl.load(src, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=m, other=0.0).to(tl.float32)
    if QK_NORM:
        x1, x2 = head_rmsnorm(x1, x2, q_w, offs_d, dmask, eps, HALF)
    dst = q_out + t * (HEADS * d) + offs_h[:, None] * d + offs_d[None, :]
    tl.store(dst, (x1 * c - x2 * s).to(dtype), mask=m)
    tl.store(dst + HALF, (x2 * c + x1 * s).to(dtype), mask=m)

    # k: columns [HEADS * d, (HEADS + KV_HEADS) * d); v after it
    slot = tl.load(slots + t).to(tl.int64)
    page = slot // PAGE_SIZE
    off = slot % PAGE_SIZE
    offs_kh = tl.arange(0, BLOCK_KVH)
    km = (offs_kh[:, None] < KV_HEADS) & dmask[None, :]
    cm = km & ((offs_kh[:, None] * 0 + slot) >= 0)  # a tensor mask (the interpreter rejects a scalar one)
    src = row + HEADS * d + offs_kh[:, None] * d + offs_d[None, :]
    x1 = tl.load(src, mask=km, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=km, other=0.0).to(tl.float32)
    if QK_NORM:
        x1, x2 = head_rmsnorm(x1, x2, k_w, offs_d, dmask, eps, HALF)
    k1 = (x1 * c - x2 * s).to(dtype)
    k2 = (x2 * c + x1 * s).to(dtype)
    dst = k_out + t * (KV_HEADS * d) + offs_kh[:, None] * d + offs_d[None, :]
    tl.store(dst, k1, mask=km)
    tl.store(dst + HALF, k2, mask=km)
    dst = k_cache + page * stride_kcp + off * stride_kcs + offs_kh[:, None] * stride_kch + offs_d[None, :]
    tl.store(dst, k1, mask=cm)
    tl.store(dst + HALF, k2, mask=cm)

    src = src + KV_HEADS * d
    v1 = tl.load(src, mask=km, other=0.0)
    v2 = tl.load(src + HALF, mask=km, other=0.0)
    dst = v_out + t * (KV_HEADS * d) + offs_kh[:, None] * d + offs_d[None, :]
    tl.store(dst, v1, mask=km)
    tl.store(dst + HALF, v2, mask=km)
    dst = v_cache + page * stride_vcp + off * stride_vcs + offs_kh[:, None] * stride_vch + offs_d[None, :]
    tl.store(dst, v1, mask=cm)
    tl.store(dst + HALF, v2, mask=cm)


def qk_rope_store(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, kv_heads: int,
                  k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor,
                  q_weight: torch.Tensor | None = None, k_weight: torch.Tensor | None = None,
                  eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`qkv [T, (heads + 2 kv_heads) * D]`, `cos`/`sin` `[T, D / 2]` -> q `[T, heads, D]`, k, v `[T, kv_heads, D]`
    (q, k normed when weights are given, then rotated); k, v also written to token `slots` of the caches
    `[pages, page_size, kv_heads, D]` (slot < 0: skipped)."""
    t, width = qkv.shape
    d = k_cache.shape[-1]
    assert width == (heads + 2 * kv_heads) * d and d % 2 == 0, (qkv.shape, heads, kv_heads, d)
    assert cos.shape == sin.shape == (t, d // 2), (cos.shape, sin.shape, t, d)
    assert k_cache.shape == v_cache.shape and k_cache.shape[2:] == (kv_heads, d), (k_cache.shape, v_cache.shape)
    assert qkv.dtype == k_cache.dtype == v_cache.dtype, (qkv.dtype, k_cache.dtype, v_cache.dtype)
    assert slots.shape == (t,), (slots.shape, t)
    assert (q_weight is None) == (k_weight is None), "q and k norm weights come together"
    if q_weight is not None:
        assert q_weight.shape == k_weight.shape == (d,) and q_weight.is_contiguous() and k_weight.is_contiguous()
        assert q_weight.dtype == k_weight.dtype == qkv.dtype, (q_weight.dtype, k_weight.dtype, qkv.dtype)
    for x in (qkv, cos, sin, k_cache, v_cache):
        assert x.stride(-1) == 1, ("unit last stride", x.shape, x.stride())
    q = torch.empty((t, heads, d), dtype=qkv.dtype, device=qkv.device)
    k = torch.empty((t, kv_heads, d), dtype=qkv.dtype, device=qkv.device)
    v = torch.empty((t, kv_heads, d), dtype=qkv.dtype, device=qkv.device)
    if t == 0:
        return q, k, v
    norm = q_weight is not None
    _qk_rope_store_kernel[(t,)](
        qkv, cos, sin, q_weight if norm else qkv, k_weight if norm else qkv, q, k, v, k_cache, v_cache, slots,
        qkv.stride(0), cos.stride(0), sin.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1),
        v_cache.stride(2), eps,
        HEADS=heads, KV_HEADS=kv_heads, HALF=d // 2, PAGE_SIZE=k_cache.shape[1],
        BLOCK_H=triton.next_power_of_2(heads), BLOCK_KVH=triton.next_power_of_2(kv_heads),
        BLOCK_HALF=triton.next_power_of_2(d // 2), QK_NORM=norm, num_warps=4, **pdl_launch(qkv, t),
    )
    return q, k, v


def qk_rope_store_ref(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, kv_heads: int,
                      k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor,
                      q_weight: torch.Tensor | None = None, k_weight: torch.Tensor | None = None,
                      eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Torch twin of `qk_rope_store` (the unfused attention's arithmetic)."""
    from pdpair.kernels.attention.store_kv import store_kv_ref
    from pdpair.kernels.fused.add_rmsnorm import add_rmsnorm_ref

    t, d = qkv.shape[0], k_cache.shape[-1]
    q = qkv[:, : heads * d].reshape(t, heads, d)
    k = qkv[:, heads * d : (heads + kv_heads) * d].reshape(t, kv_heads, d)
    v = qkv[:, (heads + kv_heads) * d :].reshape(t, kv_heads, d).contiguous()
    if q_weight is not None:
        q = add_rmsnorm_ref(None, q.contiguous(), q_weight, eps)
        k = add_rmsnorm_ref(None, k.contiguous(), k_weight, eps)
    c, s = cos[:, None, :], sin[:, None, :]

    def rope(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)

    q, k = rope(q), rope(k)
    store_kv_ref(k, v, k_cache, v_cache, slots)
    return q, k, v
