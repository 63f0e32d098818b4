"""The on-disk dump format: `DIR/<run>/manifest.json`, `steps.jsonl` (one `StepRecord` per step and rank)
and one `torch.save`d tensor per (step, rank, name): `s000012.r0.layers.3.attn_out.pt`.

Row layouts say how a tensor's first dimension maps to tokens:
- `token`: this rank's tokens in batch order (request i owns rows qo[i]..qo[i+1]); rows past
  `num_tokens` are padding (CUDA-graph buckets) and are ignored;
- `gathered`: every rank's padded tokens concatenated (DP attention); this rank's rows start after the
  `global_padded_tokens` of the ranks before it, the rows of other ranks are theirs (idle ranks: padding);
- `logits`: one row per entry of `logits_rows` (token rows whose next-token distribution was computed);
- `context`: every request's whole context in position order (request i owns `seq_lens[i]` rows after the
  contexts of the requests before it), e.g. the indexer keys a step reads from the pool.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import msgspec

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STEPS = "steps.jsonl"
LAYOUTS = ("token", "gathered", "logits", "context")


class Manifest(msgspec.Struct, frozen=True):
    version: int
    run_name: str
    role: str
    rank: int
    pid: int
    created_unix: float
    model: str
    filter: str
    steps: str


class StepRecord(msgspec.Struct, frozen=True):
    """One forward step on one rank: its requests, their lengths and the tensors dumped with their layouts."""

    step: int
    rank: int
    mode: str  # "extend" | "decode"
    rids: list[str]
    seq_lens: list[int]  # per request, including this step's tokens
    extend_lens: list[int]  # per request, tokens computed this step
    logits_rows: list[int]  # token rows (into this rank's tokens) of the per-request (logits) tensors
    dp_size: int = 1
    global_num_tokens: list[int] = []  # real tokens per rank (DP attention); empty: [num_tokens]
    global_padded_tokens: list[int] = []  # rows each rank adds to gathered tensors; empty: as above
    tensors: dict[str, str] = {}  # name -> layout

    def __post_init__(self) -> None:
        n = len(self.rids)
        if len(self.seq_lens) != n or len(self.extend_lens) != n:
            raise ValueError(f"step {self.step} rank {self.rank}: {n} rids, {len(self.seq_lens)} seq_lens, "
                             f"{len(self.extend_lens)} extend_lens")
        bad = {k: v for k, v in self.tensors.items() if v not in LAYOUTS}
        if bad:
            raise ValueError(f"step {self.step} rank {self.rank}: unknown row layouts {bad}")

    @property
    def num_tokens(self) -> int:
        return sum(self.extend_lens)

    @property
    def prefix_lens(self) -> list[int]:
        return [s - e for s, e in zip(self.seq_lens, self.extend_lens, strict=True)]

    @property
    def token_offsets(self) -> list[int]:
        """qo_indptr: request i's tokens are rows [off[i], off[i + 1]) of this rank's tokens."""
        off = [0]
        for e in self.extend_lens:
            off.append(off[-1] + e)
        return off

    def gathered_offset(self) -> int:
        """First row of this rank's tokens inside a gathered tensor."""
        padded = self.global_padded_tokens or [self.num_tokens]
        if self.rank >= len(padded):
            raise ValueError(f"step {self.step}: rank {self.rank} but global_padded_tokens={padded}")
        return sum(padded[: self.rank])


def tensor_file(step: int, rank: int, name: str) -> str:
    return f"s{step:06d}.r{rank}.{name}.pt"


_SUFFIX_ORDER = {"attn_in": 0, "kv": 1, "attn_out": 2, "mlp_out": 3, "out": 4}


def forward_order(name: str) -> tuple:
    """Sort key putting names in forward order: embed, layers.0.*, ..., layers.N.*, final_hidden, logits."""
    m = re.fullmatch(r"layers\.(\d+)\.([A-Za-z_]+)(.*)", name)
    if m:
        return (1, int(m.group(1)), _SUFFIX_ORDER.get(m.group(2), 9), m.group(2), m.group(3))
    head = {"embed": (0,), "final_hidden": (2, 0), "logits": (2, 1)}
    return head.get(name, (3, name))


@dataclass
class Run:
    """One dump directory read back: its manifest and step records (tensors load lazily by `load`)."""

    path: Path
    manifest: Manifest
    records: list[StepRecord]

    def load(self, rec: StepRecord, name: str):
        import torch

        return torch.load(self.path / tensor_file(rec.step, rec.rank, name), weights_only=True)


def read_run(path: Path) -> Run:
    manifest = msgspec.json.decode((path / MANIFEST).read_bytes(), type=Manifest)
    if manifest.version != FORMAT_VERSION:
        raise ValueError(f"{path}: dump format version {manifest.version}, this reader knows {FORMAT_VERSION}")
    records = []
    steps = path / STEPS
    if steps.exists():
        for i, line in enumerate(steps.read_bytes().splitlines()):
            if line.strip():
                try:
                    records.append(msgspec.json.decode(line, type=StepRecord))
                except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
                    raise ValueError(f"{steps}:{i + 1}: bad step record: {exc}") from None
    return Run(path, manifest, records)


def read_runs(*paths: str | os.PathLike) -> list[Run]:
    """Each path: a run directory (it holds manifest.json) or a directory of run directories (one per node)."""
    runs = []
    for path in paths:
        root = Path(path)
        if (root / MANIFEST).exists():
            runs.append(read_run(root))
            continue
        subdirs = sorted(p for p in root.iterdir() if (p / MANIFEST).exists()) if root.is_dir() else []
        if not subdirs:
            raise FileNotFoundError(f"no tensor dump at {root}: no {MANIFEST} in it or in its subdirectories")
        runs.extend(read_run(p) for p in subdirs)
    return runs
