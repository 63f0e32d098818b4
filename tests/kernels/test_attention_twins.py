"""The torch twins themselves against dense scaled_dot_product_attention (an independent reference)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pdpair.kernels.attention import decode_attention_ref, extend_attention_ref

from tests.kernels._attention_fixtures import cat_slots, indptr, paged_batch, rel_err


def _dense(batch, b, n):
    slots = batch.row_slots[b][:n].long()
    ps = batch.page_size
    return batch.k_cache[slots // ps, slots % ps], batch.v_cache[slots // ps, slots % ps]


def _sdpa(q, k, v, group, mask):
    # q [Tq, H, D], k/v [Tk, KVH, D] -> [Tq, H, D]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    o = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask)
    return o.transpose(0, 1)


@pytest.mark.parametrize("window", [0, 4])
def test_extend_twin_equals_dense_causal_sdpa(window):
    gen = torch.Generator().manual_seed(11)
    group, kvh, d = 3, 2, 16
    full = [13, 8, 5]
    prefixes = [6, 0, 4]
    batch = paged_batch(full, 4, kvh, d, torch.float64, gen=gen)
    extends = [f - p for f, p in zip(full, prefixes, strict=True)]
    qs, ks, vs, refs = [], [], [], []
    for b, (p, f) in enumerate(zip(prefixes, full, strict=True)):
        k, v = _dense(batch, b, f)
        q = torch.randn(f - p, kvh * group, d, generator=gen, dtype=torch.float64)
        pos_q, pos_k = torch.arange(p, f)[:, None], torch.arange(f)[None, :]
        mask = (pos_k <= pos_q) & ((pos_k > pos_q - window) if window else True)
        refs.append(_sdpa(q, k, v, group, mask))
        qs.append(q), ks.append(k[p:]), vs.append(v[p:])
    out = extend_attention_ref(
        torch.cat(qs), torch.cat(ks), torch.cat(vs), batch.k_cache, batch.v_cache, indptr(extends),
        torch.tensor(full, dtype=torch.int32), indptr(prefixes),
        cat_slots([s[:p] for s, p in zip(batch.row_slots, prefixes, strict=True)]), window=window,
    )
    assert rel_err(out, torch.cat(refs)) < 1e-12


@pytest.mark.parametrize("window", [0, 3])
def test_decode_twin_equals_dense_sdpa(window):
    gen = torch.Generator().manual_seed(12)
    group, kvh, d = 4, 2, 16
    lengths = [9, 1, 20]
    batch = paged_batch(lengths, 16, kvh, d, torch.float64, gen=gen)
    q = torch.randn(len(lengths), kvh * group, d, generator=gen, dtype=torch.float64)
    refs = []
    for b, n in enumerate(lengths):
        k, v = _dense(batch, b, n)
        keep = slice(max(0, n - window), n) if window else slice(0, n)
        refs.append(_sdpa(q[b : b + 1], k[keep], v[keep], group, None))
    out = decode_attention_ref(q, batch.k_cache, batch.v_cache, indptr(lengths), cat_slots(batch.row_slots),
                               window=window)
    assert rel_err(out, torch.cat(refs)) < 1e-12
