"""Test helpers for the model half of the engine: a dense (cache-free) attention backend and HF references."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class DenseBatch:
    cu_seqlens: list[int]  # request boundaries in the flat token dimension


class DenseBackend:
    """Causal SDPA over each request's own tokens; no KV cache (every call is a full prefill)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int, batch: DenseBatch):
        out = torch.empty_like(q)
        groups = q.shape[1] // k.shape[1]
        for s, e in zip(batch.cu_seqlens[:-1], batch.cu_seqlens[1:], strict=True):
            qi = q[s:e].transpose(0, 1)
            ki = k[s:e].repeat_interleave(groups, dim=1).transpose(0, 1)
            vi = v[s:e].repeat_interleave(groups, dim=1).transpose(0, 1)
            out[s:e] = F.scaled_dot_product_attention(qi, ki, vi, is_causal=True).transpose(0, 1)
        return out


@dataclass
class DenseContext:
    backend: DenseBackend
    batch: DenseBatch
    logits_indices: torch.Tensor


def dense_logits(model, seqs: list[list[int]], all_positions: bool = True) -> list[torch.Tensor]:
    """Teacher-forced fp32 logits per sequence ([len(seq), vocab], or [1, vocab] for the last token only)."""
    cu = [0]
    for s in seqs:
        cu.append(cu[-1] + len(s))
    ids = torch.tensor([t for s in seqs for t in s], dtype=torch.int64)
    pos = torch.cat([torch.arange(len(s), dtype=torch.int64) for s in seqs])
    rows = torch.arange(cu[-1]) if all_positions else torch.tensor(cu[1:]) - 1
    with torch.inference_mode():
        logits = model(ids, pos, DenseContext(DenseBackend(), DenseBatch(cu), rows))
    if not all_positions:
        return list(logits.split(1))
    return list(logits.split([len(s) for s in seqs]))


def embedded_dir() -> Path:
    from pdpair.engine.loader.gguf import embedded_gguf_path

    return embedded_gguf_path().parent


def engine_importable() -> str | None:
    """None when `pdpair.engine.Engine` imports, else the reason it does not."""
    try:
        from pdpair.engine import Engine  # noqa: F401
    except ImportError as e:
        return f"pdpair.engine.Engine is not available yet: {e}"
    return None
