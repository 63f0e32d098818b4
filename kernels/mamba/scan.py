"""Mamba2 prefill scan on the GPU: each (segment, head, head-dim block) program walks its segment's tokens,
starting from the segment's slot state (or zero for a fresh sequence) and writing the final state back to the
slot. Same result as the SSD chunked form (`ssd_chunk_scan_ref`, its torch twin) up to summation order."""

from __future__ import annotations

import torch
from pdpair.kernels.mamba.ssd import ssd_chunk_scan_ref
from pdpair.kernels.triton_utils import tl, triton


@triton.jit
def _scan_kernel(
    x, dt, A, B, C, D, y, state, slots, fresh, cu,
    s_x_t, s_x_h, s_dt_t, s_bc_t, s_bc_g, s_y_t, s_y_h, s_item, s_head, s_p,
    HEADS_PER_GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, D_STATE: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    seg = tl.program_id(0)
    h = tl.program_id(1)
    offs_p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask_p = offs_p < HEAD_DIM
    mask_n = offs_n < D_STATE
    mask = mask_p[:, None] & mask_n[None, :]
    g = h // HEADS_PER_GROUP
    start = tl.load(cu + seg)
    end = tl.load(cu + seg + 1)
    slot = tl.load(slots + seg).to(tl.int64)
    ptr = state + slot * s_item + h * s_head + offs_p[:, None] * s_p + offs_n[None, :]
    keep = tl.load(fresh + seg) == 0
    s = tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
    s = tl.where(keep, s, 0.0)  # a fresh sequence ignores whatever its slot held
    a = tl.load(A + h).to(tl.float32)
    d = tl.load(D + h).to(tl.float32)
    for t in range(start, end):
        dtv = tl.load(dt + t * s_dt_t + h).to(tl.float32)
        xv = tl.load(x + t * s_x_t + h * s_x_h + offs_p, mask=mask_p, other=0.0).to(tl.float32)
        bv = tl.load(B + t * s_bc_t + g * s_bc_g + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        cv = tl.load(C + t * s_bc_t + g * s_bc_g + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        s = s * tl.exp(dtv * a) + (dtv * xv)[:, None] * bv[None, :]
        out = tl.sum(s * cv[None, :], axis=1) + d * xv
        tl.store(y + t * s_y_t + h * s_y_h + offs_p, out, mask=mask_p)
    tl.store(ptr, s.to(state.dtype.element_ty), mask=mask)


def mamba_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
               D: torch.Tensor, cu_seqlens: torch.Tensor, slots: torch.Tensor, fresh: torch.Tensor,
               state: torch.Tensor) -> torch.Tensor:
    """Segments [cu[i], cu[i + 1]) of x [T, H, P], dt [T, H] (final), B / C [T, G, N]; A / D [H]. Segment i starts
    from `state[slots[i]]` ([items, H, P, N], a layer view of the pool; zero where `fresh[i]`) and leaves its
    final state there. Returns y [T, H, P] fp32."""
    tokens, heads, hdim = x.shape
    groups, nstate = B.shape[1], B.shape[2]
    nseg = slots.shape[0]
    assert state.shape[1:] == (heads, hdim, nstate) and state.stride(-1) == 1, (state.shape, state.stride())
    assert B.shape == C.shape == (tokens, groups, nstate) and C.stride() == B.stride(), (B.shape, C.stride())
    assert dt.shape == (tokens, heads) and cu_seqlens.shape == (nseg + 1,) and fresh.shape == (nseg,)
    for t in (x, dt, B):
        assert t.stride(-1) == 1, ("unit last stride", t.shape, t.stride())
    y = torch.empty(tokens, heads, hdim, dtype=torch.float32, device=x.device)
    if nseg == 0 or tokens == 0:
        return y
    block_p = min(triton.next_power_of_2(hdim), 16)
    _scan_kernel[(nseg, heads, triton.cdiv(hdim, block_p))](
        x, dt, A, B, C, D, y, state, slots, fresh.to(torch.int32), cu_seqlens,
        x.stride(0), x.stride(1), dt.stride(0), B.stride(0), B.stride(1), y.stride(0), y.stride(1),
        state.stride(0), state.stride(1), state.stride(2),
        HEADS_PER_GROUP=heads // groups, HEAD_DIM=hdim, D_STATE=nstate,
        BLOCK_P=block_p, BLOCK_N=triton.next_power_of_2(nstate),
    )
    return y


def mamba_scan_ref(x, dt, A, B, C, D, cu_seqlens, slots, fresh, state, chunk_size: int = 256) -> torch.Tensor:
    """Torch twin of `mamba_scan` through the SSD chunked form."""
    y = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    for i, slot in enumerate(slots.tolist()):
        s, e = int(cu_seqlens[i]), int(cu_seqlens[i + 1])
        init = None if bool(fresh[i]) else state[slot]
        y[s:e], final = ssd_chunk_scan_ref(x[s:e], dt[s:e], A, B[s:e], C[s:e], D, chunk_size, init)
        state[slot] = final.to(state.dtype)
    return y
