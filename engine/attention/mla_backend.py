"""The backend of latent-attention models: per forward, every request's token list (prefix and new tokens, in
position order) and each query's row and visible length; the model calls `ops` (the `TorchMLAOps` interface)
with one layer's latent and indexer-key views."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from pdpair.engine.attention.base import AttentionBackend
from pdpair.engine.attention.mla_ops import TorchMLAOps
from pdpair.engine.batch import ForwardBatch
from pdpair.engine.memory.latent_pool import LatentPool


@dataclass
class MLALists:
    indptr: torch.Tensor  # int32 [B + 1]
    indices: torch.Tensor  # int32 token slots, each row's in position order (the new tokens included)
    q_row: torch.Tensor  # int32 [T]
    q_visible: torch.Tensor  # int32 [T]: position + 1
    decode: bool
    dense: bool  # no query sees more than index_topk tokens
    dense_topk: torch.Tensor | None  # int32 [T, max visible]: every visible position, -1 after (dense only)
    max_visible: int = 0  # the most tokens any query sees (host side: the kernels need no read-back per layer)


def build_lists(batch: ForwardBatch, index_topk: int) -> MLALists:
    device = batch.positions.device
    seq = np.asarray(batch.seq_lens_cpu, dtype=np.int64)
    if batch.is_decode:
        indptr, indices = batch.kv_indptr, batch.kv_indices
        q_row = torch.arange(batch.batch_size, device=device, dtype=torch.int32)
    else:
        ext = np.asarray(batch.extend_lens_cpu, dtype=np.int64)
        # each row's cached prefix, then its new tokens; offsets from the host lengths (no device read-back)
        kv_ptr, qo_ptr = (np.concatenate([[0], np.cumsum(n)]).tolist() for n in (seq - ext, ext))
        parts = []
        for b in range(batch.batch_size):
            parts += [batch.kv_indices[kv_ptr[b] : kv_ptr[b + 1]],
                      batch.out_cache_loc[qo_ptr[b] : qo_ptr[b + 1]].to(torch.int32)]
        indices = torch.cat(parts)
        indptr = torch.from_numpy(np.concatenate([[0], np.cumsum(seq)]).astype(np.int32)).to(device)
        q_row = torch.repeat_interleave(torch.arange(batch.batch_size, device=device, dtype=torch.int32),
                                        torch.from_numpy(ext).to(device))
    q_visible = (batch.positions + 1).to(torch.int32)
    most = int(seq.max()) if len(seq) else 0
    dense = most <= index_topk
    dense_topk = None
    if dense and not batch.is_decode:
        cols = torch.arange(most, device=device, dtype=torch.int32)[None, :]
        dense_topk = torch.where(cols < q_visible[:, None], cols, -1).to(torch.int32)
    return MLALists(indptr, indices, q_row, q_visible, batch.is_decode, dense, dense_topk, most)


class MLABackend(AttentionBackend):
    """Holds the `kv` (latent) and `dsa` (indexer key) pools; `forward` is not used by latent attention."""

    def __init__(self, latent: LatentPool, index: LatentPool, num_heads: int, index_topk: int,
                 ops: object | None = None) -> None:
        super().__init__(latent, num_heads, 1, latent.width)  # type: ignore[arg-type]
        self.latent, self.index, self.index_topk = latent, index, index_topk
        self.ops = TorchMLAOps() if ops is None else ops
        self.lists: MLALists | None = None

    def latent_layer(self, layer: int) -> torch.Tensor:
        return self.latent.layers[layer]

    def index_layer(self, layer: int) -> torch.Tensor:
        return self.index.layers[layer]

    def prepare(self, batch: ForwardBatch) -> None:
        self.lists = build_lists(batch, self.index_topk)

    def dump_pools(self, dumper, batch: ForwardBatch) -> None:  # noqa: ANN001 (engine.debug.Dumper)
        """Read back what this step wrote (`layers.N.kv.latent`, `layers.N.dsa.k`) and the indexer keys of every
        request's context (`layers.N.dsa.context`) for a tensor dump."""
        slots, ps = batch.out_cache_loc, self.latent.page_size
        ctx = self.lists.indices.long() if self.lists is not None else slots
        for layer in range(self.latent.num_layers):
            for name, pool, where, layout in ((f"layers.{layer}.kv.latent", self.latent, slots, "token"),
                                              (f"layers.{layer}.dsa.k", self.index, slots, "token"),
                                              (f"layers.{layer}.dsa.context", self.index, ctx, "context")):
                if dumper.wants(name):
                    dumper.dump(name, pool.layers[layer][where // ps, where % ps], layout)

    def forward(self, q, k, v, layer, batch):  # noqa: ANN001
        raise NotImplementedError("latent attention runs through MLABackend.ops, not forward()")
