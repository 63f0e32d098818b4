"""Reference attention in plain torch (CPU and GPU): SDPA over K/V gathered page by page from the cache."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pdpair.engine.attention.base import AttentionBackend
from pdpair.engine.batch import ForwardBatch


@dataclass
class _ExtendRow:
    q_start: int
    q_end: int
    prefix_len: int  # cached keys read from the pool (from position `key_start`)
    prefix_pages: torch.Tensor | None  # int64 [ceil(prefix_len / page_size)]
    mask: torch.Tensor | None  # bool [ext, prefix + ext]; None: plain causal


@dataclass
class _View:
    """One pool's per-forward state: decode page table and mask, or the extend rows."""

    pages: torch.Tensor | None = None
    shape: tuple[int, ...] = ()
    length: int = 0
    mask: torch.Tensor | None = None
    rows: list[_ExtendRow] | None = None
    row_pages: list[tuple[torch.Tensor, int]] | None = None  # decode row by row: (pages, keys) per row


def _page_table(kv_indptr: torch.Tensor, kv_indices: torch.Tensor, kv_lens: torch.Tensor, max_pages: int,
                page_size: int) -> torch.Tensor:
    """[B, max_pages] page ids read off the first token slot of each page in kv_indices (padding: 0)."""
    device = kv_indices.device
    starts = torch.arange(max_pages, device=device) * page_size
    valid = starts[None, :] < kv_lens[:, None]
    idx = torch.where(valid, kv_indptr[:-1, None] + starts[None, :], 0)
    if kv_indices.numel() == 0:
        return torch.zeros_like(idx, dtype=torch.long)
    slots = kv_indices.index_select(0, idx.reshape(-1)).view(idx.shape)
    return torch.where(valid, slots // page_size, 0).long()


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool,
            scale: float, softcap: float | None) -> torch.Tensor:
    """SDPA over [B, H, L, D] / [B, KVH, S, D]; with `softcap` the logits are capped (explicit math)."""
    if softcap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale,
                                              enable_gqa=True)
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = torch.tanh((q @ k.transpose(-1, -2)).float() * scale / softcap) * softcap
    if causal:
        mask = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril(s.shape[-1] - s.shape[-2])
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return (s.softmax(-1).to(v.dtype)) @ v


# decode pads every row to the batch's longest and masks (one gather, one SDPA) unless the real keys fill less
# than ROW_BY_ROW_MAX_FILL of the padded ones (one long row among short ones): then each row reads only its
# own pages and attends alone. Greedy generation of 9 SmolLM2 prompts (one of 1,536 tokens, the others under
# 70) on 2 CPU cores: 20.9 s padded, 10.6 s row by row.
ROW_BY_ROW_MAX_FILL = 1 / 3


class TorchBackend(AttentionBackend):
    """Decode is vectorised over the batch (padded pages plus a length/window mask), or row by row when padding
    would be most of the keys read (`ROW_BY_ROW_MAX_FILL`; not with a window); extend loops over requests.

    Pages are gathered whole with index_select (token slots within a page are in order by construction
    of the request table), which keeps the per-layer cost a plain copy.
    """

    def prepare(self, batch: ForwardBatch) -> None:
        zeros = np.zeros(batch.batch_size, dtype=np.int64)
        self._views = {None: self._prepare_view(batch, batch.kv_indptr, batch.kv_indices, zeros, None)}
        for kind, w in batch.windows.items():
            self._views[kind] = self._prepare_view(batch, w.kv_indptr, w.kv_indices, w.kv_starts_cpu, w.window)

    def _prepare_view(self, batch: ForwardBatch, indptr: torch.Tensor, indices: torch.Tensor, starts: np.ndarray,
                      window: int | None) -> _View:
        if batch.is_decode:
            return self._prepare_decode(batch, indptr, indices, starts, window)
        return self._prepare_extend(batch, indptr, indices, starts, window)

    def _prepare_decode(self, batch, indptr, indices, starts, window) -> _View:
        ps = self.kv_pool.page_size
        lens = batch.seq_lens_cpu - starts
        max_len = int(lens.max())
        max_pages = -(-max_len // ps)
        device = batch.seq_lens.device
        lens_t = torch.from_numpy(lens).to(device)
        table = _page_table(indptr, indices, lens_t, max_pages, ps)
        if window is None and int(lens.sum()) < ROW_BY_ROW_MAX_FILL * batch.batch_size * max_len:
            # mostly padding (one long row among short ones): each row reads only its own pages
            return _View(row_pages=[(table[i, : -(-n // ps)], n) for i, n in enumerate(lens.tolist())])
        pages = table.reshape(-1)
        shape = (batch.batch_size, max_pages * ps, self.num_kv_heads, self.head_dim)
        mask = None
        cols = torch.arange(max_len, device=device)
        if window is not None:  # key position starts + j visible iff it is within the last `window`
            first = torch.from_numpy(batch.seq_lens_cpu - window - starts).to(device)
            mask = ((cols[None, :] < lens_t[:, None]) & (cols[None, :] >= first[:, None]))[:, None, None, :]
        elif not (lens == max_len).all():
            mask = (cols[None, :] < lens_t[:, None])[:, None, None, :]
        return _View(pages=pages, shape=shape, length=max_len, mask=mask)

    def _prepare_extend(self, batch, indptr, indices, starts, window) -> _View:
        # SEEDS.md §3: kv_indices cover the prefix only, prefix = seq_lens - extend_lens (clamped at 0)
        ps = self.kv_pool.page_size
        prefix = (batch.seq_lens_cpu - batch.extend_lens_cpu).clip(min=0)
        cached = (prefix - starts).clip(min=0)
        max_pages = -(-int(cached.max()) // ps) if len(cached) else 0
        device = indices.device
        table = (_page_table(indptr, indices, torch.from_numpy(cached).to(device), max_pages, ps)
                 if max_pages else None)
        rows, q_start = [], 0
        for i, (n, p, e) in enumerate(zip(cached.tolist(), prefix.tolist(), batch.extend_lens_cpu.tolist(),
                                          strict=True)):
            mask, pages = None, None
            if n or window is not None:
                kpos = (p - n) + torch.arange(n + e, device=device)
                qpos = p + torch.arange(e, device=device)
                mask = kpos[None, :] <= qpos[:, None]
                if window is not None:
                    mask &= kpos[None, :] > qpos[:, None] - window
            if n:
                pages = table[i, : -(-n // ps)]
            rows.append(_ExtendRow(q_start, q_start + e, n, pages, mask))
            q_start += e
        return _View(rows=rows)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int,
                batch: ForwardBatch) -> torch.Tensor:
        pool, idx = self.layer_pools[layer]
        kind = pool.kind if pool.window is not None else None
        out_loc = batch.out_cache_loc if kind is None else batch.windows[kind].out_cache_loc
        pool.write(idx, out_loc, k, v)
        view = self._views[kind]
        if batch.is_decode:
            return self._decode(q, pool, idx, view)
        return self._extend(q, k, v, pool, idx, view)

    def _decode(self, q: torch.Tensor, pool, layer: int, view: _View) -> torch.Tensor:
        if view.row_pages is not None:
            out = torch.empty_like(q)
            for i, (pages, n) in enumerate(view.row_pages):
                kp, vp = pool.read_pages(layer, pages)
                ki = kp.flatten(0, 1)[:n].transpose(0, 1)[None]  # [1, KVH, n, D]
                vi = vp.flatten(0, 1)[:n].transpose(0, 1)[None]
                out[i] = _attend(q[i, None, :, None, :], ki, vi, None, False, self.scale, self.softcap)[0, :, 0]
            return out
        kc, vc = pool.read_pages(layer, view.pages)
        kc = kc.view(view.shape)[:, : view.length].transpose(1, 2)  # [B, KVH, L, D]
        vc = vc.view(view.shape)[:, : view.length].transpose(1, 2)
        o = _attend(q[:, :, None, :], kc, vc, view.mask, False, self.scale, self.softcap)
        return o[:, :, 0, :]

    def _extend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pool, layer: int,
                view: _View) -> torch.Tensor:
        out = torch.empty_like(q)
        for row in view.rows:
            qi = q[row.q_start : row.q_end].transpose(0, 1)  # [H, ext, D]
            ki, vi = k[row.q_start : row.q_end], v[row.q_start : row.q_end]
            if row.prefix_len:
                kp, vp = pool.read_pages(layer, row.prefix_pages)
                ki = torch.cat([kp.flatten(0, 1)[: row.prefix_len], ki])
                vi = torch.cat([vp.flatten(0, 1)[: row.prefix_len], vi])
            # 4-d inputs (a batch of one): CPU SDPA then takes its fused flash kernel, masks and GQA
            # included; 3-d inputs fall back to the unfused math path (2-3x slower at 1k+ contexts)
            o = _attend(qi[None], ki.transpose(0, 1)[None], vi.transpose(0, 1)[None], row.mask,
                        row.mask is None, self.scale, self.softcap)
            out[row.q_start : row.q_end] = o[0].transpose(0, 1)
        return out
