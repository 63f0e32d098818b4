"""Mamba2 decode-step kernel cases (kernel in place on pool slots vs torch twin), shared by CPU and GPU tests."""

from __future__ import annotations

import torch


def state_update_case(dtype: torch.dtype, batch: int, heads: int, head_dim: int, d_state: int, groups: int,
                      device: str = "cpu") -> bool:
    from pdpair.kernels.mamba import selective_state_update, selective_state_update_ref

    g = torch.Generator(device=device).manual_seed(batch * 31 + heads)
    items, layers = batch + 3, 2
    pool = torch.randn(items, layers, heads, head_dim, d_state, generator=g, device=device)  # fp32 SSM state
    state = pool[:, 1]  # one layer's strided view
    slots = torch.randperm(items - 1, generator=g, device=device)[:batch] + 1
    x = torch.randn(batch, heads, head_dim, generator=g, device=device).to(dtype)
    dt = torch.rand(batch, heads, generator=g, device=device) * 0.5
    A = -torch.rand(heads, generator=g, device=device) - 0.1
    B = torch.randn(batch, groups, d_state, generator=g, device=device).to(dtype)
    C = torch.randn(batch, groups, d_state, generator=g, device=device).to(dtype)
    D = torch.randn(heads, generator=g, device=device)
    y_ref, new_ref = selective_state_update_ref(state[slots], x, dt, A, B, C, D)
    before = pool.clone()
    y = selective_state_update(state, slots, x, dt, A, B, C, D)
    others = torch.ones(items, dtype=torch.bool, device=device)
    others[slots] = False
    ok = torch.allclose(y, y_ref, rtol=1e-4, atol=1e-4) and torch.allclose(state[slots], new_ref, rtol=1e-5, atol=1e-5)
    untouched = torch.equal(pool[others], before[others]) and torch.equal(pool[:, 0], before[:, 0])
    return bool(ok and untouched)


def conv_update_case(dtype: torch.dtype, batch: int, channels: int, kernel: int, bias: bool,
                     device: str = "cpu") -> bool:
    from pdpair.kernels.mamba import conv_update, conv_update_ref

    g = torch.Generator(device=device).manual_seed(batch * 7 + channels)
    items = batch + 2
    pool = torch.randn(items, 3, channels, kernel - 1, generator=g, device=device).to(dtype)
    state = pool[:, 2]
    slots = torch.randperm(items - 1, generator=g, device=device)[:batch] + 1
    x = torch.randn(batch, channels, generator=g, device=device).to(dtype)
    w = torch.randn(channels, kernel, generator=g, device=device).to(dtype)
    b = torch.randn(channels, generator=g, device=device).to(dtype) if bias else None
    out_ref, new_ref = conv_update_ref(x.float(), state[slots].float(), w.float(), None if b is None else b.float())
    before = pool.clone()
    out = conv_update(x, state, slots, w, b)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    others = torch.ones(items, dtype=torch.bool, device=device)
    others[slots] = False
    ok = torch.allclose(out.float(), out_ref, rtol=tol, atol=tol) and torch.equal(state[slots].float(), new_ref.to(dtype).float())
    return bool(ok and torch.equal(pool[others], before[others]) and torch.equal(pool[:, :2], before[:, :2]))
