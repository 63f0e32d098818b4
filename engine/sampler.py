"""Batched sampling: penalties and logit_bias, greedy, temperature, top-k, top-p, min-p with counter-based noise.

A sampled row draws exponential noise from a hash of (seed, position, token id), so its token depends
only on its own logits, seed and position: never on which other requests share the batch, on the
batch order or on the device's random state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from pdpair.engine.penalties import PenaltyBatch
from pdpair.engine.sampling import SamplingParams

_M1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_M2 = 0x94D049BB133111EB - (1 << 64)
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)


def _lsr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bits."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _splitmix64(z: torch.Tensor) -> torch.Tensor:
    z = (z ^ _lsr(z, 30)) * _M1
    z = (z ^ _lsr(z, 27)) * _M2
    return z ^ _lsr(z, 31)


def seed_bits(seed: int) -> int:
    """A uint64 seed as the int64 with the same bits (torch has no uint64 arithmetic)."""
    return seed - (1 << 64) if seed >= 1 << 63 else seed


def uniform_noise(seeds: torch.Tensor, positions: torch.Tensor, vocab: int) -> torch.Tensor:
    """Uniforms in (0, 1), [B, vocab] fp32, a pure function of (seed, position, column)."""
    key = _splitmix64(_splitmix64(seeds.long()) ^ (positions.long() * _GOLDEN))
    cols = torch.arange(vocab, device=seeds.device, dtype=torch.long) * _GOLDEN
    bits = _lsr(_splitmix64(key[:, None] + cols[None, :]), 40)  # top 24 bits
    return (bits.float() + 0.5) * (1.0 / (1 << 24))


def upload(arrays: Sequence, device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
    """1-D host arrays as `dtype` tensors on `device`: on CUDA through one pinned non-blocking copy."""
    if device.type == "cuda":
        from pdpair.engine.staging import stage

        return stage(arrays, device, dtype)
    return [torch.tensor(a, dtype=dtype, device=device) for a in arrays]


@dataclass
class SamplingBatch:
    """Per-row sampling tensors of one batch (a decode batch reuses them across steps: sampling_cache.py)."""

    temperatures: torch.Tensor  # fp32 [B]; 0 = greedy
    top_ks: torch.Tensor  # int64 [B]; vocab size = off
    top_ps: torch.Tensor  # fp32 [B]
    min_ps: torch.Tensor  # fp32 [B]
    seeds: torch.Tensor  # int64 [B]
    positions: torch.Tensor  # int64 [B]: position of the token being sampled (read only when not all_greedy)
    all_greedy: bool
    need_top_k_top_p: bool
    need_min_p: bool
    penalties: PenaltyBatch | None = None  # None: no request of the batch uses penalties or logit_bias

    @classmethod
    def build(cls, params: Sequence[SamplingParams], seeds: Sequence[int], positions: Sequence[int],
              vocab: int, device: torch.device | str, prompts: Sequence[Sequence[int]] | None = None,
              outputs: Sequence[Sequence[int]] | None = None) -> SamplingBatch:
        """`prompts`/`outputs` (each row's token ids) are read only when a row uses penalties."""
        all_greedy = all(p.greedy for p in params)
        top_ks = [p.top_k if p.top_k > 0 else vocab for p in params]
        penalties = None
        if any(p.uses_penalties for p in params):
            if prompts is None or outputs is None:
                raise ValueError("penalties and logit_bias need each row's prompt and output token ids")
            penalties = PenaltyBatch.build(params, prompts, outputs, vocab, device)
        temps = [0.0 if p.greedy else p.temperature for p in params]
        bits = [seed_bits(s) for s in seeds]
        dev = torch.device(device)
        ks_t, seeds_t, pos_t = upload([top_ks, bits, positions], dev, torch.int64)
        temps_t, top_ps_t, min_ps_t = upload([temps, [p.top_p for p in params], [p.min_p for p in params]], dev,
                                             torch.float32)
        return cls(
            temperatures=temps_t, top_ks=ks_t, top_ps=top_ps_t, min_ps=min_ps_t, seeds=seeds_t, positions=pos_t,
            all_greedy=all_greedy,
            need_top_k_top_p=not all_greedy and any(
                not p.greedy and (k < vocab or p.top_p < 1) for p, k in zip(params, top_ks, strict=True)),
            need_min_p=not all_greedy and any(not p.greedy and p.min_p > 0 for p in params),
            penalties=penalties,
        )


def filtered_probs(logits: torch.Tensor, sb: SamplingBatch) -> torch.Tensor:
    """Temperature-scaled probabilities [B, V] with top-k, top-p and min-p filtered to zero (unnormalised)."""
    temps = torch.where(sb.temperatures > 0, sb.temperatures, torch.ones_like(sb.temperatures))
    probs = torch.softmax(logits.float() / temps[:, None], dim=-1)
    if sb.need_top_k_top_p:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        ranks = torch.arange(probs.shape[-1], device=probs.device)
        drop = ranks[None, :] >= sb.top_ks[:, None]
        drop |= (sorted_p.cumsum(-1) - sorted_p) > sb.top_ps[:, None]  # keeps the smallest prefix reaching top_p
        probs = torch.zeros_like(probs).scatter_(-1, idx, sorted_p.masked_fill(drop, 0.0))
    if sb.need_min_p:
        floor = sb.min_ps[:, None] * probs.max(dim=-1, keepdim=True).values
        probs = probs.masked_fill(probs < floor, 0.0)
    return probs


def sample(logits: torch.Tensor, sb: SamplingBatch) -> torch.Tensor:
    """Next token ids [B] int64 for fp32 logits [B, V]."""
    if sb.penalties is not None:
        logits = sb.penalties.apply(logits)
    greedy = logits.argmax(dim=-1)
    if sb.all_greedy:
        return greedy
    probs = filtered_probs(logits, sb)
    # exponential race: argmax(p / E), E ~ Exp(1), picks token i with probability p_i / sum(p)
    exp_noise = -torch.log(uniform_noise(sb.seeds, sb.positions, logits.shape[-1]))
    drawn = (probs / exp_noise).argmax(dim=-1)
    return torch.where(sb.temperatures > 0, drawn, greedy)
