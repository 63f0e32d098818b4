"""Mamba2's single-step recurrence for decode (selective state update). Torch twin (the reference path)."""

from __future__ import annotations

import torch


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
