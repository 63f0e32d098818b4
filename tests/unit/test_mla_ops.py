"""`TorchMLAOps` against the textbook forms: absorbed decode / sparse == attention over K and V expanded from the
latents per head; indexer top-k == brute-force scores over the visible tokens, -1 past them."""

from __future__ import annotations

import torch
from pdpair.engine.attention.mla_ops import TorchMLAOps

H, DL, DR, DN, DV, PS = 4, 32, 8, 16, 12, 4


def _paged(lens: list[int], width: int, gen: torch.Generator):
    """A pool [P, PS, width] and scattered token slots per request (position order), int32 indptr / indices."""
    pages = sum(-(-n // PS) for n in lens) + 3
    pool = torch.randn(pages, PS, width, generator=gen)
    perm = torch.randperm(pages, generator=gen)
    slots, used = [], 0
    for n in lens:
        own = perm[used : used + -(-n // PS)]
        used += len(own)
        slots.append((own[:, None] * PS + torch.arange(PS)[None, :]).reshape(-1)[:n])
    indptr = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    return pool, indptr, torch.cat(slots).to(torch.int32)


def _expanded(q_nope, q_rope, keys, w_uk, w_uv, scale):
    """Plain multi-head attention over K = [c W_UK^T, k_rope], V = c W_UV^T (one query, [H, .])."""
    c, kr = keys[:, :DL], keys[:, DL:]
    k_nope = torch.einsum("nl,hdl->hnd", c, w_uk)
    v = torch.einsum("nl,hvl->hnv", c, w_uv)
    scores = (torch.einsum("hd,hnd->hn", q_nope, k_nope) + q_rope @ kr.T) * scale
    return torch.einsum("hn,hnv->hv", scores.softmax(-1), v)


def test_absorbed_decode_and_sparse_equal_expanded_attention():
    gen = torch.Generator().manual_seed(0)
    lens = [5, 13, 1]
    latent, indptr, indices = _paged(lens, DL + DR, gen)
    w_uk, w_uv = torch.randn(H, DN, DL, generator=gen) / 4, torch.randn(H, DV, DL, generator=gen) / 4
    q_nope, q_rope = torch.randn(3, H, DN, generator=gen), torch.randn(3, H, DR, generator=gen)
    q_abs = torch.einsum("bhd,hdl->bhl", q_nope, w_uk)
    o = torch.einsum("bhl,hvl->bhv", TorchMLAOps.decode(q_abs, q_rope, latent, indptr, indices, 0.3), w_uv)
    pick = torch.tensor([[1, 4, -1], [0, 12, 6], [0, -1, -1]], dtype=torch.int32)  # -1: no token
    o_sparse = torch.einsum("bhl,hvl->bhv", TorchMLAOps.sparse(q_abs, q_rope, latent, indptr, indices,
                                                               torch.arange(3), pick, 0.3), w_uv)
    for b, n in enumerate(lens):
        slots = indices[indptr[b] : indptr[b] + n].long()
        keys = latent[slots // PS, slots % PS]
        torch.testing.assert_close(o[b], _expanded(q_nope[b], q_rope[b], keys, w_uk, w_uv, 0.3))
        sel = pick[b][pick[b] >= 0].long()
        torch.testing.assert_close(o_sparse[b], _expanded(q_nope[b], q_rope[b], keys[sel], w_uk, w_uv, 0.3))


def test_indexer_topk_is_the_best_visible_tokens():
    gen = torch.Generator().manual_seed(1)
    hi, di, topk = 16, 8, 4
    lens = [11, 3]
    index_k, indptr, indices = _paged(lens, di, gen)
    q_row = torch.tensor([0, 0, 0, 1])
    q_visible = torch.tensor([2, 9, 11, 3])
    q, w = torch.randn(4, hi, di, generator=gen), torch.rand(4, hi, generator=gen)
    got = TorchMLAOps.indexer_topk(q, w, index_k, indptr, indices, q_row, q_visible, topk)
    assert got.dtype == torch.int32 and got.shape == (4, topk)
    for t in range(4):
        slots = indices[indptr[q_row[t]] : indptr[q_row[t]] + q_visible[t]].long()
        keys = index_k[slots // PS, slots % PS]
        scores = torch.einsum("h,hn->n", w[t], torch.relu(q[t] @ keys.T))
        k = min(topk, int(q_visible[t]))
        assert set(got[t, :k].tolist()) == set(scores.topk(k).indices.tolist())
        assert (got[t, k:] == -1).all() and (got[t, :k] < q_visible[t]).all()
