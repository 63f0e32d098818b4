"""Paged pools of one vector per token and layer: the `kv` pool of latent-attention models (the latent KV)
and its `dsa` companion (the indexer keys), which shares the `kv` pool's item ids and allocator."""

from __future__ import annotations

import torch
from pdpair.engine.memory.kv_pool import FULL_KIND, PagedBuffer, Region

DSA_KIND = "dsa"  # the indexer keys of DeepSeek sparse attention, page-aligned with the latent KV


class LatentPool(PagedBuffer):
    """One item-major buffer [num_pages, num_layers, page_size, width]; an item is one page of every layer.

    `shares`: the kind whose allocator hands out this pool's ids (None: its own). `facts` name what a pairing
    node must agree on beyond the bytes (latent width, indexer head dim, top-k); they go into the region's dtype
    string, e.g. `float32;latent_dim=576;rope_dim=64`, where the handshake names a differing one.
    """

    window = None

    def __init__(self, num_pages: int, num_layers: int, page_size: int, width: int, dtype: torch.dtype,
                 device: torch.device | str, kind: str = FULL_KIND, shares: str | None = None,
                 facts: dict[str, int] | None = None) -> None:
        self.kind, self.shares = kind, shares
        self.num_pages, self.num_layers, self.page_size, self.width = num_pages, num_layers, page_size, width
        self.layer_ids = tuple(range(num_layers))
        self.facts = dict(facts or {})
        self.buffer = torch.zeros(num_pages, num_layers, page_size, width, dtype=dtype, device=device)
        self.layers = [self.buffer[:, i] for i in range(num_layers)]  # [num_pages, page_size, width] views

    @staticmethod
    def page_bytes(num_layers: int, page_size: int, width: int, dtype: torch.dtype) -> int:
        return num_layers * page_size * width * dtype.itemsize

    def describe(self) -> str:
        return ";".join([self.dtype_name, *(f"{k}={v}" for k, v in self.facts.items())])

    def region(self) -> Region:
        return Region(self.kind, self.buffer.data_ptr(), self.item_bytes, self.num_pages, self.describe(),
                      layers=self.layer_ids)


def mla_pools(mc, config) -> tuple[LatentPool, LatentPool]:  # noqa: ANN001 (ModelConfig, EngineConfig)
    """The `kv` pool of latent vectors and its `dsa` companion of indexer keys, for every layer."""
    mla = mc.mla
    common = (config.max_pages, mc.num_layers, config.page_size)
    kv = LatentPool(*common, mla.latent_dim, config.torch_dtype, config.device,
                    facts={"latent_dim": mla.latent_dim, "rope_dim": mla.qk_rope_head_dim})
    dsa = LatentPool(*common, mla.index_head_dim, config.torch_dtype, config.device, kind=DSA_KIND,
                     shares=FULL_KIND, facts={"index_head_dim": mla.index_head_dim, "index_topk": mla.index_topk})
    return kv, dsa


def mla_page_bytes(mc, page_size: int, dtype: torch.dtype) -> int:  # noqa: ANN001 (ModelConfig)
    """Bytes of one page of both pools."""
    return LatentPool.page_bytes(mc.num_layers, page_size, mc.mla.latent_dim + mc.mla.index_head_dim, dtype)
