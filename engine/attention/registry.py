"""Attention backends by name."""

from __future__ import annotations

from pdpair.engine.attention.base import AttentionBackend
from pdpair.engine.config import resolve_backend
from pdpair.engine.memory.kv_pool import KVPool


def create_backend(name: str, kv_pool: KVPool, num_heads: int, num_kv_heads: int, head_dim: int,
                   device: str = "cpu") -> AttentionBackend:
    """"torch", "triton" or "auto" (triton on CUDA when available, else torch)."""
    name = resolve_backend(name, device)
    if name == "torch":
        from pdpair.engine.attention.torch_backend import TorchBackend

        return TorchBackend(kv_pool, num_heads, num_kv_heads, head_dim)
    if name == "triton":
        try:
            from pdpair.engine.attention.triton_backend import TritonBackend
        except ImportError as exc:
            raise ImportError(
                f"the triton attention backend needs triton and a CUDA device ({exc}); "
                "install it with `pip install pdpair[triton]` or use attention_backend='torch'") from exc
        return TritonBackend(kv_pool, num_heads, num_kv_heads, head_dim)
    raise ValueError(f"unknown attention backend {name!r}; supported: auto, torch, triton")
