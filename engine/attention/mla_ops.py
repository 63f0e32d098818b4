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


def _slots(kv_indices: torch.Tensor, start: int, positions: torch.Tensor) -> torch.Tensor:
    return kv_indices[start + positions].long()


def _gather(pool: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    page_size = pool.shape[1]
    return pool[slots // page_size, slots % page_size]


def _attend(q_nope: torch.Tensor, q_rope: torch.Tensor, keys: torch.Tensor, sm_scale: float) -> torch.Tensor:
    """q [H, Dl] / [H, Dr] over keys [N, Dl + Dr] -> [H, Dl] (fp32 softmax)."""
    dl = q_nope.shape[-1]
    scores = (q_nope.float() @ keys[:, :dl].float().T + q_rope.float() @ keys[:, dl:].float().T) * sm_scale
    probs = torch.softmax(scores, dim=-1)
    return (probs @ keys[:, :dl].float()).to(q_nope.dtype)


class TorchMLAOps:
    """Reference implementations, one request or query at a time (CPU and CUDA)."""

    @staticmethod
    def decode(q_nope: torch.Tensor, q_rope: torch.Tensor, latent: torch.Tensor, kv_indptr: torch.Tensor,
               kv_indices: torch.Tensor, sm_scale: float) -> torch.Tensor:
        """Dense attention of one query per request over all its listed tokens -> o [B, H, Dl]."""
        out = torch.empty_like(q_nope)
        bounds = kv_indptr.tolist()
        for b in range(q_nope.shape[0]):
            slots = kv_indices[bounds[b] : bounds[b + 1]].long()
            out[b] = _attend(q_nope[b], q_rope[b], _gather(latent, slots), sm_scale)
        return out

    @staticmethod
    def indexer_topk(q: torch.Tensor, weights: torch.Tensor, index_k: torch.Tensor, kv_indptr: torch.Tensor,
                     kv_indices: torch.Tensor, q_row: torch.Tensor, q_visible: torch.Tensor,
                     topk: int) -> torch.Tensor:
        """Lightning-indexer selection -> int32 [T, topk] positions into each query's row list, -1 = none.

        score_j = sum_h weights[t, h] * relu(q[t, h] . k_j) over the `q_visible[t]` first tokens of the row
        (`weights` fp32 [T, Hi], already scaled by Di ** -0.5 * Hi ** -0.5); the `topk` best positions, by
        descending score, the rest -1 when fewer are visible."""
        out = torch.full((q.shape[0], topk), -1, dtype=torch.int32, device=q.device)
        bounds, rows, visible = kv_indptr.tolist(), q_row.tolist(), q_visible.tolist()
        for t in range(q.shape[0]):
            n = visible[t]
            keys = _gather(index_k, _slots(kv_indices, bounds[rows[t]], torch.arange(n, device=q.device))).float()
            scores = torch.relu(q[t].float() @ keys.T)  # [Hi, n]
            scores = weights[t].float() @ scores  # [n]
            k = min(topk, n)
            out[t, :k] = scores.topk(k).indices.to(torch.int32)
        return out

    @staticmethod
    def sparse(q_nope: torch.Tensor, q_rope: torch.Tensor, latent: torch.Tensor, kv_indptr: torch.Tensor,
               kv_indices: torch.Tensor, q_row: torch.Tensor, topk_idx: torch.Tensor,
               sm_scale: float) -> torch.Tensor:
        """Attention of each query over its selected positions (`topk_idx` [T, k], -1 = none) -> [T, H, Dl]."""
        out = torch.empty_like(q_nope)
        bounds, rows = kv_indptr.tolist(), q_row.tolist()
        for t in range(q_nope.shape[0]):
            sel = topk_idx[t]
            sel = sel[sel >= 0].long()
            out[t] = _attend(q_nope[t], q_rope[t], _gather(latent, _slots(kv_indices, bounds[rows[t]], sel)),
                             sm_scale)
        return out
