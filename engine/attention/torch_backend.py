"""Reference attention in plain torch (CPU and GPU): SDPA over K/V gathered page by page from the cache."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pdpair.engine.attention.base import AttentionBackend
from pdpair.engine.batch import ForwardBatch


@dataclass
class _ExtendRow:
    q_start: int
    q_end: int
    prefix_len: int
    prefix_pages: torch.Tensor  # int64 [ceil(prefix_len / page_size)]
    mask: torch.Tensor | None  # bool [ext, prefix + ext]; None: plain causal


def _page_table(batch: ForwardBatch, kv_lens: torch.Tensor, max_pages: int, page_size: int) -> torch.Tensor:
    """[B, max_pages] page ids read off the first token slot of each page in kv_indices (padding: page of
    the row's first slot, or 0)."""
    device = batch.kv_indices.device
    starts = torch.arange(max_pages, device=device) * page_size
    valid = starts[None, :] < kv_lens[:, None]
    idx = torch.where(valid, batch.kv_indptr[:-1, None] + starts[None, :], 0)
    if batch.kv_indices.numel() == 0:
        return torch.zeros_like(idx, dtype=torch.long)
    slots = batch.kv_indices.index_select(0, idx.reshape(-1)).view(idx.shape)
    return torch.where(valid, slots // page_size, 0).long()


class TorchBackend(AttentionBackend):
    """Decode is vectorised over the batch (padded pages plus a length mask); extend loops over requests.

    Pages are gathered whole with index_select (token slots within a page are in order by construction
    of the request table), which keeps the per-layer cost a plain copy.
    """

    def prepare(self, batch: ForwardBatch) -> None:
        if batch.is_decode:
            self._prepare_decode(batch)
        else:
            self._prepare_extend(batch)

    def _prepare_decode(self, batch: ForwardBatch) -> None:
        ps = self.kv_pool.page_size
        max_len = int(batch.seq_lens_cpu.max())
        max_pages = -(-max_len // ps)
        self._pages = _page_table(batch, batch.seq_lens, max_pages, ps).reshape(-1)
        self._shape = (batch.batch_size, max_pages * ps, self.num_kv_heads, self.head_dim)
        self._len = max_len
        uniform = bool((batch.seq_lens_cpu == max_len).all())
        cols = torch.arange(max_len, device=batch.seq_lens.device)
        self._mask = None if uniform else (cols[None, :] < batch.seq_lens[:, None])[:, None, None, :]

    def _prepare_extend(self, batch: ForwardBatch) -> None:
        # SEEDS.md §3: kv_indices cover the prefix only, prefix = seq_lens - extend_lens (clamped at 0)
        ps = self.kv_pool.page_size
        prefix = (batch.seq_lens_cpu - batch.extend_lens_cpu).clip(min=0)
        prefix_t = (batch.seq_lens - batch.extend_lens).clamp(min=0)
        max_pages = -(-int(prefix.max()) // ps)
        table = _page_table(batch, prefix_t, max_pages, ps) if max_pages else None
        device = batch.kv_indices.device
        rows, q_start = [], 0
        for i, (p, e) in enumerate(zip(prefix.tolist(), batch.extend_lens_cpu.tolist(), strict=True)):
            mask, pages = None, None
            if p:
                cols = torch.arange(p + e, device=device)
                mask = cols[None, :] <= (p + torch.arange(e, device=device))[:, None]
                pages = table[i, : -(-p // ps)]
            rows.append(_ExtendRow(q_start, q_start + e, p, pages, mask))
            q_start += e
        self._rows = rows

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int,
                batch: ForwardBatch) -> torch.Tensor:
        self.kv_pool.write(layer, batch.out_cache_loc, k, v)
        if batch.is_decode:
            return self._decode(q, layer)
        return self._extend(q, k, v, layer)

    def _decode(self, q: torch.Tensor, layer: int) -> torch.Tensor:
        kc, vc = self.kv_pool.read_pages(layer, self._pages)
        kc = kc.view(self._shape)[:, : self._len].transpose(1, 2)  # [B, KVH, L, D]
        vc = vc.view(self._shape)[:, : self._len].transpose(1, 2)
        o = F.scaled_dot_product_attention(q[:, :, None, :], kc, vc, attn_mask=self._mask, scale=self.scale,
                                           enable_gqa=True)
        return o[:, :, 0, :]

    def _extend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int) -> torch.Tensor:
        out = torch.empty_like(q)
        for row in self._rows:
            qi = q[row.q_start : row.q_end].transpose(0, 1)  # [H, ext, D]
            ki, vi = k[row.q_start : row.q_end], v[row.q_start : row.q_end]
            if row.prefix_len:
                kp, vp = self.kv_pool.read_pages(layer, row.prefix_pages)
                ki = torch.cat([kp.flatten(0, 1)[: row.prefix_len], ki])
                vi = torch.cat([vp.flatten(0, 1)[: row.prefix_len], vi])
            # 4-d inputs (a batch of one): CPU SDPA then takes its fused flash kernel, masks and GQA
            # included; 3-d inputs fall back to the unfused math path (2-3x slower at 1k+ contexts)
            o = F.scaled_dot_product_attention(
                qi[None], ki.transpose(0, 1)[None], vi.transpose(0, 1)[None], attn_mask=row.mask,
                is_causal=row.mask is None, scale=self.scale, enable_gqa=True)
            out[row.q_start : row.q_end] = o[0].transpose(0, 1)
        return out
