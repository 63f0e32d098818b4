"""The attention backend interface: `prepare(batch)` once per forward, `forward(...)` once per layer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from pdpair.engine.batch import ForwardBatch
from pdpair.engine.memory.kv_pool import KVPool


class AttentionBackend(ABC):
    """Stores each layer's new K/V into the paged cache and attends (cached prefix + new tokens, causal).

    `layer_pools[layer]` = (pool, index of the layer inside that pool); default: every layer in `kv_pool`. A
    pool with a `window` is a sliding-window pool: its layers read `batch.windows[pool.kind]` and see, from
    query position q, the keys k with q - window < k <= q.
    """

    # True: the model runs its fused-kernel forward (engine/models/fused.py) and hands `forward` K/V it has already
    # stored (`kv_stored=True`); only backends that accept that flag may set it
    fused_ops: bool = False

    def __init__(self, kv_pool: KVPool, num_heads: int, num_kv_heads: int, head_dim: int,
                 scale: float | None = None, layer_pools: Sequence[tuple[KVPool, int]] | None = None,
                 softcap: float | None = None) -> None:
        assert num_heads % num_kv_heads == 0, f"{num_heads} heads not a multiple of {num_kv_heads} kv heads"
        self.kv_pool = kv_pool
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5 if scale is None else scale
        self.softcap = softcap  # attention logits -> tanh(logits / softcap) * softcap (Gemma's option)
        self.layer_pools = list(layer_pools) if layer_pools is not None else [
            (kv_pool, i) for i in range(kv_pool.num_layers)]

    @abstractmethod
    def prepare(self, batch: ForwardBatch) -> None:
        """Derive per-forward state (index tensors, masks) shared by every layer."""

    @abstractmethod
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int,
                batch: ForwardBatch) -> torch.Tensor:
        """q [T, H, D], k/v [T, KVH, D] → o [T, H, D]; k/v are written at the layer pool's slots first."""

    @property
    def supports_cuda_graph(self) -> bool:
        """True when the backend implements the graph hooks below."""
        return type(self).init_graph_state is not AttentionBackend.init_graph_state

    # CUDA-graph hooks: a backend that supports graph capture fills static buffers here.
    def init_graph_state(self, max_batch_size: int, max_context: int) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not support CUDA graphs")

    def prepare_for_capture(self, batch: ForwardBatch) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not support CUDA graphs")

    def prepare_for_replay(self, batch: ForwardBatch, padded_batch_size: int) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not support CUDA graphs")
