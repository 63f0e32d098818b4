"""The mamba pool's item layout and the mamba2 torch twins: segments of a scan equal one scan, the SSD chunk
form equals the token-by-token recurrence, the conv state carries across calls."""

from __future__ import annotations

import pytest
import torch
from pdpair.engine.hybrid_config import HybridConfig
from pdpair.engine.memory.mamba_pool import MambaPool
from pdpair.kernels.mamba import (
    causal_conv1d_ref,
    conv_update_ref,
    selective_state_update_ref,
    ssd_chunk_scan_ref,
)

HC = HybridConfig(mamba_layers=(0, 2, 3), n_heads=4, head_dim=8, n_groups=2, d_state=6, d_conv=4,
                  intermediate_size=32, chunk_size=8)


def _inputs(length: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(length, 4, 8, generator=g)
    dt = torch.rand(length, 4, generator=g) * 0.5
    A = -torch.rand(4, generator=g) - 0.1
    B, C = torch.randn(length, 2, 6, generator=g), torch.randn(length, 2, 6, generator=g)
    return x, dt, A, B, C, torch.randn(4, generator=g)


def test_pool_item_holds_one_requests_whole_state_contiguously():
    pool = MambaPool(3, 5, HC, torch.bfloat16, "cpu")
    assert pool.num_items == 4 and pool.item_bytes == MambaPool.slot_bytes(HC, torch.bfloat16)
    assert pool.conv.shape == (4, 3, HC.conv_dim, 3) and pool.conv.dtype == torch.bfloat16
    assert pool.ssm.shape == (4, 3, 4, 8, 6) and pool.ssm.dtype == torch.float32
    pool.conv[2].fill_(1.0)
    pool.ssm[2].fill_(2.0)
    nonzero = (pool.buffer != 0).any(dim=1).nonzero().flatten().tolist()
    assert nonzero == [2]  # every layer's conv and SSM state of slot 2 lives in item 2, nowhere else
    region = pool.region()
    assert (region.kind, region.item_bytes, region.num_items) == ("mamba", pool.item_bytes, 4)
    with pytest.raises(AssertionError):
        pool.bind(0, 0)  # item 0 is the padding rows' dummy


@pytest.mark.parametrize("cuts", [(5,), (3, 11), (8, 16), (1, 2, 3, 20)])
def test_scan_in_segments_equals_one_scan(cuts):
    x, dt, A, B, C, D = _inputs(27)
    y_ref, h_ref = ssd_chunk_scan_ref(x, dt, A, B, C, D, 8)
    ys, h = [], None
    for s, e in zip((0, *cuts), (*cuts, 27), strict=True):
        y, h = ssd_chunk_scan_ref(x[s:e], dt[s:e], A, B[s:e], C[s:e], D, 8, h)
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys), y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)


def test_chunk_scan_equals_the_recurrence():
    x, dt, A, B, C, D = _inputs(13, seed=1)
    y_scan, h_scan = ssd_chunk_scan_ref(x, dt, A, B, C, D, 4)
    h = torch.zeros(1, 4, 8, 6)
    for t in range(13):
        y, h = selective_state_update_ref(h, x[t:t + 1], dt[t:t + 1], A, B[t:t + 1], C[t:t + 1], D)
        torch.testing.assert_close(y[0], y_scan[t], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h[0], h_scan, rtol=1e-5, atol=1e-5)


def test_conv_state_carries_across_calls():
    g = torch.Generator().manual_seed(2)
    x, w, b = torch.randn(9, 5, generator=g), torch.randn(5, 4, generator=g), torch.randn(5, generator=g)
    full, state = causal_conv1d_ref(x, None, w, b)
    head, st = causal_conv1d_ref(x[:2], None, w, b)  # shorter than the kernel: zero history
    outs = [head]
    for t in range(2, 9):
        y, st = conv_update_ref(x[t:t + 1], st[None], w, b)
        outs.append(y)
        st = st[0]
    torch.testing.assert_close(torch.cat(outs), full)
    torch.testing.assert_close(st, state)
    torch.testing.assert_close(state, x[-3:].t())  # the last d_conv - 1 inputs


def test_registration_needs_exactly_one_real_slot():
    from pdpair.prefill_node.validate import expected_items, validate_registration

    expected = expected_items({"kv": None}, 9, 4, ("mamba",))
    assert expected == {"kv": 3, "mamba": 1}
    num, first = {"kv": 10, "mamba": 5}, {"mamba": 1}
    out = validate_registration([("kv", [1, 2, 3]), ("mamba", [4])], num, expected, first)
    assert out["mamba"].tolist() == [4]
    with pytest.raises(ValueError, match=r"mamba: id 0 out of range \[1, 5\)"):
        validate_registration([("kv", [1, 2, 3]), ("mamba", [0])], num, expected, first)
    with pytest.raises(ValueError, match="mamba: 2 ids registered"):
        validate_registration([("kv", [1, 2, 3]), ("mamba", [1, 2])], num, expected, first)


def test_slot_allocator_never_hands_out_the_dummy():
    from pdpair.engine.memory import PageAllocator

    alloc = PageAllocator(4, "mamba", reserved=1)
    assert alloc.num_total == 3 and sorted(alloc.alloc(3).tolist()) == [1, 2, 3] and alloc.alloc(1) is None
    alloc.free([1, 2, 3])
    alloc.check_integrity()
    with pytest.raises(AssertionError):
        alloc.free([0])
