"""A forward's prologue in one launch: the token embeddings and the rotary cos/sin of each position.

Replaces `embed_tokens(ids)` and `RotaryEmbedding.cos_sin(positions)` (a gather and six elementwise launches at
the head of every decode step). The arithmetic is the torch path's: `position * inv_freq` in fp32, cos and sin
in fp32 (libdevice's `cosf`/`sinf`, the functions torch's CUDA kernels call; the CPU interpreter uses numpy's),
each rounded once to the model dtype.
"""

import torch
from pdpair.kernels.triton_utils import interpreting, pdl_launch, pdl_prologue, tl, triton

try:
    from triton.language.extra import libdevice
except ImportError:  # pragma: no cover - a Triton without the generic libdevice module
    libdevice = None


@triton.jit
def _embed_rope_kernel(
    ids, positions, weight, inv_freq, emb, cos, sin, stride_w, stride_e, hidden,
    HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_F: tl.constexpr, LIBDEVICE: tl.constexpr,
    PDL: tl.constexpr = False,
):
    pdl_prologue(PDL)
    t = tl.program_id(0).to(tl.int64)
    tok = tl.load(ids + t).to(tl.int64)
    for h in range(0, hidden, BLOCK_H):
        offs = h + tl.arange(0, BLOCK_H)
        mask = offs < hidden
        tl.store(emb + t * stride_e + offs, tl.load(weight + tok * stride_w + offs, mask=mask), mask=mask)
    f = tl.arange(0, BLOCK_F)
    fmask = f < HALF
    freqs = tl.load(positions + t).to(tl.float32) * tl.load(inv_freq + f, mask=fmask, other=0.0)
    if LIBDEVICE:
        c, s = libdevice.cos(freqs), libdevice.sin(freqs)
    else:
        c, s = tl.cos(freqs), tl.sin(freqs)
    tl.store(cos + t * HALF + f, c.to(cos.dtype.element_ty), mask=fmask)
    tl.store(sin + t * HALF + f, s.to(sin.dtype.element_ty), mask=fmask)


def embed_rope(ids: torch.Tensor, positions: torch.Tensor, weight: torch.Tensor,
               inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(`weight[ids]` [T, hidden], cos [T, half], sin [T, half]) for token `ids` [T] at `positions` [T]; cos and
    sin of `position * inv_freq` ([half], fp32) in `weight`'s dtype."""
    (t,), hidden, half = ids.shape, weight.shape[1], inv_freq.shape[0]
    assert positions.shape == (t,) and weight.stride(1) == 1, (positions.shape, t, weight.stride())
    assert inv_freq.dtype == torch.float32 and inv_freq.is_contiguous(), (inv_freq.dtype, inv_freq.stride())
    emb = torch.empty((t, hidden), dtype=weight.dtype, device=weight.device)
    cos = torch.empty((t, half), dtype=weight.dtype, device=weight.device)
    sin = torch.empty_like(cos)
    if t == 0:
        return emb, cos, sin
    precise = libdevice is not None and not interpreting()
    _embed_rope_kernel[(t,)](
        ids, positions, weight, inv_freq, emb, cos, sin, weight.stride(0), emb.stride(0), hidden,
        HALF=half, BLOCK_H=min(triton.next_power_of_2(hidden), 4096), BLOCK_F=triton.next_power_of_2(half),
        LIBDEVICE=precise, num_warps=4, **pdl_launch(weight, t),
    )
    return emb, cos, sin


def embed_rope_ref(ids: torch.Tensor, positions: torch.Tensor, weight: torch.Tensor,
                   inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Torch twin of `embed_rope` (what `embed_tokens` and `RotaryEmbedding.cos_sin` compute)."""
    freqs = positions.float()[:, None] * inv_freq[None, :]
    return weight[ids], freqs.cos().to(weight.dtype), freqs.sin().to(weight.dtype)
