"""The KV pool: one item-major buffer [num_pages, num_layers, 2, page_size, kv_heads, head_dim]."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Region:
    """One registrable buffer: `num_items` items of `item_bytes` bytes each, contiguous from `base_ptr`."""

    kind: str
    base_ptr: int
    item_bytes: int
    num_items: int
    dtype: str
    window: int = 0  # sliding-window pools: tokens a query sees; 0: none
    layers: tuple[int, ...] = ()  # the model layers an item holds


FULL_KIND = "kv"  # the pool of full-attention layers
SWA_KIND = "swa"  # the pool of sliding-window layers


class PagedBuffer:
    """What every paged pool shares: an item-major `buffer` whose first dimension is the page (one item)."""

    buffer: torch.Tensor
    num_pages: int

    @property
    def num_items(self) -> int:
        return self.num_pages

    @property
    def item_bytes(self) -> int:
        return self.buffer[0].numel() * self.buffer.element_size()

    @property
    def dtype_name(self) -> str:
        return str(self.buffer.dtype).removeprefix("torch.")


class KVPool(PagedBuffer):
    """Paged K/V cache; an item is one page holding every layer's K and V for `page_size` tokens.

    `kind` "kv" holds the full-attention layers; "swa" the sliding-window layers (`window` tokens visible to a
    query, its own included), whose pages wholly behind the window are given back as requests advance.
    """

    def __init__(self, num_pages: int, num_layers: int, page_size: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str, kind: str = FULL_KIND,
                 window: int | None = None, layer_ids: tuple[int, ...] | None = None) -> None:
        assert (kind == SWA_KIND) == (window is not None), f"pool {kind!r} with window {window}"
        self.kind = kind
        self.window = window
        self.layer_ids = tuple(range(num_layers)) if layer_ids is None else tuple(layer_ids)
        assert len(self.layer_ids) == num_layers, (self.layer_ids, num_layers)
        self.num_pages = num_pages
        self.num_layers = num_layers
        self.page_size = page_size
        self.buffer = torch.zeros(num_pages, num_layers, 2, page_size, kv_heads, head_dim,
                                  dtype=dtype, device=device)
        # per-layer strided views [num_pages, page_size, kv_heads, head_dim] over the one buffer
        self.k_layers = [self.buffer[:, i, 0] for i in range(num_layers)]
        self.v_layers = [self.buffer[:, i, 1] for i in range(num_layers)]

    @staticmethod
    def page_bytes(num_layers: int, page_size: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return num_layers * 2 * page_size * kv_heads * head_dim * dtype.itemsize

    def region(self) -> Region:
        return Region(self.kind, self.buffer.data_ptr(), self.item_bytes, self.num_pages, self.dtype_name,
                      self.window or 0, self.layer_ids)

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k, v [N, kv_heads, head_dim] at token slots [N] of `layer`."""
        pages, offs = slots // self.page_size, slots % self.page_size
        self.k_layers[layer][pages, offs] = k
        self.v_layers[layer][pages, offs] = v

    def read(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather k, v [..., kv_heads, head_dim] at token slots of any shape."""
        pages, offs = slots // self.page_size, slots % self.page_size
        return self.k_layers[layer][pages, offs], self.v_layers[layer][pages, offs]

    def read_pages(self, layer: int, pages: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole pages [n, page_size, kv_heads, head_dim] of `layer`, contiguous (index_select: a plain copy,
        no per-element index arithmetic)."""
        return self.k_layers[layer].index_select(0, pages), self.v_layers[layer].index_select(0, pages)
