"""Logit penalties and biases, batched on the logits' device; built only when a request in the batch uses them.

Order: logit_bias is added, then transformers' repetition penalty (over prompt and output: positive logits
divided, negative multiplied), then OpenAI's presence and frequency penalties (over the generated tokens:
`logit -= presence * (count > 0) + frequency * count`). Temperature and the filters come after.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch
from pdpair.engine.sampling import SamplingParams


def _counts(seqs: Sequence[Sequence[int]], vocab: int, device) -> torch.Tensor:
    """fp32 [B, vocab]: how often each token id occurs in each row's sequence (ids outside the vocab dropped)."""
    lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    ids = np.fromiter(chain.from_iterable(seqs), dtype=np.int64, count=int(lens.sum()))
    rows = np.repeat(np.arange(len(seqs), dtype=np.int64), lens)
    keep = (ids >= 0) & (ids < vocab)
    out = torch.zeros(len(seqs), vocab, dtype=torch.float32, device=device)
    if keep.any():
        index = (torch.from_numpy(rows[keep]).to(device), torch.from_numpy(ids[keep]).to(device))
        out.index_put_(index, torch.ones(int(keep.sum()), device=device), accumulate=True)
    return out


def _column(values: Sequence[float], device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)[:, None]


@dataclass
class PenaltyBatch:
    """Per-row penalty tensors; a None member means no row of the batch uses that knob."""

    bias: torch.Tensor | None  # fp32 [B, V]
    repetition: torch.Tensor | None  # fp32 [B, 1]; 1 = off
    seen: torch.Tensor | None  # bool [B, V]: in prompt or output
    presence: torch.Tensor | None  # fp32 [B, 1]
    frequency: torch.Tensor | None  # fp32 [B, 1]
    output_counts: torch.Tensor | None  # fp32 [B, V]

    @classmethod
    def build(cls, params: Sequence[SamplingParams], prompts: Sequence[Sequence[int]],
              outputs: Sequence[Sequence[int]], vocab: int, device) -> PenaltyBatch | None:
        if not any(p.uses_penalties for p in params):
            return None
        bias = repetition = seen = presence = frequency = counts = None
        if any(p.logit_bias for p in params):
            rows = [i for i, p in enumerate(params) for _ in p.logit_bias]
            cols = [t for p in params for t, _ in p.logit_bias]
            vals = [v for p in params for _, v in p.logit_bias]
            keep = [j for j, c in enumerate(cols) if c < vocab]  # engines check the vocab at submit
            bias = torch.zeros(len(params), vocab, dtype=torch.float32, device=device)
            bias[torch.tensor([rows[j] for j in keep], dtype=torch.long, device=device),
                 torch.tensor([cols[j] for j in keep], dtype=torch.long, device=device)] = torch.tensor(
                [vals[j] for j in keep], dtype=torch.float32, device=device)
        if any(p.repetition_penalty != 1 for p in params):
            repetition = _column([p.repetition_penalty for p in params], device)
            seqs = [chain(a, b) if p.repetition_penalty != 1 else ()
                    for p, a, b in zip(params, prompts, outputs, strict=True)]
            seen = _counts([list(s) for s in seqs], vocab, device) > 0
        if any(p.presence_penalty or p.frequency_penalty for p in params):
            presence = _column([p.presence_penalty for p in params], device)
            frequency = _column([p.frequency_penalty for p in params], device)
            counts = _counts([o if p.presence_penalty or p.frequency_penalty else ()
                              for p, o in zip(params, outputs, strict=True)], vocab, device)
        return cls(bias, repetition, seen, presence, frequency, counts)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """New fp32 logits [B, V] with the biases and penalties applied (the input is left untouched)."""
        out = logits.float()
        if self.bias is not None:
            out = out + self.bias
        if self.repetition is not None:
            scaled = torch.where(out > 0, out / self.repetition, out * self.repetition)
            out = torch.where(self.seen, scaled, out)
        if self.output_counts is not None:
            out = out - self.frequency * self.output_counts - self.presence * (self.output_counts > 0).float()
        return out
