"""Mamba2's state-space-duality (SSD) chunked scan for prefill, starting from a given state and returning the
final one, so a prompt can be scanned in several segments. Torch twin (the reference path)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ssd_chunk_scan_ref(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                       D: torch.Tensor, chunk_size: int,
                       initial_state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence segment of length L: x [L, H, P], dt [L, H] (after bias, softplus and clamp), A [H]
    (negative), B / C [L, G, N], D [H], initial_state [H, P, N] (None: zeros). Computed in fp32.

    Within a chunk the output is the masked "attention" form (C_i . B_j) exp(sum dA over (j, i]) dt_j x_j;
    across chunks the state is carried by the recurrence h_c = exp(sum dA over chunk c) h_{c-1} + chunk
    state. Returns (y [L, H, P] fp32, final state [H, P, N] fp32)."""
    length, heads, hdim = x.shape
    groups, nstate = B.shape[1], B.shape[2]
    rep = heads // groups
    pad = (-length) % chunk_size
    xf = x.float() * dt.float()[..., None]  # discretised input dt x
    dA = dt.float() * A.float()[None]  # [L, H]
    Bh = B.float().repeat_interleave(rep, dim=1)  # [L, H, N]
    Ch = C.float().repeat_interleave(rep, dim=1)
    # padded steps have dt = 0: no input and no decay, so the final state is the state after the last real step
    xc = F.pad(xf, (0, 0, 0, 0, 0, pad)).view(-1, chunk_size, heads, hdim)  # [c, l, H, P]
    dAc = F.pad(dA, (0, 0, 0, pad)).view(-1, chunk_size, heads)  # [c, l, H]
    Bc = F.pad(Bh, (0, 0, 0, 0, 0, pad)).view(-1, chunk_size, heads, nstate)
    Cc = F.pad(Ch, (0, 0, 0, 0, 0, pad)).view(-1, chunk_size, heads, nstate)
    cum = dAc.cumsum(dim=1)  # [c, l, H]
    # decay from step j to step i inside a chunk (i >= j): exp(cum_i - cum_j)
    diff = cum[:, :, None, :] - cum[:, None, :, :]  # [c, i, j, H]
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=x.device).tril()
    decay = torch.exp(diff.masked_fill(~causal[None, :, :, None], float("-inf")))
    scores = torch.einsum("cihn,cjhn->cijh", Cc, Bc) * decay
    y = torch.einsum("cijh,cjhp->cihp", scores, xc)
    # each chunk's own contribution to the state at its end
    to_end = torch.exp(cum[:, -1:, :] - cum)  # [c, l, H]
    chunk_states = torch.einsum("clhn,clhp->chpn", Bc * to_end[..., None], xc)
    state = (x.new_zeros(heads, hdim, nstate, dtype=torch.float32) if initial_state is None
             else initial_state.float())
    chunk_decay = torch.exp(cum[:, -1, :])  # [c, H]
    starts = []
    for c in range(xc.shape[0]):
        starts.append(state)
        state = state * chunk_decay[c][:, None, None] + chunk_states[c]
    start = torch.stack(starts)  # [c, H, P, N]: the state entering each chunk
    y = y + torch.einsum("clhn,chpn->clhp", Cc, start) * torch.exp(cum)[..., None]
    y = y.reshape(-1, heads, hdim)[:length] + D.float()[None, :, None] * x.float()
    return y, state
