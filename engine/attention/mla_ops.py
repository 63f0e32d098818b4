"""The attention math of DeepSeek's latent attention behind one small interface (torch reference).

Shapes: `latent` is one layer's view [P, page_size, Dl + Dr] of the latent pool (compressed KV first, the
roped shared key part last), `index_k` one layer's [P, page_size, Di] of the indexer-key pool. `kv_indptr`
int32 [B + 1] / `kv_indices` int32 list every request's token slots in position order; `q_row` [T] is the
request row of each query, `q_visible` [T] how many of the row's listed tokens it may see (its position + 1).
Queries arrive weight-absorbed: `q_nope` [., H, Dl] already multiplied by the key half of `kv_b_proj`, so
scores are q_nope . c + q_rope . k_rope and the output stays in latent space [., H, Dl].
A GPU implementation provides functions with these same signatures.
"""

from __future__ import annotations

import torch

_BLOCK = 64  # queries per gathered block: bounds the [block, k, D] key gather


def _gather(pool: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    page_size = pool.shape[1]
    return pool[slots // page_size, slots % page_size]


def _attend_selected(q_nope: torch.Tensor, q_rope: torch.Tensor, latent: torch.Tensor, kv_indptr: torch.Tensor,
                     kv_indices: torch.Tensor, q_row: torch.Tensor, sel: torch.Tensor, sm_scale: float) -> torch.Tensor:
    """Each query over the row positions `sel` [T, k] (-1: none), fp32 softmax -> [T, H, Dl]."""
    dl = q_nope.shape[-1]
    out = torch.empty_like(q_nope)
    starts = kv_indptr.long()[q_row.long()]
    for lo in range(0, q_nope.shape[0], _BLOCK):
        hi = min(lo + _BLOCK, q_nope.shape[0])
        pick = sel[lo:hi].long()
        valid = pick >= 0
        slots = kv_indices[(starts[lo:hi, None] + pick.clamp(min=0)).clamp(max=max(kv_indices.numel() - 1, 0))]
        keys = _gather(latent, slots.long()).float()  # [t, k, Dl + Dr]
        scores = (torch.einsum("thl,tkl->thk", q_nope[lo:hi].float(), keys[..., :dl])
                  + torch.einsum("thr,tkr->thk", q_rope[lo:hi].float(), keys[..., dl:])) * sm_scale
        probs = torch.softmax(scores.masked_fill(~valid[:, None, :], float("-inf")), dim=-1)
        out[lo:hi] = torch.einsum("thk,tkl->thl", probs, keys[..., :dl]).to(out.dtype)
    return out


class TorchMLAOps:
    """Reference implementations in plain torch (CPU and CUDA), batched over blocks of queries."""

    @staticmethod
    def decode(q_nope: torch.Tensor, q_rope: torch.Tensor, latent: torch.Tensor, kv_indptr: torch.Tensor,
               kv_indices: torch.Tensor, sm_scale: float) -> torch.Tensor:
        """Dense attention of one query per request over all its listed tokens -> o [B, H, Dl]."""
        lens = (kv_indptr[1:] - kv_indptr[:-1]).long()
        width = int(lens.max()) if lens.numel() else 0
        cols = torch.arange(width, device=q_nope.device)[None, :]
        sel = torch.where(cols < lens[:, None], cols, -1)
        rows = torch.arange(q_nope.shape[0], device=q_nope.device)
        return _attend_selected(q_nope, q_rope, latent, kv_indptr, kv_indices, rows, sel, sm_scale)

    @staticmethod
    def indexer_topk(q: torch.Tensor, weights: torch.Tensor, index_k: torch.Tensor, kv_indptr: torch.Tensor,
                     kv_indices: torch.Tensor, q_row: torch.Tensor, q_visible: torch.Tensor,
                     topk: int, max_visible: int | None = None) -> torch.Tensor:
        """Lightning-indexer selection -> int32 [T, topk] positions into each query's row list, -1 = none.
        (`max_visible`, the largest `q_visible`, spares the GPU kernels a read-back; unused here.)

        score_j = sum_h weights[t, h] * relu(q[t, h] . k_j) over the `q_visible[t]` first tokens of the row
        (`weights` fp32 [T, Hi], already scaled by Di ** -0.5 * Hi ** -0.5); the `topk` best positions, by
        descending score, the rest -1 when fewer are visible."""
        out = torch.full((q.shape[0], topk), -1, dtype=torch.int32, device=q.device)
        bounds, rows = kv_indptr.tolist(), q_row.long()
        for r in torch.unique(rows).tolist():  # one row's keys serve all of its queries
            mine = (rows == r).nonzero().flatten()
            keys = _gather(index_k, kv_indices[bounds[r] : bounds[r + 1]].long()).float()  # [n, Di]
            n = keys.shape[0]
            for lo in range(0, mine.numel(), _BLOCK):
                ts = mine[lo : lo + _BLOCK]
                scores = torch.einsum("th,thn->tn", weights[ts].float(),
                                      torch.relu(torch.einsum("thd,nd->thn", q[ts].float(), keys)))
                seen = torch.arange(n, device=q.device)[None, :] < q_visible[ts, None]
                scores = scores.masked_fill(~seen, float("-inf"))
                k = min(topk, n)
                best = scores.topk(k, dim=-1)
                out[ts, :k] = torch.where(best.values > float("-inf"), best.indices, -1).to(torch.int32)
        return out

    @staticmethod
    def sparse(q_nope: torch.Tensor, q_rope: torch.Tensor, latent: torch.Tensor, kv_indptr: torch.Tensor,
               kv_indices: torch.Tensor, q_row: torch.Tensor, topk_idx: torch.Tensor,
               sm_scale: float) -> torch.Tensor:
        """Attention of each query over its selected positions (`topk_idx` [T, k], -1 = none) -> [T, H, Dl]."""
        return _attend_selected(q_nope, q_rope, latent, kv_indptr, kv_indices, q_row, topk_idx, sm_scale)


class TritonMLAOps:
    """The Triton kernels of `pdpair.kernels.mla` behind the same three calls (CUDA, the triton backend)."""

    def __init__(self) -> None:
        from pdpair.kernels.mla import indexer_topk, mla_decode, sparse_mla

        self.decode, self.indexer_topk, self.sparse = mla_decode, indexer_topk, sparse_mla
