"""Mamba2's causal depthwise conv1d (SiLU after it) carried across calls by a state of the last d_conv - 1
inputs: a whole segment for prefill, one token per row for decode. Torch twins (the reference path) and the
Triton kernel of the decode step, which shifts each row's state in place in its pool slot."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pdpair.kernels.triton_utils import tl, triton


def causal_conv1d_ref(x: torch.Tensor, state: torch.Tensor | None, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence segment: x [n, C] after the inputs held in `state` [C, K - 1] (None: zeros, a fresh
    sequence); weight [C, K]. Returns (silu(conv) [n, C], the new state [C, K - 1])."""
    n, channels = x.shape
    k = weight.shape[1]
    if state is None:
        state = x.new_zeros(channels, k - 1)
    full = torch.cat([state.to(x.dtype), x.t()], dim=1)  # [C, K - 1 + n]
    out = F.conv1d(full[None].to(weight.dtype), weight[:, None, :], bias, groups=channels)[0]  # [C, n]
    return F.silu(out).t().to(x.dtype), full[:, -(k - 1):]


def conv_update_ref(x: torch.Tensor, state: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row: x [B, C], state [B, C, K - 1]. Returns (silu(conv) [B, C], new state [B, C, K - 1])."""
    full = torch.cat([state.to(x.dtype), x[:, :, None]], dim=2)  # [B, C, K]
    out = (full.to(weight.dtype) * weight[None]).sum(-1)
    if bias is not None:
        out = out + bias
    return F.silu(out).to(x.dtype), full[:, :, 1:]


@triton.jit
def _conv_update_kernel(
    x, state, slots, weight, bias, out,
    s_x_b, s_item, s_c, s_col, s_w_c, s_out_b,
    CHANNELS: tl.constexpr, KERNEL: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_C: tl.constexpr,
):
    b = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = offs < CHANNELS
    slot = tl.load(slots + b).to(tl.int64)
    base = state + slot * s_item + offs * s_c
    xv = tl.load(x + b * s_x_b + offs, mask=mask, other=0.0)
    acc = xv.to(tl.float32) * tl.load(weight + offs * s_w_c + (KERNEL - 1), mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias + offs, mask=mask, other=0.0).to(tl.float32)
    for j in tl.static_range(KERNEL - 1):
        col = tl.load(base + j * s_col, mask=mask, other=0.0)
        acc += col.to(tl.float32) * tl.load(weight + offs * s_w_c + j, mask=mask, other=0.0).to(tl.float32)
        if j > 0:  # shift left: column j - 1 takes column j's value
            tl.store(base + (j - 1) * s_col, col, mask=mask)
    tl.store(base + (KERNEL - 2) * s_col, xv.to(state.dtype.element_ty), mask=mask)
    acc = acc / (1.0 + tl.exp(-acc))  # silu
    tl.store(out + b * s_out_b + offs, acc.to(out.dtype.element_ty), mask=mask)


def conv_update(x: torch.Tensor, state: torch.Tensor, slots: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
    """In place: `state[slots[b]]` ([items, C, K - 1], a strided layer view of the pool) takes x [Bt, C] as its
    newest column; returns silu(conv) [Bt, C] in x's dtype. weight [C, K]."""
    bt, channels = x.shape
    kernel = weight.shape[1]
    assert state.shape[1:] == (channels, kernel - 1) and weight.shape[0] == channels, (state.shape, weight.shape)
    assert slots.shape == (bt,) and x.stride(-1) == 1 and weight.stride(-1) == 1, (slots.shape, x.stride())
    out = torch.empty_like(x)
    if bt == 0:
        return out
    block_c = min(triton.next_power_of_2(channels), 256)
    _conv_update_kernel[(bt, triton.cdiv(channels, block_c))](
        x, state, slots, weight, bias if bias is not None else weight, out,
        x.stride(0), state.stride(0), state.stride(1), state.stride(2), weight.stride(0), out.stride(0),
        CHANNELS=channels, KERNEL=kernel, HAS_BIAS=bias is not None, BLOCK_C=block_c,
    )
    return out
