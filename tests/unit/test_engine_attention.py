"""Torch attention backend vs a dense float64 reference, with production-style seq_lens (prefix + extend)."""

import numpy as np
import pytest
import torch
from pdpair.engine.attention import create_backend
from pdpair.engine.batch import ForwardBatch, ForwardMode
from pdpair.engine.memory import KVPool, ReqToTokenPool

H, KVH, D, LAYERS = 6, 2, 16, 2


def _reference(q, k, v, prefix_len):
    """Dense causal attention for one request: q [E, H, D] at positions prefix.., k/v [P+E, KVH, D]."""
    q, k, v = q.double(), k.double(), v.double()
    k = k.repeat_interleave(H // KVH, dim=1)
    v = v.repeat_interleave(H // KVH, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) / D**0.5
    e, n = q.shape[0], k.shape[0]
    allowed = torch.arange(n)[None, :] <= (prefix_len + torch.arange(e))[:, None]
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


def _setup(page_size, total_lens, seed=0):
    """Pool + table with each request's pages scattered over the pool (shuffled page ids)."""
    g = np.random.default_rng(seed)
    pages_needed = [-(-n // page_size) for n in total_lens]
    num_pages = sum(pages_needed) + 3
    pool = KVPool(num_pages, LAYERS, page_size, KVH, D, torch.float32, "cpu")
    table = ReqToTokenPool(len(total_lens) + 1, max(total_lens) + page_size, page_size, "cpu")
    perm = g.permutation(num_pages).astype(np.int32)
    rows, start = [], 0
    for n in pages_needed:
        row = table.alloc()
        table.assign_pages(row, 0, perm[start : start + n])
        start += n
        rows.append(row)
    return pool, table, np.array(rows)


@pytest.mark.parametrize("page_size", [1, 16])
def test_extend_matches_dense(page_size):
    torch.manual_seed(0)
    prefix = [0, 5, 17, 0, 33]  # ragged, with zero-length prefixes
    extend = [7, 1, 20, 1, 16]
    total = [p + e for p, e in zip(prefix, extend, strict=True)]
    pool, table, rows = _setup(page_size, total)
    backend = create_backend("torch", pool, H, KVH, D)
    layer = 1
    full_k = [torch.randn(n, KVH, D) for n in total]
    full_v = [torch.randn(n, KVH, D) for n in total]
    for r, p, fk, fv in zip(rows, prefix, full_k, full_v, strict=True):  # the cached prefix
        pool.write(layer, table.table[r, :p].long(), fk[:p], fv[:p])
    ids = [0] * sum(extend)
    batch = ForwardBatch.build(ForwardMode.EXTEND, rows, np.array(prefix), np.array(extend), ids, table.table)
    assert batch.seq_lens.tolist() == total  # production convention: seq_lens include the extend tokens
    assert batch.kv_indptr.tolist() == np.concatenate([[0], np.cumsum(prefix)]).tolist()
    q = torch.randn(sum(extend), H, D)
    k = torch.cat([fk[p:] for fk, p in zip(full_k, prefix, strict=True)])
    v = torch.cat([fv[p:] for fv, p in zip(full_v, prefix, strict=True)])
    backend.prepare(batch)
    out = backend.forward(q, k, v, layer, batch)
    qs = np.concatenate([[0], np.cumsum(extend)])
    for i, p in enumerate(prefix):
        ref = _reference(q[qs[i] : qs[i + 1]], full_k[i], full_v[i], p)
        torch.testing.assert_close(out[qs[i] : qs[i + 1]].double(), ref, rtol=1e-5, atol=1e-5)
    # the new tokens' K/V were stored in the cache at their positions
    for r, n, fk in zip(rows, total, full_k, strict=True):
        rk, _ = pool.read(layer, table.table[r, :n].long())
        torch.testing.assert_close(rk, fk)


@pytest.mark.parametrize("page_size", [1, 16])
def test_decode_matches_dense(page_size):
    torch.manual_seed(1)
    seq = [1, 9, 40, 16, 17]  # including the token being decoded
    pool, table, rows = _setup(page_size, seq, seed=3)
    backend = create_backend("torch", pool, H, KVH, D)
    layer = 0
    full_k = [torch.randn(n, KVH, D) for n in seq]
    full_v = [torch.randn(n, KVH, D) for n in seq]
    for r, n, fk, fv in zip(rows, seq, full_k, full_v, strict=True):
        pool.write(layer, table.table[r, : n - 1].long(), fk[:-1], fv[:-1])
    batch = ForwardBatch.build(ForwardMode.DECODE, rows, np.array(seq) - 1, np.ones(len(seq), dtype=int),
                               [0] * len(seq), table.table)
    assert batch.seq_lens.tolist() == seq and batch.positions.tolist() == [n - 1 for n in seq]
    q = torch.randn(len(seq), H, D)
    k = torch.stack([fk[-1] for fk in full_k])
    v = torch.stack([fv[-1] for fv in full_v])
    backend.prepare(batch)
    out = backend.forward(q, k, v, layer, batch)
    for i, n in enumerate(seq):
        ref = _reference(q[i : i + 1], full_k[i], full_v[i], n - 1)
        torch.testing.assert_close(out[i : i + 1].double(), ref, rtol=1e-5, atol=1e-5)


def test_extend_prefix_clamped_for_padded_rows():
    """A padded row keeps a fill seq_len (1) below its extend length: its prefix clamps to 0."""
    torch.manual_seed(2)
    pool, table, rows = _setup(4, [8, 8])
    backend = create_backend("torch", pool, H, KVH, D)
    batch = ForwardBatch.build(ForwardMode.EXTEND, rows, np.array([0, 0]), np.array([3, 3]), [0] * 6,
                               table.table)
    batch.seq_lens[1] = 1
    batch.seq_lens_cpu[1] = 1
    q, k, v = torch.randn(6, H, D), torch.randn(6, KVH, D), torch.randn(6, KVH, D)
    backend.prepare(batch)
    out = backend.forward(q, k, v, 0, batch)
    torch.testing.assert_close(out[3:].double(), _reference(q[3:], k[3:], v[3:], 0), rtol=1e-5, atol=1e-5)
