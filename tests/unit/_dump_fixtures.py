"""Synthetic tensor dumps written through the real Dumper (no model): one run per call."""

from __future__ import annotations

from pathlib import Path

import torch
from pdpair.engine.debug import DumpConfig, Dumper, StepRecord

H = 8  # hidden size of the synthetic tensors


def hidden(n: int, seed: int = 0) -> torch.Tensor:
    """Deterministic per-position rows [n, H]: the same position gets the same row in every run."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, H, generator=g)


def write_run(root: Path, name: str, steps: list[tuple[StepRecord, dict[str, tuple[torch.Tensor, str]]]],
              rank: int = 0) -> Path:
    """Each step: its record (tensors filled in by the dumper) and {name: (tensor, layout)}."""
    dumper = Dumper.start(DumpConfig(dir=str(root), run_name=name, rank=rank))
    for rec, tensors in steps:
        dumper.begin(rec)
        for tname, (t, layout) in tensors.items():
            dumper.dump(tname, t, layout)
        dumper.end()
    dumper.close()
    return root / name


def record(step: int, rids: list[str], seq_lens: list[int], extend_lens: list[int], logits_rows=(), rank: int = 0,
           **dp) -> StepRecord:
    mode = "decode" if all(e == 1 for e in extend_lens) and min(seq_lens, default=0) > 1 else "extend"
    return StepRecord(step=step, rank=rank, mode=mode, rids=rids, seq_lens=seq_lens, extend_lens=extend_lens,
                      logits_rows=list(logits_rows), **dp)
