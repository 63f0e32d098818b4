"""Token aligners: turn the dumps of one run into comparable tensors, keyed by tensor name then by a key.

- `none`: each (step, rank) file as it is, keyed `step N rank R` (two runs with the same schedule).
- `concat_steps`: each request's rows gathered from every step and rank that computed them (chunked
  prefill on one node, decode on another), ordered by token position and keyed by request id; padding
  rows (CUDA-graph buckets, idle DP ranks in gathered tensors) belong to no request and are dropped.
  Logits-layout tensors are placed at the position of the token whose row produced them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from pdpair.engine.debug.format import Run, StepRecord

ALIGNERS = ("concat_steps", "none")


@dataclass
class Aligned:
    """One comparable tensor: rows in order, and the token position (or row index) of each row."""

    tensor: torch.Tensor
    positions: list[int]


Table = dict[str, dict[str, Aligned]]  # name -> key -> tensor


def align(runs: Iterable[Run], aligner: str, name_filter: str = "", request_filter: str = "") -> Table:
    if aligner not in ALIGNERS:
        raise ValueError(f"token aligner must be one of {ALIGNERS}, got {aligner!r}")
    names = re.compile(name_filter)
    rids = re.compile(request_filter)
    if aligner == "none":
        return _as_is(runs, names)
    return _concat_steps(runs, names, rids)


def _as_is(runs: Iterable[Run], names: re.Pattern) -> Table:
    out: Table = {}
    for run in runs:
        for rec in run.records:
            for name in rec.tensors:
                if names.search(name):
                    t = run.load(rec, name)
                    key = f"step {rec.step} rank {rec.rank}"
                    out.setdefault(name, {})[key] = Aligned(t, list(range(t.shape[0])))
    return out


def request_rows(rec: StepRecord, layout: str) -> list[tuple[str, list[tuple[int, int]]]]:
    """For each request of `rec`: [(row in the dumped tensor, token position)] under `layout`."""
    prefix, off = rec.prefix_lens, rec.token_offsets
    if layout == "logits":
        owner = {}
        for i, rid in enumerate(rec.rids):
            for row in range(off[i], off[i + 1]):
                owner[row] = (rid, prefix[i] + row - off[i])
        per: dict[str, list[tuple[int, int]]] = {}
        for j, token_row in enumerate(rec.logits_rows):
            rid, pos = owner[token_row]
            per.setdefault(rid, []).append((j, pos))
        return list(per.items())
    if layout == "context":
        starts = [0]
        for n in rec.seq_lens:
            starts.append(starts[-1] + n)
        return [(rid, [(starts[i] + p, p) for p in range(rec.seq_lens[i])]) for i, rid in enumerate(rec.rids)]
    base = rec.gathered_offset() if layout == "gathered" else 0
    return [(rid, [(base + off[i] + k, prefix[i] + k) for k in range(rec.extend_lens[i])])
            for i, rid in enumerate(rec.rids)]


def _concat_steps(runs: Iterable[Run], names: re.Pattern, rids: re.Pattern) -> Table:
    rows: dict[str, dict[str, dict[int, torch.Tensor]]] = {}  # name -> rid -> position -> row
    for run in runs:
        for rec in sorted(run.records, key=lambda r: (r.step, r.rank)):
            for name, layout in rec.tensors.items():
                if not names.search(name):
                    continue
                per_req = [(rid, pairs) for rid, pairs in request_rows(rec, layout) if rids.search(rid)]
                if not per_req:
                    continue
                t = run.load(rec, name)
                for rid, pairs in per_req:
                    dst = rows.setdefault(name, {}).setdefault(rid, {})
                    for row, pos in pairs:
                        if row >= t.shape[0]:
                            raise ValueError(f"{run.path}: step {rec.step} rank {rec.rank} {name} has "
                                             f"{t.shape[0]} rows, the metadata needs row {row}")
                        dst[pos] = t[row]  # a recomputed position (retraction) keeps its latest rows
    out: Table = {}
    for name, per_rid in rows.items():
        for rid, by_pos in per_rid.items():
            positions = sorted(by_pos)
            out.setdefault(name, {})[rid] = Aligned(torch.stack([by_pos[p] for p in positions]), positions)
    return out
