"""Mamba2's single-step recurrence for decode (selective state update): the Triton kernel, which updates each
row's state in place in its pool slot, its launcher and the torch twin (the reference path)."""

from __future__ import annotations

import torch
from pdpair.kernels.triton_utils import tl, triton


def selective_state_update_ref(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor,
                               B: torch.Tensor, C: torch.Tensor, D: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """state [Bt, H, P, N] (fp32), x [Bt, H, P], dt [Bt, H] (after bias, softplus and clamp), A [H] (negative),
    B / C [Bt, G, N], D [H]. h' = exp(dt A) h + dt B x; y = C h' + D x. Returns (y [Bt, H, P] fp32, h')."""
    heads, groups = x.shape[1], B.shape[1]
    rep = heads // groups
    Bh = B.float().repeat_interleave(rep, dim=1)  # [Bt, H, N]
    Ch = C.float().repeat_interleave(rep, dim=1)
    dtf = dt.float()
    decay = torch.exp(dtf * A.float()[None])  # [Bt, H]
    xf = x.float()
    new = state.float() * decay[:, :, None, None] + (dtf[:, :, None] * xf)[..., None] * Bh[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", new, Ch) + D.float()[None, :, None] * xf
    return y, new


@triton.jit
def _state_update_kernel(
    state, slots, x, dt, A, B, C, D, y,
    s_item, s_head, s_p, s_x_b, s_x_h, s_dt_b, s_bc_b, s_bc_g, s_y_b, s_y_h,
    HEADS_PER_GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, D_STATE: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mask_p = offs_p < HEAD_DIM
    mask_n = offs_n < D_STATE
    mask = mask_p[:, None] & mask_n[None, :]
    slot = tl.load(slots + b).to(tl.int64)
    g = h // HEADS_PER_GROUP
    ptr = state + slot * s_item + h * s_head + offs_p[:, None] * s_p + offs_n[None, :]
    s = tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
    dtv = tl.load(dt + b * s_dt_b + h).to(tl.float32)
    a = tl.load(A + h).to(tl.float32)
    xv = tl.load(x + b * s_x_b + h * s_x_h + offs_p, mask=mask_p, other=0.0).to(tl.float32)
    bv = tl.load(B + b * s_bc_b + g * s_bc_g + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    cv = tl.load(C + b * s_bc_b + g * s_bc_g + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    s = s * tl.exp(dtv * a) + (dtv * xv)[:, None] * bv[None, :]
    tl.store(ptr, s.to(state.dtype.element_ty), mask=mask)
    out = tl.sum(s * cv[None, :], axis=1) + tl.load(D + h).to(tl.float32) * xv
    tl.store(y + b * s_y_b + h * s_y_h + offs_p, out, mask=mask_p)


def selective_state_update(state: torch.Tensor, slots: torch.Tensor, x: torch.Tensor, dt: torch.Tensor,
                           A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """In place: `state[slots[b]]` ([items, H, P, N], a strided layer view of the pool) advances one token;
    returns y [Bt, H, P] fp32. x [Bt, H, P], dt [Bt, H] (final), A / D [H], B / C [Bt, G, N]."""
    bt, heads, hdim = x.shape
    groups, nstate = B.shape[1], B.shape[2]
    assert state.shape[1:] == (heads, hdim, nstate) and state.stride(-1) == 1, (state.shape, state.stride())
    assert C.shape == B.shape == (bt, groups, nstate) and heads % groups == 0, (B.shape, C.shape, heads)
    assert C.stride() == B.stride(), ("B and C share strides", B.stride(), C.stride())
    assert dt.shape == (bt, heads) and A.shape == D.shape == (heads,) and slots.shape == (bt,), (dt.shape, slots.shape)
    for t in (x, dt, B, C):
        assert t.stride(-1) == 1, ("unit last stride", t.shape, t.stride())
    y = torch.empty(bt, heads, hdim, dtype=torch.float32, device=x.device)
    if bt == 0:
        return y
    block_p = min(triton.next_power_of_2(hdim), 32)
    grid = (bt, heads, triton.cdiv(hdim, block_p))
    _state_update_kernel[grid](
        state, slots, x, dt, A, B, C, D, y,
        state.stride(0), state.stride(1), state.stride(2), x.stride(0), x.stride(1), dt.stride(0),
        B.stride(0), B.stride(1), y.stride(0), y.stride(1),
        HEADS_PER_GROUP=heads // groups, HEAD_DIM=hdim, D_STATE=nstate,
        BLOCK_P=block_p, BLOCK_N=triton.next_power_of_2(nstate),
    )
    return y
