"""Attention backends by name."""

from __future__ import annotations

from collections.abc import Sequence

from pdpair.engine.attention.base import AttentionBackend
from pdpair.engine.config import resolve_backend
from pdpair.engine.memory.kv_pool import KVPool


def create_backend(name: str, kv_pool: KVPool, num_heads: int, num_kv_heads: int, head_dim: int,
                   device: str = "cpu", scale: float | None = None,
                   layer_pools: Sequence[tuple[KVPool, int]] | None = None,
                   softcap: float | None = None) -> AttentionBackend:
    """"torch", "triton" or "auto" (triton on CUDA when available, else torch). `layer_pools` routes each layer
    to its pool (sliding-window layers to the `swa` pool); `softcap` caps attention logits (torch only)."""
    name = resolve_backend(name, device)
    args = (kv_pool, num_heads, num_kv_heads, head_dim, scale, layer_pools, softcap)
    if name == "torch":
        from pdpair.engine.attention.torch_backend import TorchBackend

        return TorchBackend(*args)
    if name == "triton":
        try:
            from pdpair.engine.attention.triton_backend import TritonBackend
        except ImportError as exc:
            raise ImportError(
                f"the triton attention backend needs triton and a CUDA device ({exc}); "
                "install it with `pip install pdpair[triton]` or use attention_backend='torch'") from exc
        if softcap is not None:
            raise ValueError("the triton attention backend does not cap attention logits; use attention_backend='torch'")
        return TritonBackend(*args)
    raise ValueError(f"unknown attention backend {name!r}; supported: auto, torch, triton")
